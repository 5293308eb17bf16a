"""DeepLabV3 (dilated ResNet-50, output stride 8, ASPP 12/24/36, auxiliary FCN head on layer3) on CamVid.

python train.py --config=configs/deeplabv3_r50_camvid.py --workdir=runs/deeplabv3_camvid \
    --config.dataset.manual_dir=../shared/data/camvid
python eval.py --config=configs/deeplabv3_r50_camvid.py --workdir=runs/deeplabv3_camvid --split=validation

The network is torchvision's deeplabv3_resnet50(aux_loss=True) (42.0 M parameters at 21 classes). The paper (Chen
et al. 2017, Sec. 4): SGD, poly schedule (power 0.9) from 0.007, momentum 0.9, weight decay 1e-4, an
ImageNet-pretrained backbone; torchvision's reference adds the auxiliary loss with weight 0.5. From scratch here
(lr 0.01, as configs/pspnet50_camvid.py); the commented init_from line loads torchvision's ResNet-50, whose
names and stem the backbone shares. Whole frames (360x480, any size works), as the other CamVid recipes.
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("deeplabv3", depth=50, output_stride=8)
  c.loss.aux_weight = 0.5
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "poly"
  c.optimizer.poly_power = 0.9
  # ImageNet ResNet-50 from torchvision (docs/weights.md).
  # c.init_from.path = "../shared/weights/resnet50-0676ba61.pth"
  return config_lib.finalize(c)
