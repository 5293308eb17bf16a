"""Quickstart: a small U-Net on the built-in shapes dataset (64x64, 6 classes); a few minutes on 2 CPU cores.

python train.py --config=configs/quickstart.py --workdir=runs/quickstart
python eval.py --config=configs/quickstart.py --workdir=runs/quickstart --split=test
"""

from segjax import config as config_lib


def get_config():
  # use_dataset sets the shapes schedule: 1800 steps of batch 8, lr 3e-3 with 20 warm-up steps, CE + Dice.
  c = config_lib.use_dataset(config_lib.default_config(), "shapes")
  c.model.depth = 3
  c.model.base_features = 16
  return config_lib.finalize(c)
