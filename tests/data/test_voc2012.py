"""Tests for the PASCAL VOC 2012 segmentation builder (segjax.data.voc2012).

A tiny dataset is written in the real on-disk layout; the prepared examples
are checked against what the test wrote: the label ids it chose and the images
as PIL decodes the JPEG files.
"""

import os
import pathlib

import numpy as np
from PIL import Image
import pytest

from segjax.data import datasets
from segjax.data import voc2012
from tests.conftest import as_str as _as_str, prepare_builder, read_image as _read, save_image as _save

_prepare = prepare_builder


def _voc_colormap(n=256) -> np.ndarray:
  """The VOC devkit's VOClabelcolormap.m, bit by bit."""
  cmap = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, rgb = i, [0, 0, 0]
    for j in range(8):
      for k in range(3):
        rgb[k] |= ((c >> k) & 1) << (7 - j)
      c >>= 3
    cmap[i] = rgb
  return cmap


def _save_palette_png(path: pathlib.Path, ids: np.ndarray) -> None:
  image = Image.fromarray(ids.astype(np.uint8))
  image.putpalette(_voc_colormap().ravel().tolist())  # "L" -> "P".
  assert image.mode == "P"
  _save(path, image)


_VOC_LISTS = {"train": ["2007_000032", "2008_000002"],
              "val": ["2007_000033", "2009_000001", "2010_000005"]}
_AUG_ONLY = ["2011_000003", "2011_000004"]


def _tiny_voc(root: pathlib.Path, aug=False):
  """Writes VOCdevkit/VOC2012 under root; returns (voc, {name: ids})."""
  rng = np.random.default_rng(7)
  voc = root / "VOCdevkit" / "VOC2012"
  written = {}

  def image_and_ids(name):
    shape = tuple(int(v) for v in rng.integers(5, 14, 2))  # Varying sizes.
    _save(voc / "JPEGImages" / f"{name}.jpg",
          Image.fromarray(rng.integers(0, 256, shape + (3,), np.uint8)))
    ids = rng.integers(0, 21, shape)
    ids[0, :] = 255  # A void border, kept as is.
    return ids

  for list_name, names in _VOC_LISTS.items():
    for name in names:
      written[name] = image_and_ids(name)
      _save_palette_png(voc / "SegmentationClass" / f"{name}.png",
                        written[name])
    (voc / "ImageSets/Segmentation").mkdir(parents=True, exist_ok=True)
    (voc / f"ImageSets/Segmentation/{list_name}.txt").write_text(
        "\n".join(names) + "\n")
  if aug:
    aug_dir = voc / "SegmentationClassAug"
    for name in _AUG_ONLY:
      written[name] = image_and_ids(name)
      # SBD labels converted to grey-scale id maps, as the usual scripts do.
      _save(aug_dir / f"{name}.png",
            Image.fromarray(written[name].astype(np.uint8)))
    # An SBD version of a VOC train image, which must lose to VOC's own.
    _save(aug_dir / "2008_000002.png",
          Image.fromarray(np.zeros_like(written["2008_000002"], np.uint8)))
    # DeepLab's list format.
    aug_names = ["2008_000002"] + _AUG_ONLY
    (voc / "ImageSets/Segmentation/train_aug.txt").write_text("".join(
        f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n"
        for n in aug_names))
  return voc, written


@pytest.fixture(scope="module")
def voc_tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("voc_src")
  voc, written = _tiny_voc(root)
  builder = _prepare(voc2012.Voc2012Segmentation,
                     tmp_path_factory.mktemp("voc_data"), root)
  return voc, written, builder


