"""Tests for the LFW Part Labels builder (segjax.data.lfw_parts).

A tiny dataset is written in the real on-disk layout; the prepared examples
are checked against what the test wrote: the label ids it chose (through the
colours it painted) and the images as PIL decodes the JPEG files.
"""

import os
import pathlib

import numpy as np
from PIL import Image
import pytest

from segjax.data import lfw_parts
from tests.conftest import as_str as _as_str, prepare_builder, read_image as _read, save_image as _save

_prepare = prepare_builder

# The convention of the Part Labels ground truth (Kae et al. 2013, Fig. 1).
_HAIR, _SKIN, _BACKGROUND = (255, 0, 0), (0, 255, 0), (0, 0, 255)
_LFW_LISTS = {
    "parts_train.txt": [("Aaron_Peirsol", 1), ("George_W_Bush", 10),
                        ("Aaron_Peirsol", 3)],
    "parts_validation.txt": [("Mary_Jo_Myers", 2), ("Zico", 1)],
    "parts_test.txt": [("George_W_Bush", 123), ("Zico", 4)],
}
_LFW_SPLITS = {"train": "parts_train.txt",
               "validation": "parts_validation.txt",
               "test": "parts_test.txt"}


def _tiny_lfw(root: pathlib.Path, images_dir="lfw_funneled",
              labels_dir="parts_lfw_funneled_gt_images"):
  """Writes a tiny Part Labels set; returns {stem: class ids written}."""
  rng = np.random.default_rng(3)
  class_ids = {"background": 0, "hair": 1, "skin": 2}
  colours = np.zeros((3, 3), np.int32)
  for name, colour in [("hair", _HAIR), ("skin", _SKIN),
                       ("background", _BACKGROUND)]:
    colours[class_ids[name]] = colour
  written = {}
  for list_name, entries in _LFW_LISTS.items():
    lines = []
    for person, number in entries:
      lines.append(f"{person} {number}\n")
      stem = f"{person}_{number:04d}"
      shape = (8 + number % 3, 10)
      _save(root / images_dir / person / f"{stem}.jpg",
            Image.fromarray(rng.integers(0, 256, shape + (3,), np.uint8)))
      ids = rng.integers(0, 3, shape)
      # Small colour errors, as a lossy re-encode would leave: the painted
      # channel stays clearly dominant.
      noise = rng.integers(0, 40, shape + (3,))
      painted = colours[ids]
      painted = np.where(painted == 255, painted - noise, painted + noise)
      _save(root / labels_dir / f"{stem}.ppm",
            Image.fromarray(painted.astype(np.uint8)))
      written[stem] = ids
    (root / list_name).write_text("".join(lines))
  return written


@pytest.fixture(scope="module")
def lfw_tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("lfw_src")
  written = _tiny_lfw(root)
  builder = _prepare(lfw_parts.LfwParts, tmp_path_factory.mktemp("lfw_data"),
                     root)
  return root, written, builder


def test_lfw_constants():
  assert lfw_parts.CLASS_NAMES == ("background", "hair", "skin")
  assert lfw_parts.PALETTE == (_BACKGROUND, _HAIR, _SKIN)
  assert lfw_parts.IGNORE_LABEL is None
  assert lfw_parts.NUM_CHANNELS == 3
  assert lfw_parts.LfwParts.name == "lfw_parts"


def test_lfw_tiny_examples(lfw_tiny):
  root, written, builder = lfw_tiny
  assert set(builder.info.splits) == {"train", "validation", "test"}
  for split, list_name in _LFW_SPLITS.items():
    source = builder.as_data_source(split=split)
    entries = _LFW_LISTS[list_name]
    assert len(source) == len(entries)
    for i, (person, number) in enumerate(entries):  # Split-list order.
      example = source[i]
      stem = f"{person}_{number:04d}"
      assert _as_str(example["filename"]) == stem
      assert example["image"].dtype == np.uint8
      np.testing.assert_array_equal(
          example["image"],
          _read(root / "lfw_funneled" / person / f"{stem}.jpg"))
      assert example["label"].shape == written[stem].shape + (1,)
      np.testing.assert_array_equal(example["label"][..., 0], written[stem])


