"""segjax/data/label_stats.py: labelled pixels per class against a brute-force count, and training refusing a split
where nothing is labelled / warning about classes that never occur, before anything is compiled."""

import json

import jax
import numpy as np
from PIL import Image
import pytest

from segjax.data import datasets, label_stats, shapes
from segjax.training import loop
from tests.conftest import tiny_config


def _source(rng, n, k, ignore, shape=(9, 7)):
  examples = []
  for i in range(n):
    label = rng.integers(0, k, shape).astype(np.uint8)
    label[rng.random(shape) < 0.3] = ignore
    examples.append({"image": np.zeros((*shape, 3), np.uint8), "label": label[..., None], "filename": f"e{i}"})
  return examples


@pytest.mark.parametrize("reduce_zero_label", [False, True])
def test_counts_equal_a_brute_force_loop(reduce_zero_label):
  rng = np.random.default_rng(0)
  k, ignore = 5, 255
  source = _source(rng, 6, k + int(reduce_zero_label), ignore)
  source[2]["label"][:] = ignore  # an image without a labelled pixel
  stats = label_stats.count_pixels(source, k, ignore, reduce_zero_label, threads=2)
  expected, ignored, empty = np.zeros(k, int), 0, []
  for ex in source:
    labelled = 0
    for v in ex["label"].ravel():
      v = int(v)
      if v == ignore or (reduce_zero_label and v == 0):
        ignored += 1
        continue
      expected[v - int(reduce_zero_label)] += 1
      labelled += 1
    if not labelled:
      empty.append(ex["filename"])
  assert stats["class_pixels"] == expected.tolist()
  assert stats["ignored_pixels"] == ignored and stats["unlabelled_examples"] == empty == ["e2"]


def test_check_names_missing_classes_and_empty_images():
  spec = datasets.get_spec("shapes")
  stats = {"class_pixels": [5, 0, 3, 0, 1, 1], "ignored_pixels": 0, "examples": 3, "unlabelled_examples": ["x"]}
  warnings = label_stats.check(stats, spec, "train", "shapes")
  assert len(warnings) == 2
  assert "2 of 6 classes have no labelled pixel in the training split 'train'" in warnings[0]
  assert f"1 {spec.class_names[1]!r}, 3 {spec.class_names[3]!r}" in warnings[0]
  assert "1 of 3 images" in warnings[1] and "x" in warnings[1]
  with pytest.raises(ValueError, match=r"No pixel of the training split 'train' .* is labelled"):
    label_stats.check({**stats, "class_pixels": [0] * 6}, spec, "train", "shapes")


def _folder(root, masks):
  for i, mask in enumerate(masks):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / "images" / f"s{i}.png")
    Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"s{i}.png")


def _config(shapes_data_dir, root, tmp_path):
  return tiny_config(shapes_data_dir, **{
      "dataset.name": "folder", "dataset.data_dir": str(tmp_path / "tfds"),
      "dataset.folder.images_dir": str(root / "images"), "dataset.folder.masks_dir": str(root / "masks"),
      "dataset.folder.class_names": shapes.CLASS_NAMES, "dataset.folder.split_fractions": (("train", 1.0),),
      "num_train_steps": 1})


def test_training_on_all_ignore_masks_is_refused(shapes_data_dir, tmp_path):
  root = tmp_path / "data"
  _folder(root, [np.full((16, 16), 255)] * 3)
  with pytest.raises(ValueError, match=r"No pixel of the training split 'train' of dataset 'folder' \(3 images\) is "
                                       r"labelled; every pixel is the ignore label 255"):
    loop.train_and_evaluate(_config(shapes_data_dir, root, tmp_path), tmp_path / "run", progress=False,
                            devices=jax.devices()[:1])
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_training_warns_about_absent_classes_and_caches_the_count(shapes_data_dir, tmp_path, capsys, monkeypatch):
  root = tmp_path / "data"
  rng = np.random.default_rng(0)
  masks = [rng.integers(0, 3, (16, 16)) for _ in range(3)]  # classes 3..5 never occur
  masks.append(np.full((16, 16), 255))
  _folder(root, masks)
  config = _config(shapes_data_dir, root, tmp_path)
  workdir = tmp_path / "run"
  loop.train_and_evaluate(config, workdir, progress=True, devices=jax.devices()[:1])
  out = capsys.readouterr().out
  names = ", ".join(f"{i} {shapes.CLASS_NAMES[i]!r}" for i in (3, 4, 5))
  assert f"3 of 6 classes have no labelled pixel in the training split 'train' of dataset 'folder' (4 images): " \
         f"{names}" in out
  assert "1 of 4 images" in out and "s3" in out
  cached = json.loads((workdir / label_stats.CACHE_FILE).read_text())
  assert cached["stats"]["class_pixels"][3:] == [0, 0, 0]
  # A resumed run reads the count instead of decoding the split again.
  monkeypatch.setattr(label_stats, "count_pixels", lambda *a, **k: pytest.fail("counted again"))
  with config.unlocked():
    config.num_train_steps = 2
  loop.train_and_evaluate(config, workdir, progress=False, devices=jax.devices()[:1])
