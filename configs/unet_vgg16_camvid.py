"""U-Net with a VGG16 encoder (TernausNet-style decoder) on CamVid 360x480 (padded to 384x480 to evaluate).

python train.py --config=configs/unet_vgg16_camvid.py --workdir=runs/unet_vgg16_camvid
python eval.py --config=configs/unet_vgg16_camvid.py --workdir=runs/unet_vgg16_camvid
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("unet_vgg16")
  c.dataset.crop_size = (352, 480)
  c.dataset.eval_size = (384, 480)
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_steps = 500
  return config_lib.finalize(c)
