"""The lecture's fcn skip concat network on the built-in shapes dataset (64x64, 6 classes): minutes on a CPU.

python train.py --config=configs/fcn_skip_concat_shapes.py --workdir=runs/fcn_skip_concat
python eval.py --config=configs/fcn_skip_concat_shapes.py --workdir=runs/fcn_skip_concat --split=test
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "shapes")
  c.model = models.model_config("fcn_skip_concat")
  return config_lib.finalize(c)
