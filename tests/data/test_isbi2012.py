"""Tests for segjax.data.isbi2012: the real ISBI 2012 data (when ../shared/data has it) and tiny on-disk copies,
checked against the source PNGs read with PIL.
"""

import pathlib

import numpy as np
from PIL import Image
import pytest

from segjax.data import datasets
from tests.conftest import as_str as _as_str, read_image as _read, shared_dataset


def _write(path: pathlib.Path, array) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


@pytest.fixture(scope="module")
def isbi_real(tmp_path_factory):
  source = shared_dataset("isbi2012-membrane")
  data_dir = tmp_path_factory.mktemp("isbi")
  datasets.get_builder("isbi2012", data_dir=data_dir, manual_dir=source)
  return source, data_dir


def test_isbi_real_counts_and_values(isbi_real):
  source, data_dir = isbi_real
  train = datasets.data_source("isbi2012", "train", data_dir=data_dir)
  test = datasets.data_source("isbi2012", "test", data_dir=data_dir)
  assert len(train) == 30 and len(test) == 30
  values = set()
  for i in range(30):
    assert _as_str(train[i]["filename"]) == str(i)  # Numeric order.
    values |= set(np.unique(train[i]["label"]).tolist())
  assert values == {0, 1}
  for i in (0, 9, 29):
    example = train[i]
    assert example["image"].shape == (512, 512, 1)
    assert example["image"].dtype == np.uint8
    np.testing.assert_array_equal(
        example["image"][..., 0], _read(source / f"train/image/{i}.png"))
    raw = _read(source / f"train/label/{i}.png")
    # Documented remap: 0 (membrane) -> 0, 255 (cell) -> 1.
    np.testing.assert_array_equal(example["label"][..., 0],
                                  (raw == 255).astype(np.uint8))
  for i in (0, 10, 29):
    example = test[i]
    assert _as_str(example["filename"]) == str(i)
    np.testing.assert_array_equal(example["image"][..., 0],
                                  _read(source / f"test/{i}.png"))
    assert np.all(example["label"] == 255)


def _tiny_isbi(root: pathlib.Path, names=("0", "2", "10")) -> pathlib.Path:
  rng = np.random.default_rng(0)
  for name in names:
    _write(root / f"train/image/{name}.png", rng.integers(0, 256, (6, 8)))
    _write(root / f"train/label/{name}.png",
           255 * rng.integers(0, 2, (6, 8)))
  for name in ("0", "1"):
    _write(root / f"test/{name}.png", rng.integers(0, 256, (6, 8)))
  return root


def test_isbi_tiny(tmp_path):
  root = _tiny_isbi(tmp_path / "isbi")
  data_dir = tmp_path / "data"
  train = datasets.data_source("isbi2012", "train", data_dir=data_dir,
                               manual_dir=root)
  test = datasets.data_source("isbi2012", "test", data_dir=data_dir)
  assert len(train) == 3 and len(test) == 2
  # Numeric, not lexicographic, order.
  assert [_as_str(train[i]["filename"]) for i in range(3)] == ["0", "2", "10"]
  for i, name in enumerate(["0", "2", "10"]):
    np.testing.assert_array_equal(
        train[i]["image"][..., 0], _read(root / f"train/image/{name}.png"))
    np.testing.assert_array_equal(
        train[i]["label"][..., 0],
        _read(root / f"train/label/{name}.png") // 255)
  assert test[1]["image"].shape == (6, 8, 1)
  assert np.all(test[1]["label"] == 255)


def test_isbi_errors(tmp_path):
  with pytest.raises(ValueError, match=r"--config\.dataset\.manual_dir="):
    datasets.get_builder("isbi2012", data_dir=tmp_path / "a")
  root = _tiny_isbi(tmp_path / "isbi")
  for path in (root / "train/label").iterdir():
    path.unlink()
  (root / "train/label").rmdir()
  with pytest.raises(ValueError, match=r"isbi.* has no train/label/ folder"):
    datasets.get_builder("isbi2012", data_dir=tmp_path / "b", manual_dir=root)

  root = _tiny_isbi(tmp_path / "isbi_bad")
  bad = np.zeros((6, 8), np.uint8)
  bad[2, 3] = 128
  _write(root / "train/label/2.png", bad)
  data_dir = tmp_path / "c"
  with pytest.raises(ValueError, match=r"train/label/2\.png.* value 128"):
    datasets.get_builder("isbi2012", data_dir=data_dir, manual_dir=root)
  # The failed attempt left nothing behind: fixing the file is enough.
  _write(root / "train/label/2.png", np.full((6, 8), 255))
  builder = datasets.get_builder("isbi2012", data_dir=data_dir,
                                 manual_dir=root)
  assert builder.info.splits["train"].num_examples == 3
