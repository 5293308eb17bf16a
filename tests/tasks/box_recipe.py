"""The test-only box task (tests/tasks/box_task.py) on the built-in shapes dataset: a recipe train.py can run."""

from segjax import config as config_lib


def get_config():
  c = config_lib.default_config()
  config_lib.use_dataset(c, "shapes")
  c.task = "tests.tasks.box_task:BoxTask"
  c.dataset.crop_size = (32, 32)
  c.augment.hflip_prob = 0.0  # the task flips image and boxes itself
  c.batch_size, c.eval_batch_size = 8, 8
  c.num_train_steps = 120
  c.log_every_steps, c.checkpoint_every_steps, c.keep_checkpoints = 1, 5, 50
  c.eval_every_steps, c.eval_split = 60, "validation[:20]"
  c.optimizer.learning_rate, c.optimizer.warmup_steps = 1e-2, 0
  c.dataset.check_labels = False  # the box task reads labels only to make boxes
  return config_lib.finalize(c)
