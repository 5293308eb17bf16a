"""SMP's FPN with a ResNet-34 encoder (segmentation_models_pytorch `FPN("resnet34")`, 23.2 M parameters at 11
classes) on CamVid (SegNet's 360x480 version, 11 classes, void ignored).

python train.py --config=configs/fpn_r34_camvid.py --workdir=runs/fpn_r34_camvid \
    --config.dataset.manual_dir=../shared/data/camvid
python eval.py --config=configs/fpn_r34_camvid.py --workdir=runs/fpn_r34_camvid --split=validation

Inputs must be multiples of 32 (the encoder's output stride): training crops 352x480, evaluation pads the 360x480
frames to 384x480 (padding carries no weight). From scratch with the schedule of configs/unet_camvid.py; the
commented init_from line loads torchvision's ImageNet ResNet-34 into the encoder (SMP's "imagenet" encoder
weights are the same file), with torchvision's input normalisation.
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  # configs/unet_r34_camvid.py's data, schedule and weights; only the network differs.
  c = config_lib.load_recipe(config_lib.resolve_recipe("unet_r34_camvid"))
  c.model = models.model_config("smp_fpn", encoder="resnet34")
  return config_lib.finalize(c)
