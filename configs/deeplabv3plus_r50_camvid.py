"""DeepLabV3+ (dilated ResNet-50, output stride 16, separable ASPP 6/12/18, 48-channel layer1 skip) on CamVid.

python train.py --config=configs/deeplabv3plus_r50_camvid.py --workdir=runs/deeplabv3plus_camvid \
    --config.dataset.manual_dir=../shared/data/camvid
python eval.py --config=configs/deeplabv3plus_r50_camvid.py --workdir=runs/deeplabv3plus_camvid --split=validation

The network is segmentation_models_pytorch's DeepLabV3Plus("resnet50") (26.7 M parameters), with the paper's ASPP
rates for output stride 16 (SMP's default is 12/24/36: --config.model.atrous_rates="(12, 24, 36)"). The paper
(Chen et al. 2018, Sec. 4): SGD, poly schedule (power 0.9) from 0.007, momentum 0.9, weight decay 1e-4, an
ImageNet-pretrained backbone. From scratch here (lr 0.01, as configs/pspnet50_camvid.py); the commented init_from
line loads torchvision's ResNet-50 (SMP's resnet50 encoder is torchvision's). Training crops are 352x480 and
evaluation pads the 360x480 frames to 368x480 (padding carries no weight), multiples of the output stride 16 as
SMP requires; the module itself takes any size. The 2-core CPU recipe is configs/deeplabv3plus_r50_camvid_cpu.py.
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("deeplabv3plus", depth=50, output_stride=16)
  c.dataset.crop_size = (352, 480)
  c.dataset.eval_size = (368, 480)
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "poly"
  c.optimizer.poly_power = 0.9
  # ImageNet ResNet-50 from torchvision (docs/weights.md).
  # c.init_from.path = "../shared/weights/resnet50-0676ba61.pth"
  return config_lib.finalize(c)
