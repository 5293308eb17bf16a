"""The panoptic quickstart shrunk for tests: a tiny Panoptic FPN (8-16 channel backbone, 16-channel FPN and
semantic branch) on 64x64 crops of panoptic_shapes, 16 steps; train.py can run it (tests/tasks/test_panoptic.py)."""

from segjax import config as config_lib
from segjax.tasks import panoptic


def get_config():
  c = config_lib.load_recipe(str(config_lib.resolve_recipe("panoptic_quickstart")))
  c.unlock()
  c.dataset.crop_size = (64, 64)
  c.dataset.eval_size = (128, 128)
  c.model = panoptic.model_config(
      backbone="small", frozen_bn=False, small_widths=(8, 8, 16, 16), fpn_channels=16, representation_size=32,
      rpn_pre_nms_top_n_train=40, rpn_pre_nms_top_n_test=40, rpn_post_nms_top_n_train=30,
      rpn_post_nms_top_n_test=20, rpn_batch_size_per_image=32, box_batch_size_per_image=16, detections_per_img=10,
      semantic_conv_dims=16, semantic_num_groups=8)
  c.instance.scale_range = (0.5, 1.0)
  c.batch_size, c.eval_batch_size = 8, 8
  c.num_train_steps = 16
  c.log_every_steps, c.checkpoint_every_steps, c.keep_checkpoints = 1, 4, 10
  c.eval_every_steps, c.eval_split = 16, "validation[:16]"
  c.num_visualizations = 2
  c.optimizer.warmup_steps = 0
  return config_lib.finalize(c)
