"""U-Net on CamVid (SegNet's 360x480 version, 11 classes, void ignored), from scratch.

python train.py --config=configs/unet_camvid.py --workdir=runs/camvid \
    --config.dataset.manual_dir=../shared/data/camvid
python eval.py --config=configs/unet_camvid.py --workdir=runs/camvid --split=validation
Evaluation pads the 360x480 frames to 368x480 (padding carries no weight).
"""

from segjax import config as config_lib


def get_config():
  # use_dataset sets CamVid's splits, normalisation and schedule (20000 steps of batch 8, horizontal flips).
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.dataset.crop_size = (352, 480)  # multiples of 16, the depth-4 U-Net's size divisor (360 is not)
  c.dataset.eval_size = (368, 480)
  c.eval_batch_size = 8
  c.log_every_steps = 100
  c.model.depth = 4
  c.model.base_features = 64
  c.model.dropout_rate = 0.2
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 500
  c.optimizer.weight_decay = 1e-4
  return config_lib.finalize(c)
