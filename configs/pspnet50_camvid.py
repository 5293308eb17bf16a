"""PSPNet-50 (dilated ResNet-50, output stride 8, pyramid pooling 1/2/3/6, auxiliary loss 0.4) on CamVid.

python train.py --config=configs/pspnet50_camvid.py --workdir=runs/pspnet_camvid
python eval.py --config=configs/pspnet50_camvid.py --workdir=runs/pspnet_camvid

The paper: SGD, base lr 0.01, poly power 0.9, momentum 0.9, weight decay 1e-4, auxiliary loss weight 0.4,
ImageNet-pretrained backbone. From scratch here; the commented init_from lines load torchvision's ResNet-50.
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("pspnet", depth=50)
  c.loss.aux_weight = 0.4
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "poly"
  c.optimizer.poly_power = 0.9
  # ImageNet ResNet-50 from torchvision (docs/weights.md); its stem is the standard 7x7 one, not the deep stem.
  # c.model.stem = "standard"
  # c.init_from.path = "../shared/weights/resnet50-0676ba61.pth"
  return config_lib.finalize(c)
