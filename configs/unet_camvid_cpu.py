"""U-Net on CamVid from scratch, reduced for a 2-core CPU: half resolution, 16 base channels (1.9 M parameters).

python train.py --config=configs/unet_camvid_cpu.py --workdir=runs/unet_camvid_cpu
python eval.py --config=configs/unet_camvid_cpu.py --workdir=runs/unet_camvid_cpu --split=validation

Frames are resized to half size on the host (180x240, with a 0.4..0.6 scale jitter) and cropped to 160x224;
evaluation resizes the whole 360x480 validation frames by 0.5 (`inference.scales`), resizes the scores back and
scores every labelled full-resolution pixel, so the metrics are comparable with full-resolution recipes.
The full-resolution recipe is configs/unet_camvid.py (run it on a GPU).

Measured (BENCHMARKS.md, 2-core CPU, 4000 steps in 39 min on oneDNN convolutions): CamVid val global accuracy
87.72, class-average accuracy 83.08, mIoU 60.98 (SegNet-Basic, published on the test split: 82.8 / 62.3 / 46.3).
Trained on two drives (0006R0 + 0016E5) and scored on the third (0001TP, dusk): mIoU 22.55 (sky 5.12: the dusk
sky is taken for building); configs/unet_r34_camvid_cpu.py reaches 35.24 there (BENCHMARKS.md, held-out drives).
"""

from segjax import config as config_lib
from segjax.data import camvid


def get_config():
  c = config_lib.use_dataset(config_lib.default_config(), "camvid")
  c.dataset.train_scale = (0.4, 0.6)
  c.dataset.crop_size = (160, 224)
  c.dataset.eval_size = (368, 480)
  c.inference.scales = (0.5,)
  c.loss.class_weights = camvid.MEDIAN_FREQUENCY_WEIGHTS
  c.num_train_steps = 4000
  c.eval_batch_size = 8
  c.keep_checkpoints = 4
  c.eval_every_steps = 0
  c.model.depth = 4
  c.model.base_features = 16
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 1e-4
  return config_lib.finalize(c)
