"""Tests for segjax.data.instance.features: tight boxes and the stored objects' round trip through PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from segjax.data.instance import features
from tests.data.instance.common import loop_box


def test_mask_box_is_the_tight_box():
  rng = np.random.default_rng(0)
  for _ in range(20):
    mask = rng.uniform(size=(7, 9)) < 0.1
    want = loop_box(mask) if mask.any() else [0, 0, 0, 0]
    assert features.mask_box(mask).tolist() == want
  one = np.zeros((5, 6), bool)
  one[2, 3] = True
  assert features.mask_box(one).tolist() == [3, 2, 4, 3]  # a single pixel spans [c, c + 1)


def test_objects_round_trip():
  masks = np.zeros((2, 6, 8), np.uint8)
  masks[0, 1:3, 2:5] = 1
  masks[1, 4:6, 0:8] = 1
  objects = features.encode_objects(masks, [2, 1], [False, True])
  # What tfds' data source returns: each PNG decoded to [H, W, 1], fields as lists.
  decoded = [np.asarray(Image.open(io.BytesIO(b)))[..., None] for b in objects["mask"]]
  raw = {"image": np.zeros((6, 8, 1), np.uint8), "image_id": 5, "filename": b"x",
         "objects": {"mask": decoded, "bbox": list(objects["bbox"]), "label": list(objects["label"]),
                     "is_crowd": list(objects["is_crowd"])}}
  inst = features.decode(raw)
  np.testing.assert_array_equal(inst.masks, masks)
  assert inst.boxes.tolist() == [[2, 1, 5, 3], [0, 4, 8, 6]]
  assert inst.classes.tolist() == [2, 1] and inst.crowd.tolist() == [False, True]
  assert inst.image.shape == (6, 8, 3) and inst.image_id == 5 and inst.filename == "x"
  empty = features.decode({"image": np.zeros((6, 8, 3), np.uint8), "image_id": 1, "filename": "e",
                           "objects": {"mask": [], "bbox": [], "label": [], "is_crowd": []}})
  assert empty.masks.shape == (0, 6, 8) and empty.boxes.shape == (0, 4) and empty.classes.shape == (0,)
