"""DeepLab-LargeFOV (VGG16, pool4/pool5 stride 1, dilated conv5, fc6 3x3 dilation 12) on CamVid 360x480.

python train.py --config=configs/deeplab_largefov_camvid.py --workdir=runs/deeplab_camvid
python eval.py --config=configs/deeplab_largefov_camvid.py --workdir=runs/deeplab_camvid

The paper: SGD, lr 1e-3 (x10 on fc8), momentum 0.9, weight decay 5e-4, batch 20, from ImageNet VGG16. From
scratch here with the poly schedule of DeepLab v2.
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("deeplab_largefov")
  c.dataset.crop_size = (321, 321)  # the paper's training crop
  c.batch_size = 10
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "poly"
  # The paper's ImageNet VGG16 (docs/weights.md): Keras' Caffe-converted file, or torchvision's vgg16-397923af.pth.
  # c.init_from.path = "../shared/weights/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
  return config_lib.finalize(c)
