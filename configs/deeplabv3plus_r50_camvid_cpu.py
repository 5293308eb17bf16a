"""DeepLabV3+ (ResNet-50 layout) on CamVid from scratch, reduced for a 2-core CPU: half resolution, a quarter of
the channels (ResNet base width 16, decoder 64 + 12 channels: 1.7 M parameters instead of 26.7 M).

python train.py --config=configs/deeplabv3plus_r50_camvid_cpu.py --workdir=runs/deeplabv3plus_camvid_cpu
python eval.py --config=configs/deeplabv3plus_r50_camvid_cpu.py --workdir=runs/deeplabv3plus_camvid_cpu \
    --split=validation

As configs/unet_camvid_cpu.py: half-size frames (0.4..0.6 jitter) cropped to 160x224 (multiples of the output
stride 16) for training, whole validation frames resized by 0.5 for inference and scored at full resolution;
median-frequency class balancing, AdamW. The full recipe is configs/deeplabv3plus_r50_camvid.py (run it on a GPU).
Not yet measured on the 2-core CPU.
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  # configs/unet_camvid_cpu.py's data, class weights and schedule; only the network differs.
  c = config_lib.load_recipe(config_lib.resolve_recipe("unet_camvid_cpu"))
  c.model = models.model_config("deeplabv3plus", depth=50, output_stride=16, width=16, stem_width=16)
  return config_lib.finalize(c)
