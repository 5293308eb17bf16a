"""The lecture's fcn nearest network on the built-in shapes dataset (64x64, 6 classes): minutes on a CPU.

python train.py --config=configs/fcn_nearest_shapes.py --workdir=runs/fcn_nearest
python eval.py --config=configs/fcn_nearest_shapes.py --workdir=runs/fcn_nearest --split=test
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "shapes")
  c.model = models.model_config("fcn_nearest")
  return config_lib.finalize(c)
