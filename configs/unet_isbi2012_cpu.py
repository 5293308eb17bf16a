"""A reduced U-Net for ISBI 2012 EM membranes that trains in minutes on 2 CPU cores (the CPU preset of
bench/isbi_cv.py).

python train.py --config=configs/unet_isbi2012_cpu.py --workdir=runs/isbi_cpu
python eval.py --config=configs/unet_isbi2012_cpu.py --workdir=runs/isbi_cpu

The paper's depth (4 poolings) and augmentation (elastic deformations, rotations, flips, gray values: the
`use_dataset("isbi2012")` block), narrowed to 16 base features (about 16x fewer FLOPs than 64) on 160x160 crops,
batch 8, 400 steps. configs/unet_isbi2012.py is the full-size recipe.
"""

from segjax import config as config_lib


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "isbi2012")
  c.dataset.crop_size = (160, 160)
  c.num_train_steps = 400
  c.log_every_steps = 25
  c.checkpoint_every_steps = 200
  c.eval_every_steps = 0
  c.model.depth = 4
  c.model.base_features = 16
  c.model.dropout_rate = 0.5  # the paper's drop-out at the end of the contracting path
  # The full recipe's 1e-4 is meant for 4000 steps; a few hundred take a larger rate (not tuned).
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 20
  c.loss.ce_weight = 1.0
  c.loss.dice_weight = 1.0
  return config_lib.finalize(c)
