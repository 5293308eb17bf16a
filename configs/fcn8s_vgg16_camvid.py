"""FCN-8s fine-tuned from ImageNet VGG16 on CamVid 360x480, as the paper starts (Long, Shelhamer, Darrell 2015).

python train.py --config=configs/fcn8s_vgg16_camvid.py --workdir=runs/fcn8s_vgg16_camvid
python eval.py --config=configs/fcn8s_vgg16_camvid.py --workdir=runs/fcn8s_vgg16_camvid

The backbone (conv1_1 ... conv5_3) and fc6/fc7 (VGG16's fc1/fc2 as convolutions, the paper's
"convolutionalization") start from Keras' VGG16 file with its classifier, the original Caffe/Oxford weights the
paper used (docs/weights.md says where to download it; --config.init_from.path=... points elsewhere; the notop
file leaves fc6/fc7 at their initialisation). Images are then normalised as those weights expect (Caffe's
per-channel mean subtraction, std 1), not with CamVid's statistics. The score layers start at zero as in the
reference. Optimiser as configs/fcn8s_camvid.py, not tuned for fine-tuning.
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("fcn8s")
  c.init_from.path = "../shared/weights/vgg16_weights_tf_dim_ordering_tf_kernels.h5"
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.weight_decay = 5e-4
  c.optimizer.warmup_steps = 500
  return config_lib.finalize(c)
