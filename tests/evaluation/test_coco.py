"""Tests of segjax.evaluation.coco: the evaluator's numbers against pycocotools run directly on JSON files this test
writes itself, hand-built cases with known AP, a brute-force numpy AP50, the results JSON read back by
COCO.loadRes, and the numpy mask paste against segjax.ops.masks."""

import contextlib
import io
import json
import math

import jax
import numpy as np
from pycocotools import coco as coco_lib
from pycocotools import cocoeval
from pycocotools import mask as mask_lib
import pytest

from segjax.evaluation import coco

# pycocotools' mask.decode with numpy 2 (its own code, not the test's).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

NAMES = ["cat", "dog", "bus", "kite"]  # kite: never in the ground truth
PAD = (128, 144)  # the padded evaluation size


def _ellipse(rng, h, w, big=False):
  yy, xx = np.mgrid[:h, :w]
  if big:
    cy, cx, ry, rx = rng.uniform(0.3 * h, 0.7 * h), rng.uniform(0.3 * w, 0.7 * w), *rng.uniform(40, 75, size=2)
  else:
    cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), *rng.uniform(3, 25, size=2)
  mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
  if not mask.any():
    mask[int(cy), int(cx)] = True
  return mask


def _box(mask):
  rows, cols = np.nonzero(mask)
  return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)


def _scene(seed, num_images=8, max_dets=12):
  """Padded eval examples and detections: crowd regions, an image without ground truth, one without detections,
  class 3 only predicted ("bus" with crowd only), class 4 never present."""
  rng = np.random.default_rng(seed)
  examples, detections = [], []
  for i in range(num_images):
    h, w = int(rng.integers(50, PAD[0] + 1)), int(rng.integers(50, PAD[1] + 1))
    n = 0 if i == 1 else int(rng.integers(1, 6))
    masks = np.zeros((8, *PAD), np.uint8)
    boxes, classes, valid, crowd = np.zeros((8, 4), np.float32), np.zeros(8, np.int32), np.zeros(8), np.zeros(8)
    for j in range(n):
      masks[j, :h, :w] = _ellipse(rng, h, w, big=rng.random() < 0.25)
      boxes[j], classes[j], valid[j] = _box(masks[j]), rng.integers(1, 3), 1
      crowd[j] = rng.random() < 0.2
    if i == 2:  # a crowd-only class
      masks[n, :h, :w] = _ellipse(rng, h, w)
      boxes[n], classes[n], valid[n], crowd[n] = _box(masks[n]), 3, 1, 1
    examples.append(dict(image_id=np.int64(100 + 7 * i), image_size=np.array([h, w], np.int32), boxes=boxes,
                         classes=classes, masks=masks, valid=valid.astype(np.float32), crowd=crowd))
    d = 0 if i == 3 else max_dets
    det_masks, det_boxes = np.zeros((d, *PAD), bool), np.zeros((d, 4), np.float32)
    det_classes, det_valid = rng.integers(1, 5, size=d).astype(np.int32), rng.random(d) < 0.8
    for j in range(d):
      if j < n and rng.random() < 0.8:  # a shifted copy of a ground-truth instance
        dy, dx = rng.integers(-2, 3, size=2)  # shifted, not wrapped around
        det_masks[j, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = masks[j, max(-dy, 0):h - max(dy, 0),
                                                                                  max(-dx, 0):w - max(dx, 0)]
        det_classes[j] = classes[j] if rng.random() < 0.85 else det_classes[j]
      else:
        det_masks[j, :h, :w] = _ellipse(rng, h, w)
      if det_masks[j].any():
        det_boxes[j] = _box(det_masks[j]) + rng.uniform(-1.5, 1.5, size=4).astype(np.float32)
    scores = np.where(np.arange(d) < n, rng.uniform(0.3, 1, d), rng.uniform(0, 0.8, d)).astype(np.float32)
    detections.append(dict(boxes=det_boxes, scores=scores, classes=det_classes,
                           valid=det_valid, pasted_masks=det_masks))
  return examples, detections


def _rle(mask):
  rle = mask_lib.encode(np.asfortranarray(mask.astype(np.uint8)[:, :, None]))[0]
  return {"size": rle["size"], "counts": rle["counts"].decode()}


def _reference_files(tmp_path, examples, detections):
  """The ground truth and the two results files written straight from the arrays (no segjax code)."""
  images, anns, boxes_res, segm_res = [], [], [], []
  for ex, det in zip(examples, detections):
    h, w = (int(s) for s in ex["image_size"])
    image_id = int(ex["image_id"])
    images.append({"id": image_id, "height": h, "width": w})
    for j in np.nonzero(ex["valid"])[0]:
      x1, y1, x2, y2 = (float(v) for v in ex["boxes"][j])
      mask = ex["masks"][j, :h, :w]
      anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(ex["classes"][j]),
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(mask.sum()), "iscrowd": int(ex["crowd"][j]),
                   "segmentation": _rle(mask)})
    for j in np.nonzero(det["valid"])[0]:
      x1, y1, x2, y2 = (float(v) for v in det["boxes"][j])
      common = {"image_id": image_id, "category_id": int(det["classes"][j]), "score": float(det["scores"][j])}
      boxes_res.append({**common, "bbox": [x1, y1, x2 - x1, y2 - y1]})
      segm_res.append({**common, "segmentation": _rle(det["pasted_masks"][j, :h, :w])})
  gt = {"images": images, "annotations": anns, "categories": [{"id": k + 1, "name": n} for k, n in enumerate(NAMES)]}
  paths = {}
  for name, content in (("gt", gt), ("bbox", boxes_res), ("segm", segm_res)):
    paths[name] = tmp_path / f"{name}.json"
    paths[name].write_text(json.dumps(content))
  return paths


