"""The lecture's tied conv deconv network on the built-in shapes dataset (64x64, 6 classes): minutes on a CPU.

python train.py --config=configs/tied_conv_deconv_shapes.py --workdir=runs/tied_conv_deconv
python eval.py --config=configs/tied_conv_deconv_shapes.py --workdir=runs/tied_conv_deconv --split=test
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "shapes")
  c.model = models.model_config("tied_conv_deconv")
  return config_lib.finalize(c)
