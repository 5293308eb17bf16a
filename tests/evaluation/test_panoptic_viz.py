"""Tests of segjax.evaluation.panoptic_viz: overlay pixels against blends and borders computed here (a per-pixel
4-neighbour loop), thing colours distinct, and the panel's layout."""

from __future__ import annotations

import numpy as np
import pytest

from segjax import viz
from segjax.evaluation import panoptic_viz as pv

COLOURS = {1: (220, 20, 60), 2: (255, 255, 255), 7: (70, 130, 180), 9: (107, 142, 35)}
NAMES = {1: "person", 2: "ghost", 7: "sky", 9: "grass"}


def _example():
  """Stuff 7 on top, stuff 9 below with a void band, two things of category 1 touching each other, one of category 2
  at the image's edge (white: jitter must not clip), a crowd region, and an id no segment lists."""
  panoptic = np.zeros((20, 24), np.int32)
  panoptic[:8] = 3
  panoptic[8:] = 4
  panoptic[12:14] = 0
  panoptic[2:7, 2:9] = 1
  panoptic[3, 2] = 3  # not a rectangle
  panoptic[2:7, 9:14] = 2  # touches segment 1
  panoptic[15:20, 18:24] = 5
  panoptic[15:18, 2:6] = 6
  panoptic[0, 20:22] = 99
  segments = [
      {"id": 1, "isthing": True, "score": 0.9, "category_id": 1, "instance_id": 0},
      {"id": 2, "isthing": True, "score": 0.8, "category_id": 1, "instance_id": 1},
      {"id": 3, "isthing": False, "category_id": 7, "area": 0},
      {"id": 4, "isthing": False, "category_id": 9, "area": 0},
      {"id": 5, "isthing": True, "score": 0.7, "category_id": 2, "instance_id": 2},
      {"id": 6, "isthing": True, "iscrowd": True, "category_id": 1},
  ]
  image = np.random.default_rng(0).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
  return image, panoptic, segments


def _blend(pixel, colour, alpha):
  return np.round((1 - alpha) * np.asarray(pixel, np.float64) + alpha * np.asarray(colour, np.float64))


def _brute_border(panoptic, seg_id):
  """Pixels of seg_id with a 4-neighbour outside the image or of another id."""
  h, w = panoptic.shape
  out = set()
  for y in range(h):
    for x in range(w):
      if panoptic[y, x] != seg_id:
        continue
      for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = y + dy, x + dx
        if not (0 <= ny < h and 0 <= nx < w) or panoptic[ny, nx] != seg_id:
          out.add((y, x))
  return out


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_overlay_pixels(alpha):
  image, panoptic, segments = _example()
  out = pv.overlay(image, panoptic, segments, COLOURS, alpha=alpha)
  assert out.dtype == np.uint8 and out.shape == image.shape
  colours = pv.segment_colours(segments, COLOURS)
  untouched = (panoptic == 0) | (panoptic == 99)  # void, and an id no segment lists
  np.testing.assert_array_equal(out[untouched], image[untouched])
  for seg_id, category in ((3, 7), (4, 9), (6, 1)):  # stuff and crowd: the category's colour, no outline
    assert colours[seg_id] == COLOURS[category]
    mask = panoptic == seg_id
    np.testing.assert_array_equal(out[mask], _blend(image[mask], COLOURS[category], alpha))
  for seg_id in (1, 2, 5):
    border = _brute_border(panoptic, seg_id)
    for y, x in zip(*np.nonzero(panoptic == seg_id)):
      expected = colours[seg_id] if (y, x) in border else _blend(image[y, x], colours[seg_id], alpha)
      np.testing.assert_array_equal(out[y, x], expected, err_msg=f"segment {seg_id} at {(y, x)}")


def test_thing_colours_distinct_deterministic_and_near_their_category():
  image, panoptic, segments = _example()
  colours = pv.segment_colours(segments, COLOURS)
  assert colours[1] != colours[2]
  assert len({colours[i] for i in (1, 2, 5)}) == 3
  for seg_id, category in ((1, 1), (2, 1), (5, 2)):
    assert colours[seg_id] != COLOURS[category]
    assert np.linalg.norm(np.subtract(colours[seg_id], COLOURS[category])) <= 66  # jittered, not replaced
  assert pv.segment_colours(segments[::-1], COLOURS) == colours  # the list's order does not matter
  out = pv.overlay(image, panoptic, segments, COLOURS)
  assert tuple(out[2, 5]) == colours[1] and tuple(out[2, 10]) == colours[2]  # top edges: outline pixels
  # Many things of one white category (clipping would merge them) stay distinct.
  many = [{"id": i, "isthing": True, "category_id": 2} for i in range(1, 200)]
  assert len(set(pv.segment_colours(many, COLOURS).values())) == 199


def test_overlay_labels_and_errors():
  image, panoptic, segments = _example()
  plain = pv.overlay(image, panoptic, segments, COLOURS)
  labelled = pv.overlay(image, panoptic, segments, COLOURS, names=NAMES)
  assert labelled.shape == plain.shape and (labelled != plain).any()
  with pytest.raises(ValueError, match=r"no colour for categories \[9\]"):
    pv.overlay(image, panoptic, segments, {k: v for k, v in COLOURS.items() if k != 9})
  with pytest.raises(ValueError, match="same"):
    pv.overlay(image, panoptic[:, :-1], segments, COLOURS)


def test_grey_image_and_empty_segments():
  image, panoptic, _ = _example()
  grey = image[..., 0]
  out = pv.overlay(grey, panoptic, [], COLOURS)
  np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=-1))


def test_panel_layout():
  image, panoptic, segments = _example()
  pred = np.where(panoptic == 2, 1, panoptic)
  pred_segments = [s for s in segments if s["id"] != 2]
  out = pv.panel(image, panoptic, segments, pred, pred_segments, COLOURS, names=NAMES)
  h, w = panoptic.shape
  assert out.shape == (h, 2 * w + viz.SEPARATOR, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[:, :w], pv.overlay(image, panoptic, segments, COLOURS, names=NAMES))
  np.testing.assert_array_equal(out[:, w:w + viz.SEPARATOR], 255)
  np.testing.assert_array_equal(out[:, w + viz.SEPARATOR:], pv.overlay(image, pred, pred_segments, COLOURS,
                                                                       names=NAMES))
