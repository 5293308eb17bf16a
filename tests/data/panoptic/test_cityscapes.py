"""Tests for segjax.data.panoptic.cityscapes: tiny Cityscapes trees written here (16-bit and 8-bit instance-id maps),
prepared, read back without TensorFlow and compared with a per-pixel loop conversion written here from
cityscapesscripts' createPanopticImgs.py; every bad input refused before anything is written."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segjax.data.panoptic import cityscapes
from segjax.data.panoptic import features
from segjax.data.panoptic import registry
from tests.conftest import read_image

H, W = 16, 24
# From cityscapesscripts' labels.py: label id -> (name, hasInstances, ignoreInEval), the labels these maps use.
TABLE = {0: ("unlabeled", False, True), 1: ("ego vehicle", False, True), 7: ("road", False, False),
         9: ("parking", False, True), 11: ("building", False, False), 23: ("sky", False, False),
         24: ("person", True, False), 26: ("car", True, False), 29: ("caravan", True, True),
         33: ("bicycle", True, False)}


def maps():
  """{(split, city, stem): int [H, W] values}: things, a crowd, void labels; one map without things (8-bit)."""
  a = np.full((H, W), 7)
  a[:5] = 23
  a[5:8] = 11
  a[8:12, 1:5] = 24000  # person 0
  a[9:14, 6:9] = 24001  # person 1
  a[10:16, 12:20] = 26  # a crowd of cars
  a[11:13, 20:23] = 26003  # car 3
  a[14:16, 0:3] = 29000  # a caravan: void
  a[15, 3:12] = 1  # ego vehicle: void
  a[0, :] = 0  # unlabeled: void
  b = np.full((H, W), 23)
  b[6:] = 7
  b[12:, 10:] = 9  # parking: void
  c = np.full((H, W), 11)
  c[4:10, 4:12] = 33000
  return {("train", "aachen", "aachen_000000_000019"): a, ("train", "bonn", "bonn_000001_000019"): b,
          ("val", "frankfurt", "frankfurt_000000_000294"): c}


def loop_convert(values):
  """createPanopticImgs.py one pixel at a time: (segment ids, {id: (category, isthing, iscrowd, area)})."""
  ids = np.zeros(values.shape, np.int64)
  segments = {}
  for y in range(values.shape[0]):
    for x in range(values.shape[1]):
      v = int(values[y, x])
      label, crowd = (v, True) if v < 1000 else (v // 1000, False)
      _, things, ignored = TABLE[label]
      if ignored:
        continue
      ids[y, x] = v
      cat, isthing, iscrowd, area = segments.get(v, (label, things, crowd and things, 0))
      segments[v] = (cat, isthing, iscrowd, area + 1)
  return ids, segments


def write_tree(root, values=None, skip=()):
  """Cityscapes' layout under root (leftImg8bit/, gtFine/): random images, 16-bit maps (8-bit for bonn)."""
  rng = np.random.default_rng(0)
  values = maps() if values is None else values
  for (split, city, stem), v in values.items():
    image = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
    ids = root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png"
    for path in (image, ids):
      path.parent.mkdir(parents=True, exist_ok=True)
    if "image" not in skip:
      Image.fromarray(rng.integers(0, 256, (H, W, 3), np.uint8)).save(image)
    if "ids" not in skip:
      Image.fromarray(v.astype(np.uint8 if city == "bonn" else np.uint16)).save(ids)
  return root


