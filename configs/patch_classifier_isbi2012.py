"""Sliding-window patch classifier (the centre pixel of each patch, Ciresan et al. 2012) on ISBI 2012.

python train.py --config=configs/patch_classifier_isbi2012.py --workdir=runs/patch_isbi
python eval.py --config=configs/patch_classifier_isbi2012.py --workdir=runs/patch_isbi

The baseline FCNs replaced: one classifier evaluation per output pixel (see the model's `stride`).
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "isbi2012")
  c.model = models.model_config("patch_classifier")
  c.dataset.crop_size = (64, 64)
  c.eval_batch_size = 1
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  return config_lib.finalize(c)
