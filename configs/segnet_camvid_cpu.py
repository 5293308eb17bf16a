"""SegNet (VGG16-BN layout, index unpooling) on CamVid from scratch, reduced for a 2-core CPU: half resolution,
a quarter of the channels (16..128 instead of 64..512).

python train.py --config=configs/segnet_camvid_cpu.py --workdir=runs/segnet_camvid_cpu
python eval.py --config=configs/segnet_camvid_cpu.py --workdir=runs/segnet_camvid_cpu --split=validation

As configs/unet_camvid_cpu.py: half-size frames (0.4..0.6 jitter) cropped to 160x224 for training, whole
validation frames resized by 0.5 for inference and scored at full resolution; median-frequency class balancing
as in the SegNet paper. The full recipe is configs/segnet_camvid.py.

Measured (BENCHMARKS.md, 2-core CPU, 4000 steps in 33 min): CamVid val global accuracy 79.23, class-average
accuracy 74.56, mIoU 50.41 (SegNet-Basic, published on the test split: 82.8 / 62.3 / 46.3).
"""

from segjax import config as config_lib
from segjax import models
from segjax.data import camvid


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("segnet", base_features=16)
  c.dataset.train_scale = (0.4, 0.6)
  c.dataset.crop_size = (160, 224)
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
