"""The lecture's fcn transposed skip network on the built-in shapes dataset (64x64, 6 classes): minutes on a CPU.

python train.py --config=configs/fcn_transposed_skip_shapes.py --workdir=runs/fcn_transposed_skip
python eval.py --config=configs/fcn_transposed_skip_shapes.py --workdir=runs/fcn_transposed_skip --split=test
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "shapes")
  c.model = models.model_config("fcn_transposed_skip")
  c.num_train_steps = 1800
  c.batch_size = 8
  c.eval_batch_size = 50
  c.log_every_steps = 25
  c.checkpoint_every_steps = 200
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 20
  c.loss.dice_weight = 1.0
  return config_lib.finalize(c)