def _cocoeval(gt_path, res_path, iou_type, cat_ids=None, img_ids=None):
  with contextlib.redirect_stdout(io.StringIO()):
    gt = coco_lib.COCO(str(gt_path))
    dt = gt.loadRes(str(res_path))
    e = cocoeval.COCOeval(gt, dt, iou_type)
    if cat_ids is not None:
      e.params.catIds = cat_ids
    if img_ids is not None:
      e.params.imgIds = img_ids
    e.evaluate()
    e.accumulate()
    e.summarize()
  return [float("nan") if v == -1 else float(v) for v in e.stats]


def _evaluator(examples, detections, **kwargs):
  evaluator = coco.CocoEvaluator(NAMES, **kwargs)
  for ex, det in zip(examples, detections):
    evaluator.add(ex, det)
  return evaluator


def _assert_same(actual, expected):
  np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pycocotools_on_json_files(tmp_path, seed):
  examples, detections = _scene(seed)
  paths = _reference_files(tmp_path, examples, detections)
  result = _evaluator(examples, detections).summarize()
  for iou_type, key in (("bbox", "box"), ("segm", "mask")):
    expected = _cocoeval(paths["gt"], paths[iou_type], iou_type)
    _assert_same([result[key][n] for n in coco.STAT_NAMES], expected)
    assert 0 < result[key]["AP"] < 1
    assert seed or not any(math.isnan(v) for v in expected)  # small, medium and large objects all present
    # Per class: COCOeval restricted to that one class gives its AP as the summary AP.
    per_class = [_cocoeval(paths["gt"], paths[iou_type], iou_type, cat_ids=[k])[0] for k in range(1, 5)]
    _assert_same([c[f"{key}_ap"] for c in result["per_class"]], per_class)
  # bus has crowd ground truth only, kite none at all: no AP, not 0.
  assert [math.isnan(c["box_ap"]) for c in result["per_class"]] == [False, False, True, True]
  assert result["num_images"] == 8
  assert result["num_instances"] == sum(int(((e["valid"] > 0) & (e["crowd"] == 0)).sum()) for e in examples)
  assert result["num_detections"] == sum(int(d["valid"].sum()) for d in detections)


