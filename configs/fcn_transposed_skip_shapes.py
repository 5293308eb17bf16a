"""The lecture's fcn transposed skip network on the built-in shapes dataset (64x64, 6 classes): minutes on a CPU.

python train.py --config=configs/fcn_transposed_skip_shapes.py --workdir=runs/fcn_transposed_skip
python eval.py --config=configs/fcn_transposed_skip_shapes.py --workdir=runs/fcn_transposed_skip --split=test
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "shapes")
  c.model = models.model_config("fcn_transposed_skip")
  return config_lib.finalize(c)
