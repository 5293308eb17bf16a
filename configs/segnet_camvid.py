"""SegNet (VGG16-BN encoder, index-unpooling decoder) on CamVid 360x480, as in the SegNet paper.

python train.py --config=configs/segnet_camvid.py --workdir=runs/segnet_camvid
python eval.py --config=configs/segnet_camvid.py --workdir=runs/segnet_camvid --split=validation

Whole 360x480 frames (the encoder pools with ceil mode, 45x60 -> 23x30 as in Caffe), median-frequency class
balancing, SGD with momentum 0.9. The paper starts from ImageNet VGG16 weights and trains with lr 0.1 at batch
12; from scratch (no weight import yet) this recipe uses lr 0.05 with a warm-up (not tuned here).
"""

from segjax import config as config_lib
from segjax import models
from segjax.data import camvid


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("segnet")
  c.loss.class_weights = camvid.MEDIAN_FREQUENCY_WEIGHTS
  c.num_train_steps = 10000
  c.batch_size = 12
  c.eval_batch_size = 8
  c.checkpoint_every_steps = 500
  c.eval_every_steps = 1000
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "poly"
  c.optimizer.warmup_steps = 200
  return config_lib.finalize(c)
