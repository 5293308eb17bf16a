"""DeepLabV3+ (ResNet-50 layout) on CamVid from scratch, reduced for a 2-core CPU: half resolution, a quarter of
the channels (ResNet base width 16, decoder 64 + 12 channels: 1.7 M parameters instead of 26.7 M).

python train.py --config=configs/deeplabv3plus_r50_camvid_cpu.py --workdir=runs/deeplabv3plus_camvid_cpu
python eval.py --config=configs/deeplabv3plus_r50_camvid_cpu.py --workdir=runs/deeplabv3plus_camvid_cpu \
    --split=validation

As configs/unet_camvid_cpu.py: half-size frames (0.4..0.6 jitter) cropped to 160x224 (multiples of the output
stride 16) for training, whole validation frames resized by 0.5 for inference and scored at full resolution;
median-frequency class balancing, AdamW. The full recipe is configs/deeplabv3plus_r50_camvid.py (run it on a GPU).
Not yet measured on the 2-core CPU.
"""

from segjax import config as config_lib
from segjax import models
from segjax.data import camvid


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("deeplabv3plus", depth=50, output_stride=16, width=16, stem_width=16)
  c.dataset.train_scale = (0.4, 0.6)
  c.dataset.crop_size = (160, 224)
  c.dataset.eval_size = (368, 480)
  c.inference.scales = (0.5,)
  c.loss.class_weights = camvid.MEDIAN_FREQUENCY_WEIGHTS
  c.num_train_steps = 4000
  c.eval_batch_size = 8
  c.keep_checkpoints = 4
  c.eval_every_steps = 0
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 1e-4
  return config_lib.finalize(c)
