"""Tests for segjax.data.panoptic.pipeline: the semantic targets and the thing instances of a panoptic map against
per-pixel loops, resizing and padding, the training transform on a prepared panoptic_shapes copy."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from segjax.data.panoptic import features, pipeline, registry
from segjax.data.panoptic.registry import IGNORE, Category, PanopticSpec

# Sparse ids as COCO's: things 3 and 10, stuff 7 and 20.
SPEC = PanopticSpec(name="hand", tfds_name="hand", splits=("train",), max_objects={"train": 4},
                    categories=(Category(3, "person", True), Category(7, "sky", False), Category(10, "car", True),
                                Category(20, "road", False)))


def _example():
  pan = np.zeros((6, 8), np.int32)
  pan[:2] = 300  # sky
  pan[4:] = 70000  # road (an id past 65535: the RGB encoding's blue channel)
  pan[2:4, 0:3] = 5  # person
  pan[2:4, 3:5] = 6  # car
  pan[2:4, 5:7] = 9  # a crowd of cars
  # pixel (2..3, 7) stays void
  segments = [{"id": 5, "category_id": 3, "isthing": True, "iscrowd": False, "area": 6},
              {"id": 300, "category_id": 7, "isthing": False, "iscrowd": False, "area": 16},
              {"id": 6, "category_id": 10, "isthing": True, "iscrowd": False, "area": 4},
              {"id": 9, "category_id": 10, "isthing": True, "iscrowd": True, "area": 4},
              {"id": 70000, "category_id": 20, "isthing": False, "iscrowd": False, "area": 16}]
  image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
  return features.Panoptic(image=image, panoptic=pan, segments=segments, image_id=4, filename="hand_4")


def test_semantic_target_is_the_per_pixel_rule():
  ex = _example()
  got = pipeline.semantic_target(ex, SPEC)
  by_id = ex.segments_by_id
  for (y, x), sid in np.ndenumerate(ex.panoptic):
    if sid == 0:
      want = IGNORE
    elif by_id[sid]["isthing"]:
      want = 0  # every thing, crowd included
    else:
      want = 1 + SPEC.stuff_ids.index(by_id[sid]["category_id"])
    assert got[y, x] == want, (y, x)
  assert SPEC.semantic_names == ("things", "sky", "road") and SPEC.class_names == ("background", "person", "car")


def test_thing_instances_in_stored_order_with_contiguous_classes():
  inst = pipeline.to_instances(_example(), SPEC)
  assert inst.classes.tolist() == [1, 2, 2] and inst.crowd.tolist() == [False, False, True]
  for mask, sid in zip(inst.masks, (5, 6, 9)):
    np.testing.assert_array_equal(mask, (_example().panoptic == sid).astype(np.uint8))
  np.testing.assert_array_equal(inst.boxes, [[0, 2, 3, 4], [3, 2, 5, 4], [5, 2, 7, 4]])


def test_fields_resize_and_pad_with_ignore():
  ex = _example()
  fields = pipeline.to_fields(ex, SPEC, (12, 32), max_instances=4)
  # 6x8 fits 12x32 at scale 2: 12x16, then padding.
  assert fields["image_size"].tolist() == [12, 16] and fields["sem_seg"].shape == (12, 32)
  sem = pipeline.semantic_target(ex, SPEC)
  np.testing.assert_array_equal(fields["sem_seg"][:, :16], np.repeat(np.repeat(sem, 2, 0), 2, 1))
  assert (fields["sem_seg"][:, 16:] == IGNORE).all()
  np.testing.assert_array_equal(fields["masks"][0, :, :16], np.repeat(np.repeat(ex.panoptic == 5, 2, 0), 2, 1))
  assert fields["valid"].tolist() == [1, 1, 1, 0] and fields["crowd"].tolist() == [0, 0, 1, 0]
  with pytest.raises(ValueError, match="max_instances"):
    pipeline.to_fields(ex, SPEC, (12, 32), max_instances=2)


def test_eval_example_pads_or_fits_and_refuses_a_larger_image():
  raw = features.encode(_example().image, _example().panoptic, _example().segments, 4, "hand_4")
  decoded = {**raw, "image": _png(raw["image"]), "panoptic": _png(raw["panoptic"])}
  example, padding = pipeline.eval_functions(SPEC, (32, 32), fit=False)
  out = example(decoded, 3)
  assert out["image_size"].tolist() == [6, 8] and out["example_index"] == 3 and out["image_id"] == 4
  np.testing.assert_array_equal(out["image"][:6, :8], _example().image)
  assert padding()["example_index"] == -1 and padding()["image"].shape == (32, 32, 3)
  fit, _ = pipeline.eval_functions(SPEC, (32, 32), fit=True)
  assert fit(decoded, 0)["image_size"].tolist() == [24, 32]
  small, _ = pipeline.eval_functions(SPEC, (4, 4), fit=False)
  with pytest.raises(ValueError, match="hand_4.*eval_size"):
    small(decoded, 0)


def _png(data: bytes) -> np.ndarray:
  """Stored PNG bytes decoded as tfds' numpy decoder gives them."""
  return np.asarray(Image.open(io.BytesIO(data)))


def test_train_transform_on_panoptic_shapes(panoptic_data_dir):
  spec = registry.get_spec(registry.SHAPES, data_dir=panoptic_data_dir)
  source = registry.data_source(registry.SHAPES, "train[:3]", data_dir=panoptic_data_dir)
  transform = pipeline.TrainTransform(spec, (128, 128), 8)
  for i in range(3):
    out = transform.random_map(source[i], np.random.default_rng(0))
    ex = features.decode(source[i])
    assert set(out) == set(pipeline.TRAIN_KEYS)
    np.testing.assert_array_equal(out["sem_seg"], pipeline.semantic_target(ex, spec))
    things = [s for s in ex.segments if s["isthing"]]
    assert out["valid"].sum() == len(things)
