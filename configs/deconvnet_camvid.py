"""DeconvNet (VGG16 encoder with BN, mirrored unpooling + deconvolution decoder) on CamVid 360x480.

python train.py --config=configs/deconvnet_camvid.py --workdir=runs/deconvnet_camvid
python eval.py --config=configs/deconvnet_camvid.py --workdir=runs/deconvnet_camvid

The paper trains on 224x224 object proposals of PASCAL VOC; here whole CamVid frames (padded to the model's
size divisor at evaluation) with SGD + momentum from scratch.
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("deconvnet")
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "poly"
  c.optimizer.warmup_steps = 500
  return config_lib.finalize(c)
