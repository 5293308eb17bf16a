"""Tests of segjax.evaluation.panoptic_io: areas and boxes against a per-pixel loop, PNG colours decoded here with
COCO's formula, write -> read round trips, and the JSON's refusals."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
import pytest

from segjax.evaluation import panoptic_io as pio

CATEGORIES = [{"id": 1, "name": "cat", "isthing": True}, {"id": 7, "name": "sky", "isthing": False},
              {"id": 9, "name": "grass", "isthing": 0, "color": [1, 2, 3]}]


def _example():
  """A hand-built map: stuff 7 on top, stuff 9 below, two cats (one not a rectangle) and some void; ids large enough
  to need all three colour channels."""
  panoptic = np.zeros((12, 17), np.int32)
  panoptic[:6] = 70000
  panoptic[6:] = 300
  panoptic[2:5, 3:8] = 5
  panoptic[2, 3] = 0
  panoptic[7:11, 10:16] = 6
  panoptic[9, 13] = 300  # a stuff hole inside a thing
  panoptic[11, :2] = 0
  segments = [
      {"id": 5, "isthing": True, "score": 0.9, "category_id": 1, "instance_id": 0},
      {"id": 6, "isthing": True, "score": 0.75, "category_id": 1, "instance_id": 2},
      {"id": 8, "isthing": True, "score": 0.6, "category_id": 1, "instance_id": 1},  # covered entirely: no pixels
      {"id": 70000, "isthing": False, "category_id": 7, "area": 0},
      {"id": 300, "isthing": False, "category_id": 9, "area": 0},
  ]
  return panoptic, segments


def _brute_box(panoptic, seg_id):
  xs, ys, area = [], [], 0
  for y in range(panoptic.shape[0]):
    for x in range(panoptic.shape[1]):
      if panoptic[y, x] == seg_id:
        xs.append(x)
        ys.append(y)
        area += 1
  if not area:
    return 0, [0, 0, 0, 0]
  return area, [min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1]


def test_segment_info_area_and_bbox_match_a_pixel_loop():
  panoptic, segments = _example()
  rng = np.random.default_rng(0)
  random_map = rng.integers(0, 4, size=(9, 11))
  for pan, segs in ((panoptic, segments), (random_map, [{"id": i, "category_id": 1, "isthing": True}
                                                         for i in range(1, 4)])):
    for segment in segs:
      info = pio.segment_info(pan, segment)
      area, bbox = _brute_box(pan, segment["id"])
      assert info["area"] == area and info["bbox"] == bbox, segment
      assert info["id"] == segment["id"] and info["category_id"] == segment["category_id"] and info["iscrowd"] == 0
      assert all(type(v) is int for v in info["bbox"] + [info["area"], info["id"]])  # plain ints: JSON-ready
  assert pio.segment_info(panoptic, segments[0])["score"] == 0.9
  assert "score" not in pio.segment_info(panoptic, segments[3])


def test_write_prediction_png_decodes_to_the_ids_and_empty_segments_are_left_out(tmp_path):
  panoptic, segments = _example()
  annotation = pio.write_prediction(tmp_path / "pngs", "000042", 42, panoptic, segments)
  assert annotation["image_id"] == 42 and annotation["file_name"] == "000042.png"
  assert [s["id"] for s in annotation["segments_info"]] == [5, 6, 70000, 300]  # 8 has no pixels
  rgb = np.asarray(Image.open(tmp_path / "pngs" / "000042.png")).astype(np.int64)
  assert rgb.shape == (*panoptic.shape, 3)
  np.testing.assert_array_equal(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2], panoptic)
  assert not [p for p in (tmp_path / "pngs").iterdir() if p.name.endswith(".tmp")]


def test_write_prediction_refuses_unlisted_ids_repeated_ids_and_paths_as_stems(tmp_path):
  panoptic, segments = _example()
  with pytest.raises(ValueError, match=r"segment ids \[300\] that no segment lists"):
    pio.write_prediction(tmp_path, "a", 1, panoptic, segments[:-1])
  with pytest.raises(ValueError, match="unique"):
    pio.write_prediction(tmp_path, "a", 1, panoptic, segments + [segments[0]])
  for stem in ("../a", "sub/a", "", ".."):
    with pytest.raises(ValueError, match="plain file name"):
      pio.write_prediction(tmp_path, stem, 1, panoptic, segments)
  assert not list(tmp_path.iterdir())


def test_round_trip(tmp_path):
  panoptic, segments = _example()
  other = np.zeros((5, 4), np.int32)
  other[1:3, 1:3] = 2
  annotations = [pio.write_prediction(tmp_path / "pngs", "a", 3, panoptic, segments),
                 pio.write_prediction(tmp_path / "pngs", "b", 1, other, [{"id": 2, "isthing": False,
                                                                           "category_id": np.int64(9)}])]
  images = [{"id": 3, "file_name": "a.jpg", "height": 12, "width": 17}]
  path = pio.write_json(tmp_path / "panoptic.json", annotations, CATEGORIES, images)
  content = json.loads(path.read_text())
  assert content["categories"] == [{"id": 1, "name": "cat", "isthing": 1}, {"id": 7, "name": "sky", "isthing": 0},
                                   {"id": 9, "name": "grass", "isthing": 0}]
  assert content["images"] == images and content["annotations"] == annotations
  read = pio.read_prediction(tmp_path / "panoptic.json", tmp_path / "pngs")
  assert [r[0] for r in read] == [3, 1]
  for (_, pan, segs), expected, annotation in zip(read, (panoptic, other), annotations):
    assert pan.dtype == np.int32
    np.testing.assert_array_equal(pan, expected)
    assert segs == {s["id"]: s for s in annotation["segments_info"]}
  assert read[0][2][5]["score"] == 0.9 and read[0][2][5]["bbox"] == _brute_box(panoptic, 5)[1]


def test_write_json_refuses_to_overwrite_unless_asked(tmp_path):
  path = tmp_path / "out" / "panoptic.json"
  pio.write_json(path, [], CATEGORIES)
  with pytest.raises(FileExistsError, match=r"panoptic\.json exists already: pass overwrite=True"):
    pio.write_json(path, [{"image_id": 1, "file_name": "x.png", "segments_info": []}], CATEGORIES)
  assert json.loads(path.read_text())["annotations"] == []  # untouched
  pio.write_json(path, [{"image_id": 1, "file_name": "x.png", "segments_info": []}], CATEGORIES, overwrite=True)
  assert json.loads(path.read_text())["annotations"][0]["image_id"] == 1
  assert sorted(p.name for p in path.parent.iterdir()) == ["panoptic.json"]  # no temporary left


def test_write_json_refuses_repeated_images_and_unknown_categories(tmp_path):
  annotation = {"image_id": 4, "file_name": "x.png", "segments_info": [{"id": 1, "category_id": 2}]}
  with pytest.raises(ValueError, match=r"categories \[2\] missing"):
    pio.write_json(tmp_path / "a.json", [annotation], CATEGORIES)
  annotation["segments_info"][0]["category_id"] = 1
  with pytest.raises(ValueError, match=r"image ids \[4\]"):
    pio.write_json(tmp_path / "a.json", [annotation, annotation], CATEGORIES)
  assert not list(tmp_path.iterdir())
