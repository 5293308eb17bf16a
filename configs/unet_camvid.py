"""U-Net on CamVid (SegNet's 360x480 version, 11 classes, void ignored), from scratch.

python train.py --config=configs/unet_camvid.py --workdir=runs/camvid \
    --config.dataset.manual_dir=../shared/data/camvid
python eval.py --config=configs/unet_camvid.py --workdir=runs/camvid --split=validation
Evaluation pads the 360x480 frames to 368x480 (padding carries no weight).
"""

from segjax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.dataset.name = "camvid"
  c.dataset.manual_dir = "../shared/data/camvid"
  c.dataset.train_split = "train"
  c.eval_split = "validation"
  c.dataset.crop_size = (352, 480)
  c.dataset.eval_size = (368, 480)
  # Per-channel mean/std of the 367 CamVid training images in 0..255 (RGB), computed with numpy.
  c.dataset.mean = (105.0, 108.4, 110.3)
  c.dataset.std = (78.3, 79.5, 78.3)
  c.dataset.worker_count = 2
  c.num_train_steps = 20000
  c.batch_size = 8
  c.eval_batch_size = 8
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.eval_every_steps = 2000
  c.model.depth = 4
  c.model.base_features = 64
  c.model.dropout_rate = 0.2
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 500
  c.optimizer.weight_decay = 1e-4
  return config_lib.finalize(c)