def test_mask_probabilities_are_pasted_as_torchvision(tmp_path):
  # Detections given as the mask head's 28 x 28 probabilities evaluate like the masks pasted by segjax.ops.masks.
  from segjax.ops import masks as masks_ops  # pylint: disable=import-outside-toplevel

  examples, detections = _scene(2, num_images=4, max_dets=20)
  rng = np.random.default_rng(3)
  # Pasted at the padded size (one compilation): inside the image the values are those of a paste at its own size.
  paste = jax.jit(lambda m, b: masks_ops.paste_masks_in_image(m, b, PAD))
  for ex, det in zip(examples, detections):
    probs = rng.random((len(det["boxes"]), 28, 28)).astype(np.float32)
    det["masks"] = probs
    h, w = (int(s) for s in ex["image_size"])
    det["pasted_masks"] = np.zeros((len(probs), *PAD), bool)
    if len(probs):
      det["pasted_masks"][:, :h, :w] = (np.asarray(paste(probs, det["boxes"])) > 0.5)[:, :h, :w]
  paths = _reference_files(tmp_path, examples, detections)
  evaluator = coco.CocoEvaluator(NAMES)
  for ex, det in zip(examples, detections):
    evaluator.add(ex, {k: v for k, v in det.items() if k != "pasted_masks"})
  _assert_same([evaluator.summarize()["mask"][n] for n in coco.STAT_NAMES], _cocoeval(paths["gt"], paths["segm"],
                                                                                      "segm"))


def test_paste_masks_matches_segjax_ops():
  from segjax.ops import masks as masks_ops  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  h, w = 37, 51
  xy = rng.uniform(-10, 55, size=(40, 2, 2))
  boxes = np.concatenate([xy.min(1), xy.max(1) + 0.5], axis=1).astype(np.float32)
  probs = rng.random((40, 28, 28)).astype(np.float32)
  expected = np.asarray(jax.jit(lambda m, b: masks_ops.paste_masks_in_image(m, b, (h, w)))(probs, boxes))
  values = coco.paste_masks(probs, boxes, (h, w), threshold=None)
  np.testing.assert_allclose(values, expected, atol=1e-5)
  assert (values > 0).any(axis=(1, 2)).sum() > 30
  binary = coco.paste_masks(probs, boxes, (h, w))
  clear = np.abs(expected - 0.5) > 1e-5
  np.testing.assert_array_equal(binary[clear], expected[clear] > 0.5)
  assert coco.paste_masks(np.zeros((0, 28, 28)), np.zeros((0, 4)), (h, w)).shape == (0, h, w)


def test_perfect_detections_have_ap_one():
  examples, _ = _scene(4, num_images=5)
  evaluator = coco.CocoEvaluator(NAMES)
  for ex in examples:
    keep = (ex["valid"] > 0) & (ex["crowd"] == 0)
    evaluator.add(ex, dict(boxes=ex["boxes"], scores=np.linspace(1, 0.5, 8), classes=ex["classes"], valid=keep,
                           pasted_masks=ex["masks"]))
  result = evaluator.summarize()
  for key in ("box", "mask"):
    for name in ("AP", "AP50", "AP75", "AR100"):
      assert result[key][name] == pytest.approx(1.0, abs=1e-12), (key, name)
    assert [c[f"{key}_ap"] for c in result["per_class"][:2]] == pytest.approx([1.0, 1.0], abs=1e-12)


def _square(x, y, s, size=(40, 40)):
  mask = np.zeros(size, np.uint8)
  mask[y:y + s, x:x + s] = 1
  return mask


