"""segjax.browse: the grid of augmented training examples, checked against the pipeline and viz run by hand."""

import subprocess
import sys

import chex
import jax
import numpy as np
from PIL import Image

from segjax import browse, viz
from segjax import config as config_lib
from segjax.data import augment, datasets, pipeline
from tests.conftest import REPO

CLASSES = ("background", "disc", "square")
CROP = 16


def _folder_flags(root, tmp_path):
  return {"images_dir": str(root / "images"), "masks_dir": str(root / "masks"), "class_names": CLASSES,
          "data_dir": str(tmp_path / "tfds")}


def _write(root):
  """Images of two sizes, one smaller than the crop (padding), masks with an ignored (255) band."""
  rng = np.random.default_rng(0)
  for sub in ("images", "masks"):
    (root / sub).mkdir(parents=True)
  for i, (h, w) in enumerate([(24, 20), (12, 14), (24, 20), (12, 14), (24, 20)]):
    ids = rng.integers(0, 3, (h, w)).astype(np.uint8)
    ids[:, 2] = 255
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(root / "images" / f"i{i}.png")
    Image.fromarray(ids).save(root / "masks" / f"i{i}.png")


def _config(root, tmp_path):
  config = config_lib.load_recipe(str(REPO / "configs" / "folder.py"))
  flags = _folder_flags(root, tmp_path)
  config.dataset.data_dir = flags.pop("data_dir")
  config.dataset.folder.update(flags)
  config.dataset.folder.split_fractions = (("train", 1.0),)
  config.dataset.crop_size, config.dataset.worker_count, config.batch_size = (CROP, CROP), 0, 4
  config.augment.rotate_degrees = 30.0  # corners rotated in from outside the image are ignored
  return config


def _expected_examples(config, num):
  """The first `num` augmented examples rebuilt from the pipeline's pieces, as train_step draws its keys."""
  spec = datasets.get_spec(config.dataset)
  source = datasets.data_source(config.dataset, "train")
  crop = pipeline.RandomCrop((CROP, CROP), spec.ignore_label, spec.num_classes, False, config.dataset.train_scale)
  batches = pipeline.train_dataset(source, crop, batch_size=config.batch_size, seed=config.seed)
  cfg, out = augment.from_config(config.augment), []
  for step in range(-(-num // config.batch_size)):
    batch = batches[step]
    key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), step))[0]
    image, label, weight = augment.augment_batch(cfg, key, batch["image"], batch["label"], batch["weight"])
    for row in range(config.batch_size):
      out.append((np.clip(np.round(np.asarray(image[row])), 0, 255).astype(np.uint8), np.asarray(label[row]),
                  np.asarray(weight[row])))
  return out[:num], spec


def test_grid_size_and_overlays_equal_viz_of_the_same_augmented_examples(tmp_path):
  _write(tmp_path / "data")
  config = _config(tmp_path / "data", tmp_path)
  num, columns, side = 6, 4, 32
  out = browse.browse(config, tmp_path / "browse.png", num=num, columns=columns, max_side=side)
  grid = np.asarray(Image.open(out).convert("RGB"))
  examples, spec = _expected_examples(config, num)

  size = (side, side)  # the 16x16 crops enlarged twice
  caption = viz.caption_height("step 1, #0")
  cell_w = 2 * side + browse.GAP
  legend_h = browse.legend(spec.class_names, spec.palette, columns * cell_w + (columns + 1) * browse.GAP).shape[0]
  chex.assert_shape(grid, (legend_h + 2 * (caption + side + browse.GAP), columns * cell_w + (columns + 1) * browse.GAP,
                           3))
  ignored = 0
  for n, (image, label, weight) in enumerate(examples):
    r, c = divmod(n, columns)
    top = legend_h + r * (caption + side + browse.GAP) + caption
    left = browse.GAP + c * (cell_w + browse.GAP)
    shown = viz.resize_image(image, size)
    big_label, big_weight = (viz.resize_nearest(a, size) for a in (label, weight))
    np.testing.assert_array_equal(grid[top:top + side, left:left + side], shown)
    np.testing.assert_array_equal(grid[top:top + side, left + side + browse.GAP:left + cell_w],
                                  viz.overlay(shown, viz.colorize(big_label, spec.palette, big_weight)))
    # Ignored pixels blend the neutral stripes, never a class colour.
    unscored = big_weight == 0
    np.testing.assert_array_equal(grid[top:top + side, left + side + browse.GAP:left + cell_w][unscored],
                                  viz.overlay(shown, viz.unscored_pattern(*size))[unscored])
    ignored += int(unscored.sum())
  assert ignored > 0  # the 255 column, padding and rotated-in corners are in the drawn examples


def test_the_browse_command_writes_the_png(tmp_path, cli_env):
  _write(tmp_path / "data")
  flags = _folder_flags(tmp_path / "data", tmp_path)
  out = tmp_path / "sub" / "grid.png"
  proc = subprocess.run(
      [sys.executable, "-m", "segjax.browse", f"--config={REPO / 'configs' / 'folder.py'}",
       f"--config.dataset.data_dir={flags['data_dir']}",
       f"--config.dataset.folder.images_dir={flags['images_dir']}",
       f"--config.dataset.folder.masks_dir={flags['masks_dir']}",
       f"--config.dataset.folder.class_names={CLASSES}", "--config.dataset.worker_count=0",
       f"--config.dataset.crop_size=({CROP}, {CROP})", "--num=3", "--columns=3", "--max_side=16", f"--out={out}"],
      cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert f"Wrote {out}: 3 augmented training examples" in proc.stdout
  with Image.open(out) as image:
    assert image.format == "PNG"
    assert image.size[0] == 3 * (2 * CROP + browse.GAP) + 4 * browse.GAP
  bad = subprocess.run([sys.executable, "-m", "segjax.browse", f"--config={REPO / 'configs' / 'folder.py'}",
                        f"--out={out}"], cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "folder.images_dir is not set" in bad.stderr