def test_prepared_examples_match_a_per_pixel_conversion(tmp_path):
  root = write_tree(tmp_path / "cs")
  assert Image.open(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_instanceIds.png").mode.startswith("I")
  kw = dict(manual_dir=root, data_dir=tmp_path / "tfds")
  spec = registry.get_spec("cityscapes", **kw)
  assert sorted(spec.splits) == ["train", "validation"]
  assert spec.thing_ids == (24, 25, 26, 27, 28, 31, 32, 33)
  assert spec.stuff_ids == (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23)
  assert spec.class_names[1:] == ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
  assert dict(spec.max_objects) == {"train": 4, "validation": 1}  # aachen: 2 persons, a crowd, a car
  written = maps()
  for split, layout in (("train", "train"), ("validation", "val")):
    source = registry.data_source("cityscapes", split, **kw)
    keys = sorted(k for k in written if k[0] == layout)  # stems sorted: aachen before bonn
    assert len(source) == len(keys)
    for i, (_, city, stem) in enumerate(keys):
      ex = features.decode(source[i])
      ids, expected = loop_convert(written[(layout, city, stem)])
      np.testing.assert_array_equal(ex.panoptic, ids)
      assert {s["id"]: (s["category_id"], s["isthing"], s["iscrowd"], s["area"]) for s in ex.segments} == expected
      assert [s["id"] for s in ex.segments] == sorted(expected)
      assert ex.filename == stem and ex.image_id == i
      np.testing.assert_array_equal(ex.image, read_image(root / "leftImg8bit" / layout / city /
                                                         f"{stem}_leftImg8bit.png"))
  crowd = [s for s in features.decode(registry.data_source("cityscapes", "train", **kw)[0]).segments if s["iscrowd"]]
  assert [(s["id"], s["category_id"], s["isthing"]) for s in crowd] == [(26, 26, True)]
  # Prepared once; an edited map prepares afresh.
  assert registry.make_builder("cityscapes", **kw).is_prepared()
  Image.fromarray(np.full((H, W), 7, np.uint16)).save(
      root / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_instanceIds.png")
  assert not registry.make_builder("cityscapes", **kw).is_prepared()


def test_splits_option_pairs_by_stem(tmp_path):
  root = write_tree(tmp_path / "cs")
  splits = {"train": (root / "leftImg8bit" / "train", root / "gtFine" / "train")}
  source = registry.data_source("cityscapes", "train", splits=splits, data_dir=tmp_path / "tfds")
  assert [features.decode(source[i]).filename for i in range(len(source))] == [
      "aachen_000000_000019", "bonn_000001_000019"]
  with pytest.raises(ValueError, match="needs its files"):
    registry.make_builder("cityscapes")
  with pytest.raises(ValueError, match="neither leftImg8bit/train with gtFine/train"):
    registry.make_builder("cityscapes", manual_dir=tmp_path)
  with pytest.raises(ValueError, match="instance-id maps folder .*nowhere does not exist"):
    registry.make_builder("cityscapes", splits={"train": (root, tmp_path / "nowhere")})


def _prepare_fails(tmp_path, root, match):
  builder = registry.make_builder("cityscapes", manual_dir=root, data_dir=tmp_path / "tfds")
  with pytest.raises(ValueError, match=match) as e:
    builder.download_and_prepare()
  assert "nothing was prepared" in str(e.value).lower()
  assert not builder.is_prepared()
  assert not list((tmp_path / "tfds").rglob("*.array_record*"))  # nothing written
  return str(e.value)


def test_unpaired_files_are_listed_in_one_error(tmp_path):
  root = write_tree(tmp_path / "cs")
  (root / "gtFine/train/bonn/bonn_000001_000019_gtFine_instanceIds.png").unlink()
  (root / "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png").unlink()
  msg = _prepare_fails(tmp_path, root, "Cityscapes data: 2 problems, nothing was prepared")
  assert ("bonn_000001_000019_leftImg8bit.png has no instance-id map bonn_000001_000019_gtFine_instanceIds.png under "
          in msg and "add it, or remove the image" in msg)
  assert "frankfurt_000000_000294_gtFine_instanceIds.png has no image frankfurt_000000_000294_leftImg8bit.png" in msg


@pytest.mark.parametrize("value,message", [
    (7001, r"value 7001 in 4 pixels is instance 1 of label 7 \(road\), which is not a thing class \(hasInstances "
     r"False\): write 7 for that stuff region"),
    (40, r"value 40 in 4 pixels is not a Cityscapes label id \(0..33, .*\): re-export the map with Cityscapes' label "
     r"ids, or set those pixels to 0"),
    (50002, r"value 50002 \(label 50, instance 2\) in 4 pixels is not a Cityscapes label id"),
])
def test_bad_values_name_the_map_the_value_and_the_fix(tmp_path, value, message):
  values = maps()
  values[("val", "frankfurt", "frankfurt_000000_000294")][:2, :2] = value
  root = write_tree(tmp_path / "cs", values)
  msg = _prepare_fails(tmp_path, root, message)
  assert "instance-id map " + str(root / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_instanceIds.png") in msg


def test_size_mismatch_and_colour_maps(tmp_path):
  root = write_tree(tmp_path / "cs")
  ids = root / "gtFine/train/bonn/bonn_000001_000019_gtFine_instanceIds.png"
  Image.fromarray(np.full((H + 2, W), 7, np.uint16)).save(ids)
  _prepare_fails(tmp_path, root, r"instance-id map .*bonn_000001_000019_gtFine_instanceIds.png is 18x24 \(height x "
                 r"width\) but its image .*bonn_000001_000019_leftImg8bit.png is 16x24: pair the image with its "
                 "own map")
  Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(ids)
  _prepare_fails(tmp_path, root, r"bonn_000001_000019_gtFine_instanceIds.png is PIL mode RGB, not a one-channel "
                 "integer PNG")


def test_convert_matches_the_loop_on_random_values():
  rng = np.random.default_rng(1)
  choices = np.array([0, 1, 7, 9, 11, 23, 24, 26, 29, 33, 24000, 24001, 26005, 29000, 33010])
  for _ in range(5):
    values = rng.choice(choices, size=(H, W))
    ids, segments, problems = cityscapes.convert(values)
    expected_ids, expected = loop_convert(values)
    assert not problems
    np.testing.assert_array_equal(ids, expected_ids)
    assert {s["id"]: (s["category_id"], s["isthing"], s["iscrowd"], s["area"]) for s in segments} == expected
