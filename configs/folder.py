"""Your own images and masks: a U-Net on the folder dataset, the folders and classes from flags.

python -m segjax.browse --config=configs/folder.py --config.dataset.folder.images_dir=DATA/images \
    --config.dataset.folder.masks_dir=DATA/masks --config.dataset.folder.class_names="('background', 'cell')" \
    --out=browse.png                                      # look at augmented training examples first
python train.py --config=configs/folder.py --workdir=runs/mine <the same --config.dataset.folder.* flags>
python eval.py  --config=configs/folder.py --workdir=runs/mine <the same flags> --split=validation

Every key of `config.dataset.folder` (segjax/data/folder/params.py) is a flag: `mask_format=rgb` with a `palette`
for colour-coded masks, `ignore_index`, `validity_dir`, `split_files` or `split_fractions` (default 80/20 by a
seeded split), `label_map` (binary 0/255 masks: "((255, 1),)"), `num_channels=1` for grayscale. docs/data.md has
the details.

Images may have any and different sizes, no size needs naming:
- training: each image is rescaled by a factor in 0.5..2.0 (MMSegmentation's RandomResize ratio range) and cropped
  to `dataset.crop_size` (256x256; smaller images are padded, the padding ignored), then flipped and shifted in
  brightness/contrast on device;
- evaluation: each image at its own size (`dataset.eval_size="per_image"`), the prediction predict.py writes for
  it, so no eval size has to cover the largest image. A split of one size evaluates faster batched:
  `--config.dataset.eval_size="(H, W)"` (rounded up to the model's divisor, 16 here).
"""

from segjax import config as config_lib


def get_config():
  c = config_lib.default_config()
  c.dataset.name = "folder"
  c.dataset.crop_size = (256, 256)
  c.dataset.train_scale = (0.5, 2.0)
  c.dataset.eval_size = "per_image"
  c.dataset.worker_count = 2
  c.augment.update(dict(hflip_prob=0.5, brightness=0.1, contrast=0.2))
  # A U-Net of 4 levels with 32 base channels (7.8 M parameters): wide enough for a few classes of natural or
  # microscopy images, small enough to train on one GPU in minutes.
  c.model.depth = 4
  c.model.base_features = 32
  c.num_train_steps, c.batch_size, c.eval_batch_size = 4000, 8, 8
  c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 50, 500, 1000
  c.optimizer.learning_rate, c.optimizer.warmup_steps = 1e-3, 100
  return config_lib.finalize(c)
