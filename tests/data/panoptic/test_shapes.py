"""Tests for segjax.data.panoptic.shapes: the generated panoptic dataset, checked against instance_shapes,
plain pixel counts and a prepared (array_record) copy read back without TensorFlow."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from segjax.data.panoptic import features
from segjax.data.panoptic import shapes as ps
from segjax.data.instance import shapes
from tests.conftest import as_str


class TinyPanopticShapes(ps.SegjaxPanopticShapes):
  """The same examples, a few per split (preparation well under a second)."""
  SPLIT_SIZES = {"train": 6, "validation": 4, "test": 3}


def _same(a, b):
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["panoptic"], b["panoptic"])
  assert a["segments"] == b["segments"]


def _digest(example) -> str:
  data = example["image"].tobytes() + example["panoptic"].tobytes() + repr(example["segments"]).encode()
  return hashlib.sha256(data).hexdigest()[:16]


def test_generation_is_deterministic_per_split_and_index():
  forward = [ps.generate_example("train", i) for i in range(4)]
  backward = [ps.generate_example("train", i) for i in reversed(range(4))]
  for a, b in zip(forward, backward[::-1]):
    _same(a, b)
  assert not np.array_equal(forward[0]["image"], forward[1]["image"])
  assert not np.array_equal(ps.generate_example("validation", 0)["image"], forward[0]["image"])
  # Digests recorded when the dataset was written: a change in numpy's streams, in float results across machines or
  # in instance_shapes shows up here (and then needs a new builder VERSION).
  assert _digest(forward[0]) == "5aeef417da6085cf"
  assert _digest(ps.generate_example("validation", 17)) == "90f340feceb35364"
  assert _digest(ps.generate_example("test", 99)) == "06bcd207b9d8cfc9"
  with pytest.raises(ValueError, match="Unknown split"):
    ps.generate_example("dev", 0)


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_things_are_instance_shapes_and_stuff_fills_the_rest(split):
  for i in range(25):
    ex, inst = ps.generate_example(split, i), shapes.generate_example(split, i)
    pan = ex["panoptic"]
    assert pan.shape == (128, 128) and ex["image"].shape == (128, 128, 3) and ex["image"].dtype == np.uint8
    things = [s for s in ex["segments"] if s["isthing"]]
    stuff = [s for s in ex["segments"] if not s["isthing"]]
    # Things: instance_shapes' visible masks, classes and order, ids 1..n; their pixels keep its image.
    assert len(things) == len(inst["classes"])
    for k, (seg, mask, cls) in enumerate(zip(things, inst["masks"], inst["classes"])):
      assert seg["id"] == k + 1 and seg["category_id"] == cls
      np.testing.assert_array_equal(pan == seg["id"], mask.astype(bool))
    covered = inst["masks"].astype(bool).any(0)
    np.testing.assert_array_equal(ex["image"][covered], inst["image"][covered])
    # Stuff: exactly the pixels no thing covers, except void slivers (< MIN_PIXELS of one stuff class).
    stuff_pixels = np.isin(pan, [s["id"] for s in stuff])
    assert not (stuff_pixels & covered).any()
    void = pan == 0
    np.testing.assert_array_equal(stuff_pixels | void, ~covered)
    assert 1 <= len(stuff) <= 3
    assert void.sum() < 2 * ps.MIN_PIXELS


def test_stuff_regions_follow_the_layout():
  # Re-derive the stuff class of every uncovered pixel from the seeded layout: each stuff segment is one class's
  # whole uncovered region; void pixels belong to a class left with fewer than MIN_PIXELS pixels.
  for i in range(20):
    ex, inst = ps.generate_example("train", i), shapes.generate_example("train", i)
    layout = ps.stuff_layout(np.random.default_rng((ps._SEED, 0, i)))  # pylint: disable=protected-access
    free = ~inst["masks"].astype(bool).any(0)
    present = set(np.unique(layout).tolist())
    assert ps.GROUND in present and 2 <= len(present) <= 3
    for seg in ex["segments"]:
      if not seg["isthing"]:
        np.testing.assert_array_equal(ex["panoptic"] == seg["id"], (layout == seg["category_id"]) & free)
    for cls in present - {s["category_id"] for s in ex["segments"]}:
      assert ((layout == cls) & free).sum() < ps.MIN_PIXELS


def test_segments_are_consistent():
  seen_classes, three_regions = set(), 0
  for i in range(60):
    ex = ps.generate_example("validation", i)
    pan, segments = ex["panoptic"], ex["segments"]
    ids = [s["id"] for s in segments]
    assert ids == list(range(1, len(segments) + 1))  # unique, consecutive
    assert set(np.unique(pan).tolist()) - {0} == set(ids)
    counts = np.bincount(pan.ravel(), minlength=len(ids) + 1)
    stuff_classes = [s["category_id"] for s in segments if not s["isthing"]]
    assert len(stuff_classes) == len(set(stuff_classes))  # one segment per stuff class
    three_regions += len(stuff_classes) == 3
    for s in segments:
      assert s["area"] == counts[s["id"]] > 0 and s["iscrowd"] is False
      assert 1 <= s["category_id"] <= 8 and s["isthing"] == ps.ISTHING[s["category_id"]]
      assert s["isthing"] == (s["category_id"] <= 5)
      seen_classes.add(s["category_id"])
  assert seen_classes == set(range(1, 9)) and three_regions >= 10
  assert ps.CLASS_NAMES == ("void", "disk", "square", "triangle", "ring", "cross", "sky", "ground", "wall")


def test_stuff_colours_differ_from_the_things():
  # Each stuff region's median colour is far from every thing's (the contrast rule, blurred by texture and noise).
  far = 0
  total = 0
  for i in range(20):
    ex = ps.generate_example("test", i)
    image = ex["image"].astype(np.float64)
    thing_colours = [np.median(image[ex["panoptic"] == s["id"]], 0) for s in ex["segments"] if s["isthing"]]
    for s in ex["segments"]:
      if not s["isthing"]:
        colour = np.median(image[ex["panoptic"] == s["id"]], 0)
        for t in thing_colours:
          total += 1
          far += np.sqrt(np.sum((colour - t) ** 2)) >= 40
  assert total > 0 and far >= 0.9 * total


def test_prepared_array_record_equals_generator(tmp_path):
  builder = ps.get_builder(tmp_path, builder_class=TinyPanopticShapes)
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  # A fresh builder object reads the prepared copy: metadata comes back from disk.
  fresh = TinyPanopticShapes(data_dir=str(tmp_path), file_format="array_record")
  assert fresh.is_prepared()
  cats = fresh.info.metadata["categories"]
  assert [c["name"] for c in cats] == list(ps.CLASS_NAMES[1:]) and [c["id"] for c in cats] == list(range(1, 9))
  assert [c["isthing"] for c in cats] == list(ps.ISTHING[1:])
  assert dict(fresh.info.metadata["max_objects"]) == {s: 6 for s in TinyPanopticShapes.SPLIT_SIZES}
  for split, size in TinyPanopticShapes.SPLIT_SIZES.items():
    source = fresh.as_data_source(split=split)
    assert len(source) == size
    for i in range(size):
      raw = source[i]
      assert as_str(raw["filename"]) == f"{split}_{i:06d}" and int(raw["image_id"]) == i
      decoded = features.decode(raw)
      image, panoptic, segments = decoded.image, decoded.panoptic, decoded.segments
      want = ps.generate_example(split, i)
      _same({"image": image, "panoptic": panoptic, "segments": segments}, want)
      assert panoptic.dtype == np.int32 and image.dtype == np.uint8
