"""A folder dataset of images of three sizes trains and evaluates through configs/folder.py without naming a size.

The recipe evaluates each image at its own size (`dataset.eval_size="per_image"`); its metrics must equal a numpy
count of the predictions predict.py writes for the same files against the masks as PIL reads them.
"""

import json

import numpy as np
import pytest
from PIL import Image

from segjax import config as config_lib
from segjax.apps import eval as eval_app
from segjax.apps import predict
from segjax.training import loop
from tests.conftest import REPO

SIZES = ((20, 28), (28, 20), (24, 24))  # whichever comes first, another image is taller or wider
CLASSES = ("background", "bright", "dark")
IGNORE = 255


def _write(root, rng):
  """Index masks with ignored pixels; images whose grey level says the class (so the net has something to learn)."""
  for sub in ("images", "masks"):
    (root / sub).mkdir(parents=True)
  stems = {"train": [], "validation": []}
  for i in range(9):
    h, w = SIZES[i % 3]
    ids = rng.integers(0, 3, (h, w)).astype(np.uint8)
    ids[rng.random((h, w)) < 0.1] = IGNORE
    image = np.choose(np.minimum(ids, 3), [80, 200, 20, 128]).astype(np.uint8)
    image = np.clip(image[..., None] + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
    stem = f"im{i}"
    Image.fromarray(image).save(root / "images" / f"{stem}.png")
    Image.fromarray(ids).save(root / "masks" / f"{stem}.png")
    stems["validation" if i >= 6 else "train"].append(stem)
  for split, names in stems.items():
    (root / f"{split}.txt").write_text("\n".join(names) + "\n")
  return stems["validation"]


def _config(root, tmp_path):
  config = config_lib.load_recipe(str(REPO / "configs" / "folder.py"))
  f = config.dataset.folder
  f.images_dir, f.masks_dir, f.class_names = str(root / "images"), str(root / "masks"), CLASSES
  f.split_files = (("train", str(root / "train.txt")), ("validation", str(root / "validation.txt")))
  config.dataset.data_dir = str(tmp_path / "tfds")
  config.dataset.crop_size, config.dataset.worker_count = (16, 16), 0
  config.model.depth, config.model.base_features = 2, 4
  config.num_train_steps, config.batch_size, config.checkpoint_every_steps, config.log_every_steps = 3, 8, 3, 1
  config.eval_every_steps = 3  # the training loop's evaluation takes the per-image path too
  config.optimizer.warmup_steps = 0
  return config


def _brute_force(root, stems, pred_dir):
  """[K, K] counts of (mask id, predicted id) over every labelled pixel, from the files alone."""
  k = len(CLASSES)
  cm = np.zeros((k, k), np.int64)
  for stem in stems:
    label = np.asarray(Image.open(root / "masks" / f"{stem}.png"))
    pred = np.asarray(Image.open(pred_dir / f"{stem}.png"))
    assert pred.shape == label.shape  # predicted at the image's own size
    for t in range(k):
      for p in range(k):
        cm[t, p] += int(((label == t) & (pred == p)).sum())
  return cm


def test_folder_recipe_evaluates_images_of_three_sizes_at_their_own_size(tmp_path):
  root = tmp_path / "data"
  val_stems = _write(root, np.random.default_rng(0))
  config = _config(root, tmp_path)
  assert config.dataset.eval_size == "per_image"
  workdir = tmp_path / "run"
  loop.train_and_evaluate(config, workdir, progress=False)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any("eval/mean_iou" in r for r in records)

  result = eval_app.run_eval(config, str(workdir), split="validation")
  val_images = tmp_path / "val_images"
  val_images.mkdir()
  for stem in val_stems:
    (val_images / f"{stem}.png").write_bytes((root / "images" / f"{stem}.png").read_bytes())
  assert predict.run(config, str(workdir), str(val_images), str(tmp_path / "pred"), progress=False) == []
  cm = _brute_force(root, val_stems, tmp_path / "pred")

  tp, gt, pr = np.diag(cm), cm.sum(1), cm.sum(0)
  assert [c["pixel_count"] for c in result["per_class"]] == gt.tolist()
  assert [c["pred_count"] for c in result["per_class"]] == pr.tolist()
  assert result["num_images"] == 3
  assert result["pixel_accuracy"] == pytest.approx(tp.sum() / cm.sum(), rel=1e-12)
  union = gt + pr - tp
  ious = [tp[c] / union[c] for c in range(len(CLASSES)) if union[c] > 0]
  assert result["mean_iou"] == pytest.approx(np.mean(ious), rel=1e-12)

  # The old default (pad to the first example's size) cannot hold the split; its error names the fix.
  config.dataset.eval_size = None
  with pytest.raises(ValueError, match="eval_size=per_image"):
    eval_app.run_eval(config, str(workdir), split="validation")


def test_per_image_equals_padded_batches_on_a_split_of_one_size(tmp_path):
  """On images of one size (a multiple of the divisor, so no padding), per-image and batched evaluation score
  the same predictions: the two paths count alike."""
  root = tmp_path / "data"
  for sub in ("images", "masks"):
    (root / sub).mkdir(parents=True)
  rng = np.random.default_rng(1)
  for i in range(4):
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), np.uint8)).save(root / "images" / f"s{i}.png")
    ids = rng.integers(0, 3, (16, 20)).astype(np.uint8)
    ids[0] = IGNORE
    Image.fromarray(ids).save(root / "masks" / f"s{i}.png")
  (root / "train.txt").write_text("s0\ns1\n")
  (root / "validation.txt").write_text("s2\ns3\n")
  config = _config(root, tmp_path)
  config.eval_every_steps, config.num_train_steps, config.checkpoint_every_steps = 0, 1, 1
  loop.train_and_evaluate(config, tmp_path / "run", progress=False)
  per_image = eval_app.run_eval(config, str(tmp_path / "run"), split="validation")
  config.dataset.eval_size = (16, 20)
  config.eval_batch_size = 8
  batched = eval_app.run_eval(config, str(tmp_path / "run"), split="validation")
  assert per_image["per_class"] == batched["per_class"]


def test_eval_size_values_are_checked():
  config = config_lib.load_recipe(str(REPO / "configs" / "quickstart.py"))
  for good in (None, "per_image", (64, 96)):
    config.dataset.eval_size = good
    config_lib.validate(config)
  for bad in ("whole", (64,), (0, 64), (64.5, 64)):
    config.dataset.eval_size = bad
    with pytest.raises(ValueError, match=r"config.dataset.eval_size=.*'per_image'"):
      config_lib.validate(config)
