"""SegNet-Basic (4 encoders/decoders of 7x7 convolutions, 64 channels) on CamVid 360x480, as in the paper.

python train.py --config=configs/segnet_basic_camvid.py --workdir=runs/segnet_basic_camvid
python eval.py --config=configs/segnet_basic_camvid.py --workdir=runs/segnet_basic_camvid

The paper's setting: SGD, lr 0.1, momentum 0.9, median-frequency class balancing, from scratch.
"""

from segjax import config as config_lib
from segjax import models
from segjax.data import camvid


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("segnet_basic")
  c.loss.class_weights = camvid.MEDIAN_FREQUENCY_WEIGHTS
  c.num_train_steps = 10000
  c.batch_size = 12
  c.eval_batch_size = 8
  c.checkpoint_every_steps = 500
  c.eval_every_steps = 1000
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "constant"
  return config_lib.finalize(c)
