"""The new datasets through the registry, the pipeline and the CLIs: what a user runs, end to end."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from segjax import config as config_lib
from segjax.data import datasets, pipeline
from tests.conftest import REPO
from tests.data.test_ade20k import _tiny_ade
from tests.data.test_lfw_parts import _tiny_lfw
from tests.data.test_voc2012 import _tiny_voc

PALETTE = ((0, 0, 0), (255, 0, 0), (0, 0, 255))


def _write_folder_dataset(root, rng):
  """Images of varying sizes, RGB palette masks with a blended (anti-aliased) seam, and validity masks.

  Returns the number of labelled pixels per stem, counted independently of segjax: pixels on the palette or
  within tolerance of it, inside the validity mask.
  """
  counts = {}
  for i, (h, w) in enumerate([(20, 24), (18, 30), (24, 24), (22, 26), (19, 21), (24, 32)]):
    stem = f"img{i}"
    image = rng.integers(0, 256, (h, w, 3), np.uint8)
    ids = rng.integers(0, 3, (h, w))
    mask = np.array(PALETTE, np.uint8)[ids]
    mask[:, w // 2] = (128, 0, 0)  # a seam halfway between black and red: 128 from both, beyond tolerance 30
    mask[0, 0] = (250, 5, 0)  # anti-aliased red, within tolerance
    valid = np.ones((h, w), np.uint8)
    valid[h - 3:, :] = 0  # the bottom rows are outside the validity mask
    Image.fromarray(image).save(root / "images" / f"{stem}.jpg" if i % 2 else root / "images" / f"{stem}.png")
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    Image.fromarray(valid * 255).save(root / "valid" / f"{stem}.png")
    labelled = valid.astype(bool)
    labelled[:, w // 2] = False
    counts[stem] = int(labelled.sum())
  return counts


def test_folder_dataset_trains_and_evaluates_from_the_command_line(tmp_path, cli_env):
  root = tmp_path / "mydata"
  for sub in ("images", "masks", "valid"):
    (root / sub).mkdir(parents=True)
  counts = _write_folder_dataset(root, np.random.default_rng(0))
  (root / "train.txt").write_text("img0\nimg1\nimg2\nimg3\n")
  (root / "val.txt").write_text("# held out\nimg4\nimg5\n")
  flags = [
      f"--config={REPO / 'configs/quickstart.py'}", f"--workdir={tmp_path / 'run'}",
      f"--config.dataset.data_dir={tmp_path / 'tfds'}", "--config.dataset.name=folder",
      f"--config.dataset.folder.images_dir={root / 'images'}", f"--config.dataset.folder.masks_dir={root / 'masks'}",
      f"--config.dataset.folder.validity_dir={root / 'valid'}", "--config.dataset.folder.mask_format=rgb",
      "--config.dataset.folder.class_names=('background', 'red', 'blue')",
      f"--config.dataset.folder.palette={PALETTE}", "--config.dataset.folder.off_palette=ignore",
      f"--config.dataset.folder.split_files=(('train', '{root / 'train.txt'}'), ('validation', "
      f"'{root / 'val.txt'}'))",
      "--config.dataset.crop_size=(16, 16)", "--config.dataset.eval_size=(32, 32)", "--config.model.depth=2",
      "--config.model.base_features=4", "--config.batch_size=8", "--config.eval_batch_size=8",
      "--config.num_train_steps=2", "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
      "--config.augment.rotate_degrees=10", "--config.augment.zoom=(0.8, 1.25)",
  ]
  for script, extra in (("train.py", []), ("eval.py", ["--split=validation"])):
    proc = subprocess.run([sys.executable, str(REPO / script), *flags, *extra], cwd=REPO, env=cli_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads((tmp_path / "run" / "eval" / "validation" / "metrics.json").read_text())
  # Every labelled validation pixel is counted once; the seam, the invalid rows and the padding never are.
  assert sum(c["pixel_count"] for c in result["per_class"]) == counts["img4"] + counts["img5"]
  assert [c["name"] for c in result["per_class"]] == ["background", "red", "blue"]


def test_manual_dir_builders_through_the_registry(tmp_path):
  """lfw_parts, voc2012 and ade20k prepared via datasets.data_source, as train.py does, then into examples."""
  _tiny_lfw(tmp_path / "lfw")
  _, voc_ids = _tiny_voc(tmp_path / "voc")
  _, ade_ids = _tiny_ade(tmp_path / "ade")
  for name, manual_dir, split in (("lfw_parts", tmp_path / "lfw", "train"), ("voc2012", tmp_path / "voc", "train"),
                                  ("ade20k", tmp_path / "ade", "validation")):
    spec = datasets.get_spec(name)
    source = datasets.data_source(name, split, data_dir=tmp_path / "tfds", manual_dir=manual_dir)
    assert len(source) > 0
    for raw in source:
      ex = pipeline.to_example(raw, spec.ignore_label, spec.num_classes)
      assert ex.image.shape[:2] == ex.label.shape and ex.image.shape[2] == spec.num_channels
      stem = raw["filename"].decode() if isinstance(raw["filename"], bytes) else raw["filename"]
      if name == "voc2012":
        np.testing.assert_array_equal(ex.weight, voc_ids[stem] != 255)
      if name == "ade20k":
        np.testing.assert_array_equal(ex.weight, ade_ids[stem] != 0)  # "other objects" is ignored
        np.testing.assert_array_equal(ex.label[ex.weight > 0], ade_ids[stem][ade_ids[stem] != 0] - 1)


def test_folder_config_errors_name_the_key():
  c = config_lib.default_config()
  c.dataset.name = "folder"
  try:
    config_lib.validate(c)
  except ValueError as e:
    assert "--config.dataset.folder.images_dir is not set" in str(e)
  else:
    raise AssertionError("a folder dataset without images_dir must be refused")
