"""Tests for the ADE20K SceneParsing (ADEChallengeData2016) builder.

A tiny dataset is written in the layout ADEChallengeData2016.zip extracts to;
the prepared examples are checked against what the test wrote: the images as
PIL decodes the JPEG files, and the source ids reduced here with numpy
(0 -> 255, c -> c - 1).
"""

import os
import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from segjax.data import ade20k
from segjax.data import catalog
from segjax.data import png
from tests.conftest import as_str as _as_str, prepare_builder, read_image as _read, save_image as _save

# Stems per source folder, deliberately written out of name order.
_STEMS = {
    "training": ["ADE_train_00000010", "ADE_train_00000002",
                 "ADE_train_00000001"],
    "validation": ["ADE_val_00000002", "ADE_val_00000001"],
}
_SPLITS = {"train": "training", "validation": "validation"}
# Written as a grey-scale JPEG, as a few ADE images are.
_GREY = "ADE_train_00000002"


def _prepare(data_dir, manual_dir):
  return prepare_builder(ade20k.Ade20k, data_dir, manual_dir)





def _tiny_ade(root: pathlib.Path, nest=("ADEChallengeData2016",)):
  """Writes a tiny ADEChallengeData2016; returns (its folder, {stem: ids})."""
  rng = np.random.default_rng(11)
  ade = root.joinpath(*nest)
  written = {}
  for folder, stems in _STEMS.items():
    for stem in stems:
      shape = (int(rng.integers(8, 41)), int(rng.integers(10, 51)))
      if stem == _GREY:
        pixels = rng.integers(0, 256, shape, np.uint8)
      else:
        pixels = rng.integers(0, 256, shape + (3,), np.uint8)
      _save(ade / "images" / folder / f"{stem}.jpg", Image.fromarray(pixels))
      ids = rng.integers(0, 151, shape).astype(np.uint8)
      ids[0, :3] = (0, 1, 150)  # Both ends of the range and "other".
      _save(ade / "annotations" / folder / f"{stem}.png",
            Image.fromarray(ids))
      written[stem] = ids
  return ade, written


@pytest.fixture(scope="module")
def ade_tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("ade_src")
  ade, written = _tiny_ade(root)
  builder = _prepare(tmp_path_factory.mktemp("ade_data"), root)
  return ade, written, builder


def test_ade_constants():
  # The catalog's tables, not copies.
  assert ade20k.CLASS_NAMES is catalog.ADE20K_CLASS_NAMES
  assert ade20k.PALETTE is catalog.ADE20K_PALETTE
  assert len(ade20k.CLASS_NAMES) == len(ade20k.PALETTE) == 150
  # objectInfo150.txt: index 1 is wall, 13 person, 150 flag; stored id is
  # the index minus 1.
  assert ade20k.CLASS_NAMES[0] == "wall"
  assert ade20k.CLASS_NAMES[12] == "person"
  assert ade20k.CLASS_NAMES[149] == "flag"
  assert ade20k.IGNORE_LABEL == 255
  assert ade20k.NUM_CHANNELS == 3
  assert ade20k.SPLITS == ("train", "validation")
  assert ade20k.Ade20k.name == "ade20k"
  # Registered under that name without clashing with a tfds catalog builder
  # (a clash raises when the module is imported).
  assert tfds.builder_cls("ade20k") is ade20k.Ade20k


def test_ade_tiny_examples(ade_tiny):
  ade, written, builder = ade_tiny
  assert set(builder.info.splits) == {"train", "validation"}
  for split, folder in _SPLITS.items():
    source = builder.as_data_source(split=split)
    stems = sorted(_STEMS[folder])  # File-name order.
    assert len(source) == len(stems)
    for i, stem in enumerate(stems):
      example = source[i]
      assert _as_str(example["filename"]) == stem
      image = _read(ade / "images" / folder / f"{stem}.jpg")
      assert example["image"].dtype == np.uint8
      if stem == _GREY:
        assert image.ndim == 2
        # Grey JPEGs come back with the grey value in all three channels.
        np.testing.assert_array_equal(
            example["image"], np.repeat(image[..., None], 3, axis=-1))
      else:
        np.testing.assert_array_equal(example["image"], image)
      raw = written[stem]
      np.testing.assert_array_equal(
          _read(ade / "annotations" / folder / f"{stem}.png"), raw)
      want = np.where(raw == 0, 255, raw.astype(np.int32) - 1)
      assert example["label"].shape == raw.shape + (1,)
      assert example["label"].dtype == np.uint8
      np.testing.assert_array_equal(example["label"][..., 0], want)
      assert example["label"][0, :3, 0].tolist() == [255, 0, 149]


def test_ade_jpeg_bytes_stored_unchanged(ade_tiny):
  ade, _, _ = ade_tiny
  path = ade / "images/validation/ADE_val_00000001.jpg"
  data, shape = png.read_jpeg(path)
  assert data == path.read_bytes()
  assert shape == _read(path).shape[:2]


