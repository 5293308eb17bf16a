"""SMP's Unet with a ResNet-34 encoder on CamVid, reduced for a 2-core CPU: half resolution, 4000 steps.

python train.py --config=configs/unet_r34_camvid_cpu.py --workdir=runs/unet_r34_camvid_cpu
python eval.py --config=configs/unet_r34_camvid_cpu.py --workdir=runs/unet_r34_camvid_cpu --split=validation

As configs/unet_camvid_cpu.py: frames are resized to half size on the host (0.4..0.6 scale jitter) and cropped to
160x224 (multiples of 32, the encoder's output stride); evaluation resizes the whole frames by 0.5
(`inference.scales`), pads them to a multiple of 32, resizes the scores back and scores every labelled
full-resolution pixel, so the metrics compare with the full-resolution recipe (configs/unet_r34_camvid.py).
The network keeps its full width (24.4 M parameters), so torchvision's ImageNet ResNet-34 still loads (commented
init_from line). Not yet measured on the CPU.
"""

from segjax import config as config_lib
from segjax import models
from segjax.data import camvid


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("smp_unet", encoder="resnet34")
  c.dataset.train_scale = (0.4, 0.6)
  c.dataset.crop_size = (160, 224)
  c.dataset.eval_size = (384, 480)
  c.inference.scales = (0.5,)
  c.loss.class_weights = camvid.MEDIAN_FREQUENCY_WEIGHTS
  c.num_train_steps = 4000
  c.eval_batch_size = 8
  c.keep_checkpoints = 4
  c.eval_every_steps = 0
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 1e-4
  # ImageNet ResNet-34 from torchvision: https://download.pytorch.org/models/resnet34-b627a593.pth
  # c.init_from.path = "../shared/weights/resnet34-b627a593.pth"
  return config_lib.finalize(c)