def test_voc_constants():
  assert len(voc2012.CLASS_NAMES) == 21
  assert voc2012.CLASS_NAMES[0] == "background"
  assert voc2012.CLASS_NAMES[15] == "person"
  assert voc2012.CLASS_NAMES[20] == "tvmonitor"
  cmap = _voc_colormap()
  assert voc2012.PALETTE == tuple(tuple(int(v) for v in c) for c in cmap[:21])
  assert voc2012.VOID_COLOUR == tuple(int(v) for v in cmap[255])
  assert voc2012.IGNORE_LABEL == 255
  assert voc2012.NUM_CHANNELS == 3
  assert voc2012.Voc2012Segmentation.name == "voc2012_segmentation"


def test_voc_tiny_examples(voc_tiny):
  voc, written, builder = voc_tiny
  assert set(builder.info.splits) == {"train", "validation"}
  for split, list_name in [("train", "train"), ("validation", "val")]:
    source = builder.as_data_source(split=split)
    names = _VOC_LISTS[list_name]
    assert len(source) == len(names)
    for i, name in enumerate(names):  # Split-list order.
      example = source[i]
      assert _as_str(example["filename"]) == name
      np.testing.assert_array_equal(
          example["image"], _read(voc / "JPEGImages" / f"{name}.jpg"))
      np.testing.assert_array_equal(example["label"][..., 0], written[name])
      assert 255 in example["label"]


def test_voc_manual_dir_levels(voc_tiny):
  voc, _, _ = voc_tiny
  root = voc.parent.parent
  for manual_dir in (root, voc.parent, voc):
    assert voc2012.check_manual_dir(manual_dir) == voc
  assert voc2012.available_splits(voc) == ["train", "validation"]


def test_voc_train_aug(tmp_path):
  voc, written = _tiny_voc(tmp_path / "voc", aug=True)
  builder = _prepare(voc2012.Voc2012Segmentation, tmp_path / "data",
                     voc.parent)
  assert set(builder.info.splits) == {"train", "validation", "train_aug"}
  aug = builder.as_data_source(split="train_aug")
  assert len(aug) == 3
  assert [_as_str(aug[i]["filename"]) for i in range(3)] == (
      ["2008_000002"] + _AUG_ONLY)
  # VOC's own label (with its void border), not the SBD copy of zeros.
  np.testing.assert_array_equal(aug[0]["label"][..., 0],
                                written["2008_000002"])
  for i, name in enumerate(_AUG_ONLY, 1):
    np.testing.assert_array_equal(aug[i]["label"][..., 0], written[name])
    np.testing.assert_array_equal(
        aug[i]["image"], _read(voc / "JPEGImages" / f"{name}.jpg"))
  assert len(builder.as_data_source(split="train")) == 2

  # mmsegmentation's names-only trainaug.txt gives the same pairs.
  pairs = voc2012.list_examples(voc, "train_aug")
  (voc / "ImageSets/Segmentation/train_aug.txt").rename(
      voc / "ImageSets/Segmentation/trainaug.txt")
  (voc / "ImageSets/Segmentation/trainaug.txt").write_text(
      "\n".join(["2008_000002"] + _AUG_ONLY) + "\n")
  assert voc2012.list_examples(voc, "train_aug") == pairs
  assert pairs[1] == (voc / "JPEGImages/2011_000003.jpg",
                      voc / "SegmentationClassAug/2011_000003.png")


