"""FCN-32s (VGG16, convolutionalised fc6/fc7, bilinear-initialised upsampling) on CamVid 360x480.

python train.py --config=configs/fcn32s_camvid.py --workdir=runs/fcn32s_camvid
python eval.py --config=configs/fcn32s_camvid.py --workdir=runs/fcn32s_camvid

The reference geometry (conv1_1 padded by 100, crops) takes any input size. The paper fine-tunes ImageNet VGG16
with SGD (lr 1e-4, momentum 0.9 at batch 20, or the 'at-once' 1e-10 / 0.99 on an unnormalised loss at batch 1);
without imported weights this recipe trains from scratch with Adam (settings not tuned here).
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("fcn32s")
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.weight_decay = 5e-4
  c.optimizer.warmup_steps = 500
  return config_lib.finalize(c)
