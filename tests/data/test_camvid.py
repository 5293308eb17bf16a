"""Tests for segjax.data.camvid: the real CamVid data (when ../shared/data has it) and tiny on-disk copies, checked
against the source PNGs read with PIL.
"""

import pathlib

import numpy as np
from PIL import Image
import pytest

from segjax.data import camvid
from segjax.data import datasets
from segjax.data import isbi2012
from tests.conftest import as_str as _as_str, read_image as _read, shared_dataset


def _write(path: pathlib.Path, array) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


@pytest.fixture(scope="module")
def camvid_real(tmp_path_factory):
  source = shared_dataset("camvid")
  data_dir = tmp_path_factory.mktemp("camvid")
  datasets.get_builder("camvid", data_dir=data_dir, manual_dir=source)
  return source, data_dir


def _listed_stems(list_file: pathlib.Path) -> list[str]:
  return [pathlib.PurePosixPath(line.split()[0]).stem
          for line in list_file.read_text().splitlines() if line.strip()]


def test_camvid_real_counts_and_examples(camvid_real):
  source, data_dir = camvid_real
  builder = datasets.get_builder("camvid", data_dir=data_dir)
  assert set(builder.info.splits) == {"train", "validation", "seq_0001TP", "seq_0006R0", "seq_0016E5"}
  # Each sequence split holds every frame of its drive, train and val alike (val is all 0016E5).
  for seq, count in (("0001TP", 62), ("0006R0", 101), ("0016E5", 204 + 101)):
    ds = datasets.data_source("camvid", f"seq_{seq}", data_dir=data_dir)
    assert len(ds) == count
    assert {_as_str(ds[i]["filename"]).split("_")[0] for i in (0, count // 2, count - 1)} == {seq}
  for split, folder, count in [("train", "train", 367),
                               ("validation", "val", 101)]:
    ds = datasets.data_source("camvid", split, data_dir=data_dir)
    assert len(ds) == count
    stems = _listed_stems(source / f"{folder}.txt")
    for i in (0, count // 2, count - 1):
      example = ds[i]
      stem = _as_str(example["filename"])
      assert stem == stems[i]  # Pair-list order.
      assert example["image"].shape == (360, 480, 3)
      np.testing.assert_array_equal(
          example["image"], _read(source / folder / f"{stem}.png"))
      np.testing.assert_array_equal(
          example["label"][..., 0],
          _read(source / f"{folder}annot" / f"{stem}.png"))


def test_camvid_real_label_ids(camvid_real):
  _, data_dir = camvid_real
  ds = datasets.data_source("camvid", "validation", data_dir=data_dir)
  counts = np.zeros(256, np.int64)
  for i in range(len(ds)):
    counts += np.bincount(ds[i]["label"].ravel(), minlength=256)
  # NOTES.txt: every id 0-11 occurs in every split; void (11) stays raw.
  assert set(np.flatnonzero(counts).tolist()) == set(range(12))
  assert datasets.get_spec("camvid").ignore_label == 11
  assert datasets.get_spec("voc2012").num_classes == 21 and datasets.get_spec("voc2012").ignore_label == 255
  assert datasets.get_spec("cityscapes").num_classes == 19
  assert datasets.get_spec("ade20k").num_classes == 150
  assert datasets.get_spec("lfw_parts").class_names == ("background", "hair", "skin")


def _tiny_camvid(root: pathlib.Path, test_split=False) -> pathlib.Path:
  rng = np.random.default_rng(1)
  splits = {"train": ["a", "b"], "val": ["c"]}
  if test_split:
    splits["test"] = ["d"]
  for folder, stems in splits.items():
    for stem in stems:
      _write(root / folder / f"{stem}.png", rng.integers(0, 256, (5, 7, 3)))
      _write(root / f"{folder}annot" / f"{stem}.png",
             rng.integers(0, 12, (5, 7)))
  return root


def test_camvid_tiny(tmp_path):
  root = _tiny_camvid(tmp_path / "camvid")
  # The pair list decides the order; only its last two components count.
  (root / "train.txt").write_text(
      "/SegNet/CamVid/train/b.png /SegNet/CamVid/trainannot/b.png\n"
      "/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png\n")
  data_dir = tmp_path / "data"
  builder = datasets.get_builder("camvid", data_dir=data_dir, manual_dir=root)
  # One sequence split per frame-name prefix ("a" of a.png: these tiny names are their own sequences).
  assert set(builder.info.splits) == {"train", "validation", "seq_a", "seq_b", "seq_c"}
  seq_c = datasets.data_source("camvid", "seq_c", data_dir=data_dir)
  assert len(seq_c) == 1 and _as_str(seq_c[0]["filename"]) == "c"
  train = datasets.data_source("camvid", "train", data_dir=data_dir)
  val = datasets.data_source("camvid", "validation", data_dir=data_dir)
  assert len(train) == 2 and len(val) == 1
  for example, folder in [(train[0], "train"), (train[1], "train"),
                          (val[0], "val")]:
    stem = _as_str(example["filename"])
    np.testing.assert_array_equal(example["image"],
                                  _read(root / folder / f"{stem}.png"))
    np.testing.assert_array_equal(
        example["label"][..., 0], _read(root / f"{folder}annot/{stem}.png"))
  assert [_as_str(train[i]["filename"]) for i in range(2)] == ["b", "a"]
  with pytest.raises(ValueError, match="test/ and testannot/"):
    datasets.data_source("camvid", "test", data_dir=data_dir)


def test_camvid_tiny_with_test_split(tmp_path):
  root = _tiny_camvid(tmp_path / "camvid", test_split=True)
  test = datasets.data_source("camvid", "test", data_dir=tmp_path / "data",
                              manual_dir=root)
  assert len(test) == 1
  np.testing.assert_array_equal(test[0]["label"][..., 0],
                                _read(root / "testannot/d.png"))


def test_camvid_errors(tmp_path):
  with pytest.raises(ValueError, match=r"--config\.dataset\.manual_dir="):
    datasets.get_builder("camvid", data_dir=tmp_path / "a")
  with pytest.raises(ValueError, match="does not exist"):
    datasets.get_builder("camvid", data_dir=tmp_path / "a",
                         manual_dir=tmp_path / "nowhere")

  root = _tiny_camvid(tmp_path / "no_valannot")
  for path in (root / "valannot").iterdir():
    path.unlink()
  (root / "valannot").rmdir()
  with pytest.raises(ValueError, match=r"no_valannot has no valannot/ folder"):
    datasets.get_builder("camvid", data_dir=tmp_path / "b", manual_dir=root)

  root = _tiny_camvid(tmp_path / "unpaired")
  (root / "trainannot/b.png").unlink()
  with pytest.raises(ValueError, match=r"train/b\.png has no label"):
    datasets.get_builder("camvid", data_dir=tmp_path / "c", manual_dir=root)

  root = _tiny_camvid(tmp_path / "bad_id")
  label = np.full((5, 7), 3, np.uint8)
  label[0, 0] = 12
  _write(root / "valannot/c.png", label)
  with pytest.raises(ValueError, match=r"valannot/c\.png contains id 12"):
    datasets.get_builder("camvid", data_dir=tmp_path / "d", manual_dir=root)


def test_builder_used_directly_without_manual_dir(tmp_path):
  # Plain tfds use, bypassing get_builder, fails just as clearly.
  builder = camvid.Camvid(data_dir=tmp_path, file_format="array_record")
  with pytest.raises(ValueError, match=r"--config\.dataset\.manual_dir="):
    builder.download_and_prepare()
  assert isbi2012.Isbi2012Membrane.name == "isbi2012_membrane"
