"""Panoptic quickstart: a small Panoptic FPN on the built-in panoptic_shapes dataset (128x128; 5 thing classes,
0-6 overlapping instances per image, on 2-3 textured stuff regions of 3 stuff classes). The Mask R-CNN of
configs/maskrcnn_quickstart.py (small backbone, 64-channel FPN, scaled-down proposal and RoI counts) plus
Detectron2's semantic branch (64 channels here), trained with the joint loss.

python train.py --config=configs/panoptic_quickstart.py --workdir=runs/panoptic_quickstart
python eval.py --config=configs/panoptic_quickstart.py --workdir=runs/panoptic_quickstart --split=test
python predict.py --config=configs/panoptic_quickstart.py --workdir=runs/panoptic_quickstart --input=DIR --output=OUT
"""

from segjax import config as config_lib
from segjax.tasks import panoptic


def get_config():
  c = config_lib.default_config()
  c.task = "panoptic"
  c.dataset.name = "panoptic_shapes"
  c.dataset.crop_size = (128, 128)
  c.dataset.mean, c.dataset.std = (127.5,), (64.0,)
  c.dataset.check_labels = False  # panoptic data are checked when the builders prepare them
  c.augment.hflip_prob = 0.0  # the task flips images with their masks, boxes and semantic map (config.instance)
  c.eval_split = "validation"
  c.instance.max_instances = 8
  c.instance.hflip_prob = 0.5
  c.instance.scale_range = (0.8, 1.25)
  # Detectron2's stuff_area_thresh of 4096 px is for ~800x1333 images; scaled by area to 128x128 it is 64.
  c.panoptic.fusion.stuff_area_thresh = 64
  c.model = panoptic.model_config(
      backbone="small", frozen_bn=False, fpn_channels=64, representation_size=256,
      rpn_pre_nms_top_n_train=300, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_train=200,
      rpn_post_nms_top_n_test=100, rpn_batch_size_per_image=128, box_batch_size_per_image=64,
      detections_per_img=20, semantic_conv_dims=64)
  c.num_train_steps, c.batch_size, c.eval_batch_size = 2000, 8, 20
  c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 25, 250, 0
  c.optimizer.name, c.optimizer.learning_rate, c.optimizer.warmup_steps = "adamw", 2e-3, 100
  c.optimizer.weight_decay = 1e-4
  c.optimizer.grad_clip_norm = 10.0
  return config_lib.finalize(c)
