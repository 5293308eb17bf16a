"""Tests for segjax.evaluation.panoptic's host side: one image's prediction from detections and the semantic argmax
(cropping, mapping back from a resized image, dataset category ids), the semantic counts of panoptic maps against
a per-pixel loop, and metrics.json without NaN."""

from __future__ import annotations

import json

import numpy as np

from segjax.data.panoptic.registry import Category, PanopticSpec
from segjax.evaluation import metrics, panoptic, panoptic_fusion

SPEC = PanopticSpec(name="hand", tfds_name="hand", splits=("val",), max_objects={"val": 2},
                    categories=(Category(3, "disk", True), Category(7, "sky", False), Category(9, "cup", True),
                                Category(20, "road", False)))
FUSION = panoptic_fusion.FusionConfig(stuff_area_thresh=10, thing_id=0)


def _detections(boxes, scores, classes, valid):
  d = len(scores)
  return {"boxes": np.asarray(boxes, np.float32).reshape(d, 4), "scores": np.asarray(scores, np.float32),
          "classes": np.asarray(classes, np.int32), "valid": np.asarray(valid, bool),
          "masks": np.ones((d, 28, 28), np.float32)}


def test_prediction_of_a_resized_image_in_stored_pixels_and_category_ids():
  # The model saw the 20x20 stored image at half size (10x10) inside a 32x32 batch image.
  semantic = np.full((32, 32), 7, np.int64)  # padding: never read
  semantic[:5, :10] = 1  # sky (stuff 1 -> category 7)
  semantic[5:10, :10] = 2  # road (stuff 2 -> category 20)
  semantic[:5, :5] = 0  # "things"
  dets = _detections([[0, 0, 5, 5], [5, 5, 10, 10], [0, 0, 0, 0]], [0.9, 0.2, 0.0], [2, 1, 0], [True, True, False])
  pan, segments = panoptic.predict_image(SPEC, dets, semantic, (10, 10), (0.5, 0.5), (20, 20), FUSION)
  assert pan.shape == (20, 20)
  by_id = {s["id"]: s for s in segments}
  things = [s for s in segments if s["isthing"]]
  assert [(s["category_id"], s["score"]) for s in things] == [(9, np.float32(0.9))]  # class 2 -> cup; 0.2 < 0.5
  thing = pan == things[0]["id"]
  box = np.zeros((20, 20), bool)
  box[:10, :10] = True  # the box (0, 0, 5, 5) divided by the scale
  grown = np.zeros((20, 20), bool)
  grown[:11, :11] = True  # torchvision's paste pads the 28x28 mask by one cell, which reaches past the box edge
  assert (thing >= box).all() and (thing <= grown).all()
  stuff = {by_id[i]["category_id"]: pan == i for i in by_id if not by_id[i]["isthing"]}
  assert set(stuff) == {7, 20}
  # Stuff: the semantic map brought to 20x20 at the nearest pixel, minus the thing's pixels.
  rows = np.arange(20) // 2
  up = semantic[:10, :10][rows][:, rows]
  np.testing.assert_array_equal(stuff[7], (up == 1) & ~thing)
  np.testing.assert_array_equal(stuff[20], (up == 2) & ~thing)
  assert all(not s.get("iscrowd") for s in segments)


def test_semantic_counts_equal_a_pixel_loop():
  rng = np.random.default_rng(0)
  counts = panoptic.SemanticCounts(SPEC)
  names = [c.name for c in SPEC.categories]
  index = {c.id: i for i, c in enumerate(SPEC.categories)}
  cm = np.zeros((4, 4), np.int64)
  missed = np.zeros(4, np.int64)
  for _ in range(3):
    maps, segs = [], []
    for _side in range(2):  # ground truth, prediction: random ids 0..5 with random categories
      m = rng.integers(0, 6, (9, 7))
      cats = rng.choice([3, 7, 9, 20], size=6)
      maps.append(m)
      segs.append([{"id": i, "category_id": int(cats[i])} for i in range(1, 6)])
    counts.add(maps[1], segs[1], maps[0], segs[0])
    gt_cat = {s["id"]: s["category_id"] for s in segs[0]}
    pred_cat = {s["id"]: s["category_id"] for s in segs[1]}
    for (y, x), g in np.ndenumerate(maps[0]):
      if g == 0:
        continue  # ground-truth void: not scored
      p = maps[1][y, x]
      if p == 0:
        missed[index[gt_cat[g]]] += 1
      else:
        cm[index[gt_cat[g]], index[pred_cat[p]]] += 1
  got = counts.summarize()
  want = metrics.compute_metrics(cm, names, unlabelled=missed)
  assert got == want
  assert missed.sum() > 0


def test_scalars_and_json_have_no_nan():
  pq = {"All": {"pq": 0.5, "sq": 0.8, "rq": 0.625, "n": 2}, "Things": {"pq": 0.4, "sq": 0.8, "rq": 0.5, "n": 1},
        "Stuff": {"pq": 0.6, "sq": 0.8, "rq": 0.75, "n": 1},
        "per_category": {3: {"pq": 0.4, "sq": float("nan"), "rq": 0.5, "tp": 1, "fp": 1, "fn": 1}}}
  result = {**pq, "semantic": metrics.compute_metrics(np.array([[3, 1], [0, 0]]), ["a", "b"]), "num_images": 1}
  scalars = panoptic.scalars_of(result)
  assert scalars["PQ"] == 0.5 and scalars["PQ_th"] == 0.4 and scalars["RQ_st"] == 0.75
  assert scalars["mean_iou"] == result["semantic"]["mean_iou"]
  assert "PQ 0.5000" in panoptic.headline_of(result)
  text = json.dumps(panoptic.json_result(result), allow_nan=False)
  assert json.loads(text)["per_category"]["3"]["sq"] is None