def test_lfw_nested_archive_folders(tmp_path):
  # Archive tools that extract into a folder named after the archive.
  root = tmp_path / "lfw"
  written = _tiny_lfw(
      root, images_dir="lfw-funneled/lfw_funneled",
      labels_dir="parts_lfw_funneled_gt_images/parts_lfw_funneled_gt_images")
  builder = _prepare(lfw_parts.LfwParts, tmp_path / "data", root)
  test = builder.as_data_source(split="test")
  assert len(test) == 2
  assert _as_str(test[0]["filename"]) == "George_W_Bush_0123"
  np.testing.assert_array_equal(test[0]["label"][..., 0],
                                written["George_W_Bush_0123"])


def test_lfw_layout_errors(tmp_path):
  with pytest.raises(ValueError, match=r"--config\.dataset\.manual_dir="):
    lfw_parts.check_manual_dir(None)
  with pytest.raises(ValueError, match=r"--config\.dataset\.manual_dir="):
    lfw_parts.LfwParts(data_dir=os.fspath(tmp_path / "d0"),
                       file_format="array_record").download_and_prepare()
  with pytest.raises(ValueError, match="nowhere does not exist"):
    lfw_parts.check_manual_dir(tmp_path / "nowhere")

  root = tmp_path / "lfw"
  _tiny_lfw(root)
  assert lfw_parts.check_manual_dir(root) == root
  (root / "parts_test.txt").unlink()
  with pytest.raises(ValueError, match=r"no split list parts_test\.txt"):
    lfw_parts.check_manual_dir(root)

  root = tmp_path / "unextracted"
  _tiny_lfw(root, labels_dir="elsewhere")
  (root / "parts_lfw_funneled_gt_images.tgz").write_bytes(b"")
  with pytest.raises(ValueError, match=(
      r"no parts_lfw_funneled_gt_images/ folder\. It holds "
      r"parts_lfw_funneled_gt_images\.tgz: extract it")):
    lfw_parts.check_manual_dir(root)


def test_lfw_missing_file_named_in_list(tmp_path):
  root = tmp_path / "lfw"
  _tiny_lfw(root)
  (root / "lfw_funneled/Zico/Zico_0001.jpg").unlink()
  with pytest.raises(ValueError, match=(
      r"parts_validation\.txt, line 2 \('Zico 1'\), names "
      r".*lfw_funneled/Zico/Zico_0001\.jpg, which does not exist")):
    _prepare(lfw_parts.LfwParts, tmp_path / "d1", root)

  root = tmp_path / "lfw2"
  _tiny_lfw(root)
  (root / "parts_lfw_funneled_gt_images/George_W_Bush_0010.ppm").unlink()
  with pytest.raises(ValueError, match=(
      r"parts_train\.txt, line 2 .*George_W_Bush_0010\.ppm, which does not "
      "exist")):
    lfw_parts.list_pairs(root, "train")

  (root / "parts_test.txt").write_text("George_W_Bush 123\nZico_4\n")
  with pytest.raises(ValueError, match=r"parts_test\.txt, line 2: expected"):
    lfw_parts.list_pairs(root, "test")


def test_lfw_bad_colour_and_size(tmp_path):
  root = tmp_path / "lfw"
  _tiny_lfw(root)
  label_path = root / "parts_lfw_funneled_gt_images/Zico_0004.ppm"
  colours = _read(label_path).copy()
  colours[2, 3] = (120, 120, 0)  # Red and green tie: no dominant channel.
  _save(label_path, Image.fromarray(colours))
  with pytest.raises(ValueError, match=(
      r"Zico_0004\.ppm has 1 pixels without a dominant colour channel, e\.g\. "
      r"RGB \(120, 120, 0\) at row 2, column 3")):
    _prepare(lfw_parts.LfwParts, tmp_path / "d1", root)

  root = tmp_path / "lfw2"
  _tiny_lfw(root)
  _save(root / "parts_lfw_funneled_gt_images/Zico_0004.ppm",
        Image.fromarray(np.full((5, 5, 3), _BACKGROUND, np.uint8)))
  with pytest.raises(ValueError, match=(
      r"label .*Zico_0004\.ppm is \(5, 5\) but its image "
      r".*lfw_funneled/Zico/Zico_0004\.jpg is \(9, 10\)")):
    _prepare(lfw_parts.LfwParts, tmp_path / "d2", root)


def test_lfw_decode_label_by_dominant_channel():
  colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                      [[200, 100, 30], [90, 250, 120], [0, 0, 0]]], np.uint8)
  with pytest.raises(ValueError, match=r"RGB \(0, 0, 0\) at row 1, column 2"):
    lfw_parts.decode_label(colours, "x.ppm")
  np.testing.assert_array_equal(
      lfw_parts.decode_label(colours[:, :2], "x.ppm"), [[1, 2], [1, 2]])