def test_ade_manual_dir_levels(tmp_path):
  # The folder holding ADEChallengeData2016/, that folder itself, and the
  # extra level `unzip -d ADEChallengeData2016` adds.
  ade, _ = _tiny_ade(tmp_path / "a")
  for manual_dir in (tmp_path / "a", ade):
    assert ade20k.check_manual_dir(manual_dir) == ade
  nested, _ = _tiny_ade(
      tmp_path / "b", nest=("ADEChallengeData2016", "ADEChallengeData2016"))
  assert ade20k.check_manual_dir(tmp_path / "b") == nested
  builder = _prepare(tmp_path / "data", tmp_path / "b")
  assert builder.info.splits["train"].num_examples == 3
  assert builder.info.splits["validation"].num_examples == 2


def test_ade_layout_errors(tmp_path):
  with pytest.raises(ValueError, match=r"--config\.dataset\.manual_dir="):
    ade20k.check_manual_dir(None)
  with pytest.raises(ValueError, match=r"--config\.dataset\.manual_dir="):
    ade20k.Ade20k(data_dir=os.fspath(tmp_path / "d0"),
                  file_format="array_record").download_and_prepare()
  with pytest.raises(ValueError, match="nowhere does not exist"):
    ade20k.check_manual_dir(tmp_path / "nowhere")

  zip_only = tmp_path / "zip_only"
  zip_only.mkdir()
  (zip_only / "ADEChallengeData2016.zip").write_bytes(b"")
  with pytest.raises(ValueError, match=(
      r"holds no ADEChallengeData2016 folder .*It holds "
      r"ADEChallengeData2016\.zip: extract it")):
    ade20k.check_manual_dir(zip_only)

  ade, _ = _tiny_ade(tmp_path / "no_val_labels")
  for path in (ade / "annotations/validation").iterdir():
    path.unlink()
  (ade / "annotations/validation").rmdir()
  with pytest.raises(ValueError,
                     match="has no annotations/validation/ folder"):
    ade20k.check_manual_dir(tmp_path / "no_val_labels")


def test_ade_unpaired_files(tmp_path):
  ade, _ = _tiny_ade(tmp_path / "ade")
  (ade / "annotations/training/ADE_train_00000002.png").unlink()
  with pytest.raises(ValueError, match=(
      r"image .*images/training/ADE_train_00000002\.jpg has no annotation "
      r".*annotations/training/ADE_train_00000002\.png")):
    _prepare(tmp_path / "d1", tmp_path / "ade")

  ade, _ = _tiny_ade(tmp_path / "ade2")
  (ade / "images/validation/ADE_val_00000002.jpg").unlink()
  with pytest.raises(ValueError, match=(
      r"annotation .*annotations/validation/ADE_val_00000002\.png has no "
      r"image .*images/validation/ADE_val_00000002\.jpg")):
    ade20k.list_pairs(ade, "validation")

  ade, _ = _tiny_ade(tmp_path / "ade3")
  for kind, suffix in (("images", "jpg"), ("annotations", "png")):
    for path in (ade / kind / "validation").glob(f"*.{suffix}"):
      path.unlink()
  with pytest.raises(ValueError, match=r"split 'validation' is empty"):
    ade20k.list_pairs(ade, "validation")


def test_ade_bad_annotations(tmp_path):
  ade, written = _tiny_ade(tmp_path / "bad_id")
  ids = written["ADE_val_00000002"].copy()
  ids[2, 2] = 151
  ids[3, 3] = 255
  _save(ade / "annotations/validation/ADE_val_00000002.png",
        Image.fromarray(ids))
  with pytest.raises(ValueError, match=(
      r"annotation .*annotations/validation/ADE_val_00000002\.png contains "
      r"id 151 \(all unexpected ids: \[151, 255\]\)")):
    _prepare(tmp_path / "d1", tmp_path / "bad_id")

  ade, written = _tiny_ade(tmp_path / "size")
  shape = written["ADE_train_00000010"].shape
  _save(ade / "annotations/training/ADE_train_00000010.png",
        Image.fromarray(np.ones((shape[0], shape[1] + 2), np.uint8)))
  with pytest.raises(ValueError, match=(
      rf"annotation .*annotations/training/ADE_train_00000010\.png is "
      rf"\({shape[0]}, {shape[1] + 2}\) but its image "
      rf".*images/training/ADE_train_00000010\.jpg is "
      rf"\({shape[0]}, {shape[1]}\)")):
    _prepare(tmp_path / "d2", tmp_path / "size")

  path = ade / "annotations/training/ADE_train_00000001.png"
  with Image.open(path) as img:
    img.convert("RGB").save(path)
  with pytest.raises(ValueError, match=r"ADE_train_00000001\.png has mode RGB"):
    ade20k.read_label(path)


def test_ade_palette_annotation_gives_its_indices(tmp_path):
  # A "P" PNG's indices are the ids, whatever colours its palette shows.
  ids = np.array([[0, 1, 2], [150, 75, 0]], np.uint8)
  image = Image.fromarray(ids)
  image.putpalette([255 - (i % 256) for i in range(768)])
  path = tmp_path / "p.png"
  image.save(path)
  with Image.open(path) as img:
    assert img.mode == "P"
  data, reduced = ade20k.read_label(path)
  want = [[255, 0, 1], [149, 74, 255]]
  np.testing.assert_array_equal(reduced, want)
  # Stored as a plain grey-scale map, which any decoder reads as ids.
  stored = tmp_path / "stored.png"
  stored.write_bytes(data)
  with Image.open(stored) as img:
    assert img.mode == "L"
  np.testing.assert_array_equal(_read(stored), want)
