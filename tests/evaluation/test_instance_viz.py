"""Tests of segjax.evaluation.instance_viz: the id map against a per-pixel loop, the overlay's pixels against masks,
outlines and box perimeters computed here, and the PNG files read back."""

import numpy as np
from PIL import Image
import pytest

from segjax.evaluation import instance_viz as iv

NAMES = ["cat", "dog", "bus"]


def _detections(seed, d=9, size=(30, 40)):
  rng = np.random.default_rng(seed)
  masks = np.zeros((d, *size), np.uint8)
  boxes = np.zeros((d, 4), np.float32)
  for j in range(d):
    y, x = rng.integers(0, size[0] - 5), rng.integers(0, size[1] - 5)
    h, w = rng.integers(3, 14, size=2)
    masks[j, y:y + h, x:x + w] = 1
    masks[j, y, x] = 0  # not a plain rectangle
    boxes[j] = [x, y, min(x + w, size[1]), min(y + h, size[0])]
  scores = np.round(rng.uniform(0.2, 1, d), 1).astype(np.float32)  # rounded: ties
  scores[:2] = scores[2]
  valid = rng.random(d) < 0.85
  return masks, boxes, scores, rng.integers(1, 4, d), valid


def _expected_ids(masks, scores, valid, threshold):
  """Per pixel: the rank among kept detections of the best-scoring mask on it (ties: lower index), 0 for none."""
  kept = [j for j in range(len(scores)) if valid[j] and scores[j] >= threshold]
  rank = {j: 1 + sum(1 for k in kept if (scores[k], -k) > (scores[j], -j)) for j in kept}
  ids = np.zeros(masks.shape[1:], np.int64)
  for y in range(masks.shape[1]):
    for x in range(masks.shape[2]):
      on = [j for j in kept if masks[j, y, x]]
      if on:
        ids[y, x] = rank[min(on, key=lambda j: (-scores[j], j))]
  return ids, rank


@pytest.mark.parametrize("seed,threshold", [(0, 0.5), (1, 0.0), (2, 0.7)])
def test_instance_ids_match_a_pixel_loop(seed, threshold):
  masks, boxes, scores, classes, valid = _detections(seed)
  ids, entries = iv.instance_ids(masks, scores, classes, boxes=boxes, valid=valid, class_names=NAMES,
                                 score_threshold=threshold)
  expected, rank = _expected_ids(masks, scores, valid, threshold)
  assert ids.dtype == np.uint8 and ids.max() > 1
  np.testing.assert_array_equal(ids, expected)
  assert [e["id"] for e in entries] == list(range(1, len(rank) + 1))
  for e in entries:
    j = e["index"]
    assert rank[j] == e["id"] and e["class_id"] == classes[j] and e["name"] == NAMES[classes[j] - 1]
    assert e["score"] == float(scores[j]) and e["box"] == boxes[j].tolist()
    assert e["pixels"] == int((expected == e["id"]).sum())
  assert all(a["score"] >= b["score"] for a, b in zip(entries, entries[1:]))


def test_many_instances_give_uint16_and_the_pngs_read_back(tmp_path):
  masks = np.zeros((300, 20, 15), bool)
  masks[np.arange(300), np.arange(300) // 15, np.arange(300) % 15] = True
  scores = np.linspace(1, 0.6, 300)
  ids, entries = iv.instance_ids(masks, scores, np.ones(300, int))
  assert ids.dtype == np.uint16 and len(entries) == 300
  np.testing.assert_array_equal(ids, np.arange(1, 301).reshape(20, 15))
  iv.save_ids(tmp_path / "ids16.png", ids)
  with Image.open(tmp_path / "ids16.png") as img:
    np.testing.assert_array_equal(np.asarray(img), ids)
  small, _ = iv.instance_ids(masks[:10], scores[:10], np.ones(10, int))
  iv.save_ids(tmp_path / "ids8.png", small)
  with Image.open(tmp_path / "ids8.png") as img:
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), small)
  with pytest.raises(ValueError, match="uint8 or uint16"):
    iv.save_ids(tmp_path / "bad.png", small.astype(np.int32))


