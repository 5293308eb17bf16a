"""SMP's FPN with a ResNet-34 encoder (segmentation_models_pytorch `FPN("resnet34")`, 23.2 M parameters at 11
classes) on CamVid (SegNet's 360x480 version, 11 classes, void ignored).

python train.py --config=configs/fpn_r34_camvid.py --workdir=runs/fpn_r34_camvid \
    --config.dataset.manual_dir=../shared/data/camvid
python eval.py --config=configs/fpn_r34_camvid.py --workdir=runs/fpn_r34_camvid --split=validation

Inputs must be multiples of 32 (the encoder's output stride): training crops 352x480, evaluation pads the 360x480
frames to 384x480 (padding carries no weight). From scratch with the schedule of configs/unet_camvid.py; the
commented init_from line loads torchvision's ImageNet ResNet-34 into the encoder (SMP's "imagenet" encoder
weights are the same file), with torchvision's input normalisation.
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("smp_fpn", encoder="resnet34")
  c.dataset.crop_size = (352, 480)
  c.dataset.eval_size = (384, 480)
  c.eval_batch_size = 8
  c.log_every_steps = 100
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 500
  c.optimizer.weight_decay = 1e-4
  # ImageNet ResNet-34 from torchvision: https://download.pytorch.org/models/resnet34-b627a593.pth
  # c.init_from.path = "../shared/weights/resnet34-b627a593.pth"
  return config_lib.finalize(c)
