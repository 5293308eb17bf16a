"""The original U-Net (unpadded convolutions; 572x572 tiles give 388x388 outputs) on ISBI 2012 EM membranes.

python train.py --config=configs/unet_valid_isbi2012.py --workdir=runs/unet_valid_isbi
python eval.py --config=configs/unet_valid_isbi2012.py --workdir=runs/unet_valid_isbi

Training crops 508x508 tiles (the largest valid input inside the 512x512 images) and the loss covers their
central 324x324 outputs; evaluation mirror-pads each whole image by the 92-pixel margin (overlap-tile). The
paper: SGD momentum 0.99, batch 1 tile, elastic deformations; Adam at batch 2 here, with the paper's augmentation
(the `use_dataset("isbi2012")` preset).
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "isbi2012")
  c.model = models.model_config("unet_valid", dropout_rate=0.5)
  c.dataset.crop_size = (508, 508)
  c.batch_size = 2
  c.eval_batch_size = 1
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-4
  c.loss.dice_weight = 1.0
  return config_lib.finalize(c)
