"""Instance quickstart: a small Mask R-CNN on the built-in instance_shapes dataset (128x128, 5 classes, 0-6
overlapping instances per image). CPU-sized: a small backbone (4 conv stages, 16-128 channels), a 64-channel FPN
and torchvision's proposal / RoI counts scaled down with the image (128 px instead of 800).

python train.py --config=configs/maskrcnn_quickstart.py --workdir=runs/maskrcnn_quickstart
python eval.py --config=configs/maskrcnn_quickstart.py --workdir=runs/maskrcnn_quickstart --split=test
"""

from segjax import config as config_lib
from segjax.tasks import instance


def get_config():
  c = config_lib.default_config()
  c.task = "instance"
  c.dataset.name = "instance_shapes"
  c.dataset.crop_size = (128, 128)
  c.dataset.mean, c.dataset.std = (127.5,), (64.0,)
  c.dataset.check_labels = False  # instance data are checked when the builders prepare them
  c.augment.hflip_prob = 0.0  # the instance task flips images with their masks and boxes (config.instance)
  c.eval_split = "validation"
  c.instance.max_instances = 8
  c.instance.hflip_prob = 0.5
  c.instance.scale_range = (0.8, 1.25)
  c.model = instance.model_config(
      "mask_rcnn", backbone="small", frozen_bn=False, fpn_channels=64, representation_size=256,
      rpn_pre_nms_top_n_train=300, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_train=200,
      rpn_post_nms_top_n_test=100, rpn_batch_size_per_image=128, box_batch_size_per_image=64,
      detections_per_img=20)
  c.num_train_steps, c.batch_size, c.eval_batch_size = 2000, 8, 20
  c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 25, 250, 0
  c.optimizer.name, c.optimizer.learning_rate, c.optimizer.warmup_steps = "adamw", 2e-3, 100
  c.optimizer.weight_decay = 1e-4
  c.optimizer.grad_clip_norm = 10.0
  return config_lib.finalize(c)