def _expected_outline(ids):
  out = np.zeros(ids.shape, bool)
  h, w = ids.shape
  for y in range(h):
    for x in range(w):
      if ids[y, x]:
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
          yy, xx = y + dy, x + dx
          if not (0 <= yy < h and 0 <= xx < w) or ids[yy, xx] != ids[y, x]:
            out[y, x] = True
  return out


def test_tint_and_outline_cover_exactly_the_masks():
  masks, boxes, scores, classes, valid = _detections(3)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
  padded = np.zeros((len(masks), 36, 48), np.uint8)  # masks of the padded eval size: cropped to the image
  padded[:, :30, :40] = masks
  padded[:, 32:, :] = 1
  out = iv.overlay(image, boxes, scores, classes, NAMES, masks=padded, valid=valid, alpha=0.4, draw_boxes=False,
                   draw_labels=False)
  ids, _ = _expected_ids(masks, scores, valid, 0.5)
  colors = iv.instance_colors(ids.max())
  border = _expected_outline(ids)
  expected = image.copy()
  for y, x in zip(*np.nonzero(ids)):
    color = colors[ids[y, x] - 1].astype(np.float64)
    expected[y, x] = color if border[y, x] else np.round(0.6 * image[y, x] + 0.4 * color)
  assert out.shape == image.shape and out.dtype == np.uint8
  # Rounding of the float32 blend may differ by one from the float64 one here.
  assert np.abs(out.astype(int) - expected).max() <= 1
  np.testing.assert_array_equal(out[ids == 0], image[ids == 0])
  np.testing.assert_array_equal(out[border], expected[border])
  assert border.any() and (ids > 0).sum() > border.sum()


def test_boxes_are_drawn_on_their_pixel_perimeter():
  image = np.zeros((30, 40), np.uint8)  # grey: converted to RGB
  boxes = np.array([[2.5, 3.0, 20.0, 12.2], [10.0, 8.0, 45.0, 25.0], [5, 5, 9, 9]], np.float32)
  scores = np.array([0.9, 0.8, 0.3], np.float32)  # the third is under the threshold
  out = iv.overlay(image, boxes, scores, [1, 2, 3], NAMES, draw_labels=False)
  colors = iv.instance_colors(2)
  expected = np.zeros((30, 40, 3), np.uint8)
  # Columns floor(x1)..ceil(x2) - 1, rows likewise, clipped to the image; the lower score first.
  for (left, top, right, bottom), color in (((10, 8, 39, 24), colors[1]), ((2, 3, 19, 12), colors[0])):
    expected[top, left:right + 1] = expected[bottom, left:right + 1] = color
    expected[top:bottom + 1, left] = expected[top:bottom + 1, right] = color
  np.testing.assert_array_equal(out, expected)
  assert iv.box_pixels([50, 1, 60, 5], 30, 40) is None