def test_voc_layout_errors(tmp_path):
  with pytest.raises(ValueError, match=r"--config\.dataset\.manual_dir="):
    voc2012.check_manual_dir(None)
  with pytest.raises(ValueError, match=r"--config\.dataset\.manual_dir="):
    voc2012.Voc2012Segmentation(
        data_dir=os.fspath(tmp_path / "d0"),
        file_format="array_record").download_and_prepare()
  with pytest.raises(ValueError, match="nowhere does not exist"):
    voc2012.check_manual_dir(tmp_path / "nowhere")

  empty = tmp_path / "tar_only"
  empty.mkdir()
  (empty / "VOCtrainval_11-May-2012.tar").write_bytes(b"")
  with pytest.raises(ValueError, match=(
      r"holds no VOC2012 folder .*It holds VOCtrainval_11-May-2012\.tar: "
      "extract it")):
    voc2012.check_manual_dir(empty)

  voc, _ = _tiny_voc(tmp_path / "no_val")
  (voc / "ImageSets/Segmentation/val.txt").unlink()
  with pytest.raises(ValueError, match=r"no ImageSets/Segmentation/val\.txt"):
    voc2012.check_manual_dir(voc)

  voc, _ = _tiny_voc(tmp_path / "no_labels")
  for path in (voc / "SegmentationClass").iterdir():
    path.unlink()
  (voc / "SegmentationClass").rmdir()
  with pytest.raises(ValueError, match="has no SegmentationClass/ folder"):
    voc2012.check_manual_dir(voc)

  voc, _ = _tiny_voc(tmp_path / "aug_no_list", aug=True)
  (voc / "ImageSets/Segmentation/train_aug.txt").unlink()
  with pytest.raises(ValueError, match="has SegmentationClassAug/ but no"):
    voc2012.check_manual_dir(voc)
  voc, _ = _tiny_voc(tmp_path / "list_no_aug", aug=True)
  (voc / "SegmentationClassAug").rename(voc / "elsewhere")
  with pytest.raises(ValueError, match="but no SegmentationClassAug/ folder"):
    voc2012.check_manual_dir(voc)


def test_voc_missing_file_named_in_list(tmp_path):
  voc, _ = _tiny_voc(tmp_path / "voc")
  (voc / "JPEGImages/2009_000001.jpg").unlink()
  with pytest.raises(ValueError, match=(
      r"val\.txt, line 2 \('2009_000001'\), names "
      r".*JPEGImages/2009_000001\.jpg, which does not exist")):
    _prepare(voc2012.Voc2012Segmentation, tmp_path / "d", voc)


def test_voc_bad_labels(tmp_path):
  voc, written = _tiny_voc(tmp_path / "bad_id")
  ids = written["2009_000001"].copy()
  ids[2, 2] = 21
  ids[3, 3] = 254
  _save_palette_png(voc / "SegmentationClass/2009_000001.png", ids)
  with pytest.raises(ValueError, match=(
      r"SegmentationClass/2009_000001\.png contains id 21 \(all unexpected "
      r"ids: \[21, 254\]\)")):
    _prepare(voc2012.Voc2012Segmentation, tmp_path / "d1", voc)

  # A label re-saved as colours has lost its ids.
  path = voc / "SegmentationClass/2007_000032.png"
  with Image.open(path) as img:
    img.convert("RGB").save(path)
  with pytest.raises(ValueError, match=r"2007_000032\.png has mode RGB"):
    voc2012.read_label(path)

  voc, written = _tiny_voc(tmp_path / "size")
  shape = written["2010_000005"].shape
  _save_palette_png(voc / "SegmentationClass/2010_000005.png",
                    np.zeros((shape[0] + 1, shape[1]), np.uint8))
  with pytest.raises(ValueError, match=(
      rf"label .*SegmentationClass/2010_000005\.png is "
      rf"\({shape[0] + 1}, {shape[1]}\) but its image "
      rf".*JPEGImages/2010_000005\.jpg is \({shape[0]}, {shape[1]}\)")):
    _prepare(voc2012.Voc2012Segmentation, tmp_path / "d2", voc)


def test_voc_train_aug_absent_names_the_fix(tmp_path):
  # Prepared without SegmentationClassAug/: asking for train_aug says why the split is absent and how to add it
  # (the registry's split hint, from voc2012.SPEC).
  voc, _ = _tiny_voc(tmp_path / "voc")
  with pytest.raises(ValueError, match=(
      r"Unknown split 'train_aug' .*available splits: \['train', 'validation'\]\. VOC 2012 has a train_aug split "
      r"only when the manual_dir held SegmentationClassAug/ and its list at prepare time")):
    datasets.data_source("voc2012", "train_aug", data_dir=tmp_path / "data", manual_dir=voc.parent)
