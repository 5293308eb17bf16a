"""SMP's FPN layout with a ResNet-34 encoder on CamVid, reduced for a 2-core CPU: configs/unet_r34_camvid_cpu.py
with the FPN in place of the U-Net, at half width (encoder base 32, pyramid 128, segmentation 64 channels, GroupNorm
16 groups: 5.8 M parameters).

python train.py --config=configs/fpn_r34_camvid_cpu.py --workdir=runs/fpn_r34_camvid_cpu
python eval.py --config=configs/fpn_r34_camvid_cpu.py --workdir=runs/fpn_r34_camvid_cpu --split=validation

Same data (half-size frames, 160x224 crops, whole frames at half scale for evaluation, scored at full resolution),
cross-entropy + Dice, PhotoMetricDistortion, EMA and 4200 steps as unet_r34_camvid_cpu; a training step is
about 25% quicker than the U-Net's on the 2 cores. Not yet trained on the CPU (BENCHMARKS.md's held-out-drive
comparison trained the U-Net variant). The full-width recipe is configs/fpn_r34_camvid.py.
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  # configs/unet_r34_camvid_cpu.py's data, losses, augmentation, EMA and schedule; only the network differs.
  c = config_lib.load_recipe(config_lib.resolve_recipe("unet_r34_camvid_cpu"))
  c.model = models.model_config("smp_fpn", encoder="resnet34", encoder_width=32, pyramid_channels=128,
                                segmentation_channels=64, gn_groups=16)
  return config_lib.finalize(c)
