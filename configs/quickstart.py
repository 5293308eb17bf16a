"""Quickstart: a small U-Net on the built-in shapes dataset (64x64, 6 classes); a few minutes on 2 CPU cores.

python train.py --config=configs/quickstart.py --workdir=runs/quickstart
python eval.py --config=configs/quickstart.py --workdir=runs/quickstart --split=test
"""

from segjax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.dataset.name = "shapes"
  c.dataset.crop_size = (64, 64)
  c.num_train_steps = 1800
  c.batch_size = 8
  c.eval_batch_size = 50
  c.log_every_steps = 25
  c.checkpoint_every_steps = 200
  c.eval_split = "validation"
  c.model.depth = 3
  c.model.base_features = 16
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 20
  # Dice on top of cross-entropy: 85% of the pixels are background, and Dice weighs every class equally.
  c.loss.dice_weight = 1.0
  return config_lib.finalize(c)
