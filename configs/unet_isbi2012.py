"""U-Net (paper size: depth 4, 64 base features) on the ISBI 2012 EM membranes, 2 classes.

Trains on 25 of the 30 labelled images and evaluates on the other 5 (the challenge's test labels are withheld),
with the paper's augmentation (shifts, rotations, flips, gray-value changes, elastic deformations): the
`use_dataset("isbi2012")` preset, which also sets the crops, the normalisation and the schedule.
python train.py --config=configs/unet_isbi2012.py --workdir=runs/isbi \
    --config.dataset.manual_dir=../shared/data/isbi2012-membrane
"""

from segjax import config as config_lib


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "isbi2012")
  c.model.depth = 4
  c.model.base_features = 64
  c.model.dropout_rate = 0.5  # the paper's drop-out at the end of the contracting path
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.schedule = "cosine"
  c.loss.ce_weight = 1.0
  c.loss.dice_weight = 1.0
  return config_lib.finalize(c)