def test_labels_and_threshold(tmp_path):
  image = np.full((60, 80, 3), 128, np.uint8)
  masks = np.zeros((2, 60, 80), bool)
  masks[0, 30:50, 10:40] = True
  masks[1, 5:10, 60:70] = True
  boxes = np.array([[10, 30, 40, 50], [60, 5, 70, 10]], np.float32)
  kwargs = dict(masks=masks, score_threshold=0.5)
  plain = iv.overlay(image, boxes, [0.9, 0.1], [1, 2], NAMES, draw_labels=False, **kwargs)
  labelled = iv.overlay(image, boxes, [0.9, 0.1], [1, 2], NAMES, **kwargs)
  color = iv.instance_colors(1)[0]
  changed = np.any(labelled != plain, axis=-1)
  rows, cols = np.nonzero(changed)
  # The tag sits above the box's top-left corner, filled with the detection's colour, with text in it.
  assert rows.max() < 30 and rows.min() >= 30 - 20 and cols.min() == 10
  tag = labelled[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
  assert (tag == color).all(axis=-1).mean() > 0.5 and not (tag == color).all(axis=-1).all()
  # The detection under the threshold leaves no trace: identical to drawing the first alone.
  alone = iv.overlay(image, boxes[:1], [0.9], [1], NAMES, masks=masks[:1])
  np.testing.assert_array_equal(labelled, alone)
  np.testing.assert_array_equal(plain[5:10, 60:70], image[5:10, 60:70])
  # A box at the top of the image gets its tag inside.
  top = iv.overlay(image, np.array([[20, 0, 60, 30]], np.float32), [0.8], [3], NAMES)
  rows = np.nonzero(np.any(top != iv.overlay(image, np.array([[20, 0, 60, 30]], np.float32), [0.8], [3], NAMES,
                                                draw_labels=False), axis=-1))[0]
  assert rows.min() >= 0 and rows.max() < 30
  path = tmp_path / "overlay.png"
  iv.save_overlay(path, image, boxes, [0.9, 0.1], [1, 2], NAMES, **kwargs)
  with Image.open(path) as img:
    np.testing.assert_array_equal(np.asarray(img), labelled)


def test_colors_are_distinct_and_no_detection_draws_nothing():
  colors = iv.instance_colors(100)
  assert len({tuple(c) for c in colors}) == 100
  assert np.abs(colors[1:].astype(int) - colors[:-1]).sum(axis=1).min() > 60  # consecutive ids clearly differ
  np.testing.assert_array_equal(iv.instance_colors(5), colors[:5])
  image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
  empty = iv.overlay(image, np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), NAMES, masks=np.zeros((0, 2, 4)))
  np.testing.assert_array_equal(empty, image)
  ids, entries = iv.instance_ids(np.zeros((0, 2, 4)), np.zeros(0), np.zeros(0, int))
  assert ids.shape == (2, 4) and not ids.any() and entries == []


def test_panel_is_ground_truth_beside_prediction(tmp_path):
  from segjax import viz  # pylint: disable=import-outside-toplevel
  from segjax.evaluation import coco  # pylint: disable=import-outside-toplevel

  masks, boxes, scores, classes, valid = _detections(4, size=(30, 40))
  rng = np.random.default_rng(1)
  image = np.zeros((36, 48, 3), np.uint8)  # padded to the eval size
  image[:30, :40] = rng.integers(0, 256, size=(30, 40, 3))
  crowd = np.zeros(len(masks))
  crowd[0] = 1
  padded = np.zeros((len(masks), 36, 48), np.uint8)
  padded[:, :30, :40] = masks
  example = dict(image=image, image_size=np.array([30, 40]), boxes=boxes, classes=classes, valid=valid.astype(float),
                 crowd=crowd, masks=padded)
  probs = rng.random((len(masks), 28, 28)).astype(np.float32)
  detections = dict(boxes=boxes[::-1], scores=scores, classes=classes, valid=valid, masks=probs)
  out = iv.panel(example, detections, NAMES, score_threshold=0.4)
  text = "ground truth  |  prediction (score >= 0.4)"
  top, wide = viz.caption_height(text), max(2 * 40 + viz.SEPARATOR, viz.text_size(text)[0] + 6)
  assert out.shape == (top + 30, wide, 3)
  assert (out[top:, 2 * 40 + viz.SEPARATOR:] == 255).all()  # the caption is wider than the panel here
  truth = (valid > 0) & (crowd == 0)
  np.testing.assert_array_equal(out[top:, :40], iv.overlay(image[:30, :40], boxes[truth], np.ones(truth.sum()),
                                                           classes[truth], NAMES, masks=masks[truth],
                                                           score_threshold=0, show_scores=False))
  pasted = coco.paste_masks(probs, boxes[::-1], (30, 40))
  np.testing.assert_array_equal(out[top:, 40 + viz.SEPARATOR:80 + viz.SEPARATOR], iv.overlay(
      image[:30, :40], boxes[::-1], scores, classes, NAMES, masks=pasted, valid=valid, score_threshold=0.4))
  assert (out[top:, 40:40 + viz.SEPARATOR] == 255).all()
  iv.save_panel(tmp_path / "panel.png", example, detections, NAMES, score_threshold=0.4)
  with Image.open(tmp_path / "panel.png") as img:
    np.testing.assert_array_equal(np.asarray(img), out)
