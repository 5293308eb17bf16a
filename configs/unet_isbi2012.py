"""U-Net (paper size: depth 4, 64 base features) on the ISBI 2012 EM membranes, 2 classes.

Trains on 25 of the 30 labelled images and evaluates on the other 5 (the challenge's test labels are withheld).
python train.py --config=configs/unet_isbi2012.py --workdir=runs/isbi \
    --config.dataset.manual_dir=../shared/data/isbi2012-membrane
"""

from segjax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.dataset.name = "isbi2012"
  c.dataset.manual_dir = "../shared/data/isbi2012-membrane"
  c.dataset.train_split = "train[:25]"
  c.eval_split = "train[25:]"
  c.dataset.crop_size = (256, 256)
  c.dataset.mean = (127.5,)
  c.dataset.std = (127.5,)
  c.num_train_steps = 4000
  c.batch_size = 8
  c.eval_batch_size = 5
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.eval_every_steps = 1000
  c.model.depth = 4
  c.model.base_features = 64
  c.model.dropout_rate = 0.5  # the paper's drop-out at the end of the contracting path
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.schedule = "cosine"
  c.loss.ce_weight = 1.0
  c.loss.dice_weight = 1.0
  return config_lib.finalize(c)
