"""Panoptic Quality: against a brute-force reference written from the definition (boolean masks for every gt x pred
pair, greedy one-to-one matching by IoU) on random images, and on hand-built cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from segjax.evaluation import panoptic_quality as pq_lib

CATEGORIES = {1: {"isthing": True, "name": "person"}, 2: {"isthing": True, "name": "car"},
              3: {"isthing": True, "name": "dog"}, 4: {"isthing": False, "name": "sky"},
              5: {"isthing": False, "name": "road"}, 6: {"isthing": False, "name": "grass"},
              7: {"isthing": True, "name": "never"}}


def _reference(images, categories):
  """PQ from the definition, by a different route: masks, all pairs, greedy unique matching, per-class counts."""
  iou_sum, tp, fp, fn = ({c: 0.0 for c in categories}, {c: 0 for c in categories}, {c: 0 for c in categories},
                         {c: 0 for c in categories})
  for pred_map, pred_segs, gt_map, gt_segs in images:
    void = gt_map == 0
    candidates = []
    for g, ginfo in gt_segs.items():
      gmask = gt_map == g
      for p, pinfo in pred_segs.items():
        pmask = pred_map == p
        if ginfo.get("iscrowd") or ginfo["category_id"] != pinfo["category_id"]:
          continue
        inter = float(np.sum(gmask & pmask))
        union = float(np.sum((gmask | pmask) & ~(pmask & void)))
        if union > 0 and inter / union > 0.5:
          candidates.append((inter / union, g, p))
    matched_g, matched_p = set(), set()
    for iou, g, p in sorted(candidates, reverse=True):
      assert g not in matched_g and p not in matched_p  # IoU > 0.5 is unique by construction
      matched_g.add(g)
      matched_p.add(p)
      c = gt_segs[g]["category_id"]
      tp[c] += 1
      iou_sum[c] += iou
    for g, ginfo in gt_segs.items():
      if g not in matched_g and not ginfo.get("iscrowd"):
        fn[ginfo["category_id"]] += 1
    for p, pinfo in pred_segs.items():
      if p in matched_p:
        continue
      c = pinfo["category_id"]
      crowd = np.zeros_like(void)
      for g, ginfo in gt_segs.items():
        if ginfo.get("iscrowd") and ginfo["category_id"] == c:
          crowd |= gt_map == g
      pmask = pred_map == p
      if np.sum(pmask & (void | crowd)) / np.sum(pmask) > 0.5:
        continue
      fp[c] += 1
  out, per = {}, {}
  for c in categories:
    if tp[c] + fp[c] + fn[c]:
      d = tp[c] + 0.5 * fp[c] + 0.5 * fn[c]
      per[c] = {"pq": iou_sum[c] / d, "sq": iou_sum[c] / tp[c] if tp[c] else 0.0, "rq": tp[c] / d, "tp": tp[c],
                "fp": fp[c], "fn": fn[c]}
  for name, want in (("All", None), ("Things", True), ("Stuff", False)):
    cs = [c for c in per if want is None or categories[c]["isthing"] == want]
    out[name] = {k: float(np.mean([per[c][k] for c in cs])) if cs else 0.0 for k in ("pq", "sq", "rq")}
    out[name]["n"] = len(cs)
  out["per_category"] = per
  return out


def _paint(rng, seg_map, n_rects, first_id):
  h, w = seg_map.shape
  ids = []
  for k in range(n_rects):
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
    seg_map[y0:y1, x0:x1] = first_id + k
    ids.append(first_id + k)
  return ids


def _random_image(rng, h=14, w=14):
  gt_map = np.zeros((h, w), np.int32)
  gt_ids = _paint(rng, gt_map, int(rng.integers(1, 7)), 1)
  used = sorted(int(i) for i in np.unique(gt_map) if i)
  gt_segs, crowd_cats = {}, set()
  for i in used:
    c = int(rng.integers(1, 7))
    crowd = bool(rng.random() < 0.2) and c not in crowd_cats  # COCO: at most one crowd segment per class and image
    if crowd:
      crowd_cats.add(c)
    gt_segs[i] = {"category_id": c, "iscrowd": crowd}
  if rng.random() < 0.3:  # a gt segment listed but with no pixel: a false negative
    gt_segs[len(gt_ids) + 10] = {"category_id": int(rng.integers(1, 7)), "iscrowd": False}
  void = rng.random((h, w)) < 0.15
  gt_map[void] = 0
  pred_map = gt_map.copy() * 3  # different ids than gt, same shapes
  if rng.random() < 0.5:
    pred_map[rng.random((h, w)) < 0.2] = 0
  _paint(rng, pred_map, int(rng.integers(0, 4)), 100)
  pred_segs = {}
  for i in sorted(int(i) for i in np.unique(pred_map) if i):
    src = gt_segs.get(i // 3) if i < 100 else None
    c = src["category_id"] if src and rng.random() < 0.8 else int(rng.integers(1, 7))
    pred_segs[i] = {"category_id": c}
  return pred_map, pred_segs, gt_map, gt_segs


def _evaluate(images, categories=CATEGORIES):
  ev = pq_lib.PanopticEvaluator(categories)
  for image in images:
    ev.add(*image)
  return ev.summarize()


def _assert_close(got, want):
  for name in ("All", "Things", "Stuff"):
    assert got[name]["n"] == want[name]["n"], name
    for k in ("pq", "sq", "rq"):
      assert abs(got[name][k] - want[name][k]) <= 1e-12, (name, k, got[name][k], want[name][k])
  assert set(got["per_category"]) == set(want["per_category"])
  for c, row in want["per_category"].items():
    for k in ("tp", "fp", "fn"):
      assert got["per_category"][c][k] == row[k], (c, k)
    for k in ("pq", "sq", "rq"):
      assert abs(got["per_category"][c][k] - row[k]) <= 1e-12, (c, k)


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force_reference_on_random_images(seed):
  rng = np.random.default_rng(seed)
  images = [_random_image(rng) for _ in range(int(rng.integers(1, 4)))]
  got, want = _evaluate(images), _reference(images, CATEGORIES)
  _assert_close(got, want)
  for v in (got["All"], got["Things"], got["Stuff"]):
    assert all(np.isfinite(v[k]) for k in ("pq", "sq", "rq"))
  assert 7 not in got["per_category"]


def test_random_cases_exercise_every_rule():
  """The random generator produces matches, FPs, FNs and ignored (void / crowd) predictions somewhere."""
  rng = np.random.default_rng(0)
  totals = {"tp": 0, "fp": 0, "fn": 0, "ignored": 0, "crowd": 0}
  for _ in range(40):
    image = _random_image(rng)
    rows = _evaluate([image])["per_category"].values()
    for k in ("tp", "fp", "fn"):
      totals[k] += sum(row[k] for row in rows)
    totals["ignored"] += len(image[1]) - sum(row["tp"] + row["fp"] for row in rows)
    totals["crowd"] += sum(bool(s["iscrowd"]) for s in image[3].values())
  assert all(v > 0 for v in totals.values()), totals


def _one(gt_map, gt_segs, pred_map, pred_segs, categories=CATEGORIES):
  return _evaluate([(np.asarray(pred_map), pred_segs, np.asarray(gt_map), gt_segs)], categories)


def test_perfect_prediction_is_one():
  gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3], [0, 0, 3, 3]])
  gt_segs = {1: {"category_id": 1, "iscrowd": False}, 2: {"category_id": 2, "iscrowd": False},
             3: {"category_id": 5, "iscrowd": False}}
  pred = np.where(gt > 0, gt + 10, 0)
  res = _one(gt, gt_segs, pred, {11: {"category_id": 1}, 12: {"category_id": 2}, 13: {"category_id": 5}})
  for name, n in (("All", 3), ("Things", 2), ("Stuff", 1)):
    assert res[name] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": n}


def test_iou_exactly_half_does_not_match():
  gt = np.array([[1, 1, 1, 1]])
  segs = {1: {"category_id": 1, "iscrowd": False}}
  res = _one(gt, segs, np.array([[7, 7, 2, 2]]), {7: {"category_id": 1}, 2: {"category_id": 4}})  # IoU 2/4 = 0.5
  assert res["per_category"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 1, "name": "person",
                                    "isthing": True}
  # One more gt pixel under the prediction tips it over 0.5: matched.
  res = _one(gt, segs, np.array([[7, 7, 7, 2]]), {7: {"category_id": 1}, 2: {"category_id": 4}})
  assert res["per_category"][1]["tp"] == 1 and res["per_category"][1]["sq"] == 0.75


def test_prediction_pixels_on_void_leave_the_union():
  gt = np.array([[1, 1, 0, 0]])
  pred = np.array([[5, 5, 5, 5]])  # raw IoU 2/4 = 0.5, but the 2 void pixels leave the union: IoU 1
  res = _one(gt, {1: {"category_id": 4, "iscrowd": False}}, pred, {5: {"category_id": 4}})
  assert res["per_category"][4]["tp"] == 1 and res["per_category"][4]["sq"] == 1.0 and res["All"]["pq"] == 1.0


def test_prediction_mostly_on_void_is_ignored():
  gt = np.array([[1, 1, 0, 0, 0, 0]])
  gt_segs = {1: {"category_id": 1, "iscrowd": False}}
  pred = np.array([[5, 5, 6, 6, 6, 0]])  # 6 is on void for 3 of 3 pixels: not an FP
  res = _one(gt, gt_segs, pred, {5: {"category_id": 1}, 6: {"category_id": 2}})
  assert 2 not in res["per_category"] and res["All"]["n"] == 1 and res["All"]["pq"] == 1.0
  pred = np.array([[5, 6, 6, 0, 0, 0]])  # 6: 1 of 2 pixels on void, exactly half: an FP; 5 IoU 1/2: FN + FP
  res = _one(gt, gt_segs, pred, {5: {"category_id": 1}, 6: {"category_id": 2}})
  assert res["per_category"][2]["fp"] == 1 and res["per_category"][1]["fp"] == 1


def test_prediction_on_same_class_crowd_is_ignored():
  gt = np.array([[1, 1, 2, 2, 2, 2]])
  crowd = {1: {"category_id": 4, "iscrowd": False}, 2: {"category_id": 1, "iscrowd": True}}
  pred = np.array([[5, 5, 6, 6, 6, 6]])
  res = _one(gt, crowd, pred, {5: {"category_id": 4}, 6: {"category_id": 1}})
  assert 1 not in res["per_category"]  # crowd never FN, prediction on it not FP, nothing else of class 1
  assert res["All"]["n"] == 1 and res["Things"]["n"] == 0 and res["Things"]["pq"] == 0.0
  res = _one(gt, crowd, pred, {5: {"category_id": 4}, 6: {"category_id": 2}})  # other class on the crowd: FP
  assert res["per_category"][2]["fp"] == 1
  # Void and same-class crowd add up: 1 void + 1 crowd pixel of 3 is > half.
  res = _one(np.array([[0, 2, 3]]), {2: {"category_id": 1, "iscrowd": True}, 3: {"category_id": 5, "iscrowd": False}},
             np.array([[6, 6, 6]]), {6: {"category_id": 1}})
  assert 1 not in res["per_category"] and res["per_category"][5]["fn"] == 1


def test_crowd_gt_is_never_matched():
  gt = np.array([[2, 2, 2, 2]])
  res = _one(gt, {2: {"category_id": 1, "iscrowd": True}}, np.array([[6, 6, 6, 6]]), {6: {"category_id": 1}})
  assert res["per_category"] == {} and res["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}


def test_absent_class_stays_out_of_the_averages_and_things_stuff_split():
  gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
  gt_segs = {1: {"category_id": 1, "iscrowd": False}, 2: {"category_id": 4, "iscrowd": False}}
  pred = np.array([[5, 5, 5, 6], [5, 5, 6, 6]])  # thing: IoU 4/5; stuff: IoU 3/4
  res = _one(gt, gt_segs, pred, {5: {"category_id": 1}, 6: {"category_id": 4}})
  assert set(res["per_category"]) == {1, 4}
  assert res["Things"] == pytest.approx({"pq": 0.8, "sq": 0.8, "rq": 1.0, "n": 1})
  assert res["Stuff"] == pytest.approx({"pq": 0.75, "sq": 0.75, "rq": 1.0, "n": 1})
  assert res["All"] == pytest.approx({"pq": 0.775, "sq": 0.775, "rq": 1.0, "n": 2})
  # A class present only in the prediction (FP) does count: PQ 0 for it, RQ 0.
  res = _one(gt, gt_segs, np.array([[5, 5, 7, 7], [5, 5, 7, 7]]), {5: {"category_id": 1}, 7: {"category_id": 6}})
  assert res["per_category"][6] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 0, "name": "grass",
                                    "isthing": False}
  assert res["Stuff"]["n"] == 2 and res["Stuff"]["pq"] == 0.0 and res["Things"]["pq"] == 1.0


def test_accumulates_over_images():
  gt = np.array([[1, 1]])
  segs = {1: {"category_id": 1, "iscrowd": False}}
  a = (np.array([[3, 3]]), {3: {"category_id": 1}}, gt, segs)  # TP
  b = (np.array([[3, 4]]), {3: {"category_id": 1}, 4: {"category_id": 1}}, gt, segs)  # FN + 2 FP
  row = _evaluate([a, b])["per_category"][1]
  assert (row["tp"], row["fp"], row["fn"]) == (1, 2, 1)
  assert row["pq"] == pytest.approx(1 / 2.5) and row["rq"] == pytest.approx(1 / 2.5) and row["sq"] == 1.0


def test_bad_inputs_raise():
  gt = np.array([[1, 1]])
  segs = {1: {"category_id": 1, "iscrowd": False}}
  with pytest.raises(ValueError, match="absent from its segments"):
    _one(gt, segs, np.array([[3, 3]]), {})
  with pytest.raises(ValueError, match="not in the map"):
    _one(gt, segs, np.array([[3, 3]]), {3: {"category_id": 1}, 4: {"category_id": 1}})
  with pytest.raises(ValueError, match="unknown category"):
    _one(gt, segs, np.array([[3, 3]]), {3: {"category_id": 99}})
  with pytest.raises(ValueError, match="shape"):
    _one(gt, segs, np.array([[3, 3, 3]]), {3: {"category_id": 1}})


def test_format_table():
  gt = np.array([[1, 1, 2, 2]])
  res = _one(gt, {1: {"category_id": 1, "iscrowd": False}, 2: {"category_id": 4, "iscrowd": False}},
             np.array([[5, 5, 6, 6]]), {5: {"category_id": 1}, 6: {"category_id": 4}})
  table = pq_lib.format_table(res)
  assert "All" in table and "Things" in table and "Stuff" in table and "100.00" in table and "1:person" in table
  assert "never" not in table