def test_known_precision_recall():
  # Two objects; detections by score: a hit, a false positive, the other hit. Precision at the 101 recall points
  # is 1 up to recall 0.5 (51 points) and 2/3 above (50 points), at every IoU threshold (the hits are exact).
  gt = np.stack([_square(2, 2, 10), _square(20, 20, 12)])
  det = np.stack([gt[0], _square(25, 2, 8), gt[1]])
  boxes = lambda m: np.stack([_box(x) for x in m])
  evaluator = coco.CocoEvaluator(["thing"])
  evaluator.add(dict(image_id=0, image_size=[40, 40], boxes=boxes(gt), classes=[1, 1], valid=[1, 1], crowd=[0, 0],
                     masks=gt),
                dict(boxes=boxes(det), scores=[0.9, 0.8, 0.7], classes=[1, 1, 1], pasted_masks=det))
  result = evaluator.summarize()
  for key in ("box", "mask"):
    assert result[key]["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    assert result[key]["AP50"] == pytest.approx(result[key]["AP"], abs=1e-12)
    assert result[key]["AP75"] == pytest.approx(result[key]["AP"], abs=1e-12)
    assert result[key]["AR1"] == 0.5 and result[key]["AR100"] == 1.0
    assert math.isnan(result[key]["APm"]) and math.isnan(result[key]["APl"])  # both objects are small


def test_mask_area_decides_the_size_range_of_mask_ap():
  # A false positive whose mask is a thin frame: 444 pixels (small), its box 40 x 40 = 1600 (medium). Mask AP counts
  # it among the small detections; were its area the box's (COCO.loadRes with a bbox key), small AP would be 1.
  gt = _square(2, 2, 10, size=(60, 60))[None]
  frame = _square(15, 15, 40, size=(60, 60)) - _square(18, 18, 34, size=(60, 60))
  det = np.stack([frame, gt[0]])
  evaluator = coco.CocoEvaluator(["thing"])
  evaluator.add(dict(image_id=3, image_size=[60, 60], boxes=_box(gt[0])[None], classes=[1], valid=[1], crowd=[0],
                     masks=gt),
                dict(boxes=np.stack([_box(m) for m in det]), scores=[0.9, 0.8], classes=[1, 1], pasted_masks=det))
  result = evaluator.summarize()
  assert frame.sum() == 444
  assert result["mask"]["APs"] == pytest.approx(0.5, abs=1e-12)
  assert result["box"]["APs"] == pytest.approx(1.0, abs=1e-12)  # box AP: the detection's box area, medium


def _iou(a, b):
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _brute_force_ap50(gts, dets):
  """COCO's AP at IoU 0.5 for one class, no crowd: each detection, highest score first within its image, takes the
  unmatched ground truth it overlaps most (IoU >= 0.5); then all detections by score, precision made monotone,
  averaged over the recall points 0, 0.01, ..., 1."""
  hits, scores = [], []
  for g, (d_boxes, d_scores) in zip(gts, dets):
    matched = set()
    for j in sorted(range(len(d_boxes)), key=lambda j: -d_scores[j]):
      best, best_iou = None, 0.5
      for i in range(len(g)):
        iou = _iou(d_boxes[j], g[i])
        if i not in matched and iou >= best_iou:
          best, best_iou = i, iou
      if best is not None:
        matched.add(best)
      hits.append(best is not None)
      scores.append(d_scores[j])
  order = sorted(range(len(scores)), key=lambda j: -scores[j])
  tp = np.cumsum([hits[j] for j in order])
  precision = tp / np.arange(1, len(order) + 1)
  recall = tp / sum(len(g) for g in gts)
  total = 0.0
  for r in np.linspace(0, 1, 101):
    above = precision[recall >= r]
    total += above.max() if above.size else 0.0
  return total / 101


def test_ap50_equals_brute_force():
  rng = np.random.default_rng(5)
  evaluator = coco.CocoEvaluator(["thing"], iou_types=("bbox",))
  gts, dets = [], []
  for i in range(6):
    xy = rng.uniform(0, 60, size=(4, 2))
    g = np.concatenate([xy, xy + rng.uniform(5, 30, size=(4, 2))], axis=1).astype(np.float32)
    d = (np.concatenate([g, g[:2]]) + rng.normal(0, 3, size=(6, 4))).astype(np.float32)
    d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
    s = rng.random(6).astype(np.float32)
    gts.append(g.astype(np.float64))
    dets.append((d.astype(np.float64), s))
    evaluator.add_ground_truth(i, (100, 100), g, np.ones(4), np.ones(4))
    evaluator.add_detections(i, d, s, np.ones(6, int))
  ap50 = evaluator.summarize()["box"]["AP50"]
  assert 0.2 < ap50 < 0.95
  assert ap50 == pytest.approx(_brute_force_ap50(gts, dets), abs=1e-12)


def test_results_json_round_trips(tmp_path):
  examples, detections = _scene(6, num_images=3, max_dets=40)  # more than one chunk of masks encoded at once
  cats = [3, 17, 18, 90]
  evaluator = _evaluator(examples, detections, category_ids=cats)
  path = tmp_path / "results.json"
  coco.results_json(path, evaluator.results())
  gt = {"images": [{"id": int(e["image_id"]), "height": int(e["image_size"][0]), "width": int(e["image_size"][1])}
                   for e in examples], "annotations": [], "categories": [{"id": c} for c in cats]}
  gt_coco = coco_lib.COCO()
  gt_coco.dataset = gt
  with contextlib.redirect_stdout(io.StringIO()):
    gt_coco.createIndex()
    res = gt_coco.loadRes(str(path))
  anns = res.dataset["annotations"]
  expected = [(e, d, j) for e, d in zip(examples, detections) for j in np.nonzero(d["valid"])[0]]
  assert len(anns) == len(expected) > 10
  for ann, (e, d, j) in zip(anns, expected):
    image_id, (h, w) = int(e["image_id"]), (int(s) for s in e["image_size"])
    x1, y1, x2, y2 = d["boxes"][j].astype(np.float64)
    assert ann["image_id"] == image_id and ann["category_id"] == cats[d["classes"][j] - 1]
    assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1] and ann["score"] == float(d["scores"][j])
    np.testing.assert_array_equal(mask_lib.decode(ann["segmentation"]), d["pasted_masks"][j, :h, :w])
  # The mapping changes the file, not the numbers.
  plain = _evaluator(examples, detections).summarize()
  mapped = evaluator.summarize()
  assert mapped["box"] == plain["box"] and [c["category_id"] for c in mapped["per_class"]] == cats


