"""Yu & Koltun's dilated front-end + large context module on CamVid (the paper reports CamVid).

python train.py --config=configs/context_camvid.py --workdir=runs/context_camvid
python eval.py --config=configs/context_camvid.py --workdir=runs/context_camvid

The paper trains the front-end first and then the identity-initialised context module on top of it; this
recipe trains both jointly from scratch with Adam. Switch to `--config.model.context=basic`
for the basic module.
"""

from segjax import config as config_lib
from segjax import models


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.model = models.model_config("dilated_context", context="large")
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.weight_decay = 5e-4
  c.optimizer.warmup_steps = 500
  return config_lib.finalize(c)