def test_ground_truth_from_instances_json(tmp_path):
  # Polygons, a crowd RLE and non-contiguous category ids, as in COCO's own files; one image gets no detections
  # added, so it is not evaluated.
  square = lambda x, y, s: [[x, y, x + s, y, x + s, y + s, x, y + s]]
  crowd = np.zeros((50, 60), np.uint8)
  crowd[30:45, 5:40] = 1
  gt = {"images": [{"id": 4, "height": 50, "width": 60}, {"id": 9, "height": 50, "width": 60},
                   {"id": 11, "height": 50, "width": 60}],
        "categories": [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}],
        "annotations": [
            {"id": 5, "image_id": 4, "category_id": 3, "segmentation": square(5, 5, 20), "area": 400.0,
             "bbox": [5, 5, 20, 20], "iscrowd": 0},
            {"id": 6, "image_id": 4, "category_id": 7, "segmentation": _rle(crowd), "area": float(crowd.sum()),
             "bbox": [5, 30, 35, 15], "iscrowd": 1},
            {"id": 7, "image_id": 9, "category_id": 7, "segmentation": square(30, 10, 15), "area": 225.0,
             "bbox": [30, 10, 15, 15], "iscrowd": 0},
            {"id": 8, "image_id": 11, "category_id": 3, "segmentation": square(1, 1, 9), "area": 81.0,
             "bbox": [1, 1, 9, 9], "iscrowd": 0}]}
  gt_path = tmp_path / "instances.json"
  gt_path.write_text(json.dumps(gt))
  evaluator = coco.CocoEvaluator.from_json(gt_path)
  assert evaluator.class_names == ["a", "b"] and evaluator.category_ids == [3, 7]
  dets = {4: ([[5, 5, 25, 25], [6, 31, 20, 44], [40, 0, 50, 10]], [0.9, 0.8, 0.3], [1, 2, 2]),
          9: ([[31, 10, 45, 26], [2, 2, 12, 12]], [0.6, 0.95], [2, 1])}
  results = []
  for image_id, (boxes, scores, classes) in dets.items():
    boxes = np.asarray(boxes, np.float32)
    masks = np.zeros((len(boxes), 50, 60), bool)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
      m[y1:y2, x1:x2] = True
    evaluator.add_detections(image_id, boxes, np.float32(scores), np.asarray(classes), masks=masks)
    for b, s, c, m in zip(boxes.tolist(), scores, classes, masks):
      results.append({"image_id": image_id, "category_id": [3, 7][c - 1], "score": float(np.float32(s)),
                      "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "segmentation": _rle(m)})
  result = evaluator.summarize()
  for iou_type, key in (("bbox", "box"), ("segm", "mask")):
    drop = "bbox" if iou_type == "segm" else "segmentation"
    res_path = tmp_path / f"{iou_type}.json"
    res_path.write_text(json.dumps([{k: v for k, v in r.items() if k != drop} for r in results]))
    _assert_same([result[key][n] for n in coco.STAT_NAMES], _cocoeval(gt_path, res_path, iou_type, img_ids=[4, 9]))
  assert result["num_images"] == 2 and result["num_instances"] == 2
  # a: a false positive above the hit (precision 1/2); b: the hit at IoU 210 / 239 = 0.88 (8 of 10 thresholds),
  # the detection on the crowd region ignored.
  assert [c["box_ap"] for c in result["per_class"]] == pytest.approx([0.5, 0.8], abs=1e-12)
  # Evaluation examples of another size than the JSON's images: the boxes would be in other coordinates.
  again = coco.CocoEvaluator.from_json(gt_path, iou_types=("bbox",))
  again.add({"image_id": 4, "image_size": [50, 60]}, dict(boxes=np.zeros((0, 4)), scores=[], classes=[]))
  with pytest.raises(ValueError, match="scale the detections"):
    again.add({"image_id": 9, "image_size": [40, 48]}, dict(boxes=np.zeros((0, 4)), scores=[], classes=[]))


def test_merge_equals_one_evaluator():
  examples, detections = _scene(7, num_images=6)
  first, second = _evaluator(examples[:3], detections[:3]), _evaluator(examples[3:], detections[3:])
  first.merge(second)
  merged, whole = first.summarize(), _evaluator(examples, detections).summarize()
  for key in ("box", "mask"):
    _assert_same([merged[key][n] for n in coco.STAT_NAMES], [whole[key][n] for n in coco.STAT_NAMES])
  with pytest.raises(ValueError, match="same image ids"):
    first.merge(_evaluator(examples[:1], detections[:1]))


def test_add_batch_skips_padding_rows():
  examples, detections = _scene(9, num_images=3)
  padding = {k: np.zeros_like(v) for k, v in examples[0].items()}
  batch = {k: np.stack([e[k] for e in examples] + [padding[k]]) for k in examples[0]}
  batch["index"] = np.array([0, 1, 2, -1], np.int32)
  outputs = {k: np.stack([d[k] for d in detections] + [detections[0][k]]) for k in detections[0]}
  evaluator = coco.CocoEvaluator(NAMES)
  evaluator.add_batch(batch, outputs)
  assert evaluator.summarize() == _evaluator(examples, detections).summarize()


def test_no_detections_anywhere_and_errors():
  examples, detections = _scene(8, num_images=2)
  evaluator = coco.CocoEvaluator(NAMES)
  for ex in examples:
    evaluator.add(ex, dict(boxes=np.zeros((0, 4)), scores=np.zeros(0), classes=np.zeros(0, int),
                           pasted_masks=np.zeros((0, *PAD), bool)))
  result = evaluator.summarize()
  assert result["box"]["AP"] == 0.0 and result["mask"]["AR100"] == 0.0
  with pytest.raises(ValueError, match="twice"):
    evaluator.add(examples[0], detections[0])
  with pytest.raises(ValueError, match="no image"):
    coco.CocoEvaluator(NAMES).summarize()
  with pytest.raises(ValueError, match=r"class ids must be in 1..4"):
    coco.CocoEvaluator(NAMES, iou_types=("bbox",)).add(examples[0], dict(boxes=np.ones((2, 4)), scores=[1, 1],
                                                                          classes=[1, 5]))
  with pytest.raises(ValueError, match="mask AP needs"):
    coco.CocoEvaluator(NAMES).add(examples[0], {k: v for k, v in detections[0].items() if k != "pasted_masks"})


def test_format_table():
  examples, detections = _scene(0, num_images=4)
  result = _evaluator(examples, detections).summarize()
  text = coco.format_table(result)
  lines = text.splitlines()
  assert lines[0].split() == list(coco.STAT_NAMES)
  assert lines[2].split()[:2] == ["box", f"{100 * result['box']['AP']:.2f}"]
  assert lines[3].split()[:2] == ["mask", f"{100 * result['mask']['AP']:.2f}"]
  kite = next(line for line in lines if line.startswith("kite"))
  assert kite.split() == ["kite", "-", "-"]
  assert lines[-1] == (f"4 images, {result['num_instances']} instances, {result['num_detections']} detections")
