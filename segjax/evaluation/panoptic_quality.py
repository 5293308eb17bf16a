"""Panoptic Quality (PQ), with its split SQ x RQ, exactly as the COCO panoptic evaluation computes it.

What: PQ = sum over matched (tp) pairs of IoU / (TP + FP/2 + FN/2), per category, then averaged over categories
("All", "Things", "Stuff"); SQ = mean IoU of the matched pairs, RQ = TP / (TP + FP/2 + FN/2), so PQ = SQ * RQ per
category. Definition: Kirillov et al., "Panoptic Segmentation", CVPR 2019. The matching, the void and crowd rules
and the averaging follow panopticapi's `pq_compute.py` (`pq_compute_single_core` and `PQStat.pq_average`) so the
numbers here are the numbers the COCO panoptic leaderboard reports.

Why host-side numpy: the inputs are segment-id maps with per-image dictionaries of segment metadata of varying
length; nothing here is worth a device round trip, and exact (float64) agreement with panopticapi matters more.

Rules (per image, as panopticapi):
- Segment id 0 is VOID on both maps. Gt VOID pixels are unlabelled: they are removed from a prediction's union.
- A (gt, pred) pair matches when both have the same category, the gt is not crowd and
  IoU = inter / (pred_area + gt_area - inter - pred_on_gt_void) > 0.5 (strictly: IoU exactly 0.5 does not match).
  IoU > 0.5 makes the match unique, so no assignment step is needed.
- Unmatched non-crowd gt segments are FN; crowd gt segments are never FN (nor matched).
- An unmatched prediction is ignored (not FP) when more than half of its area lies on gt VOID plus the crowd
  segment of its own category; otherwise it is FP. Like panopticapi, one crowd segment per category per image is
  used (COCO has at most one); with several, the last one in `gt_segments` order counts.
- Categories with TP + FP + FN == 0 over everything added (absent from both gt and prediction) are left out of the
  averages and of the per-category results (panopticapi reports them as 0 in per-class results and skips them in
  the mean); an average over no category is 0.0 with n = 0. Every value is NaN-free.

API: `PanopticEvaluator(categories)`, then `add(pred_map, pred_segments, gt_map, gt_segments)` per image, then
`summarize()` -> {"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_category": {cid: {"pq", "sq", "rq", "tp",
"fp", "fn", "name", "isthing"}}}; `format_table(result)` renders it. `PQStat` is the per-category accumulator.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

VOID = 0


@dataclasses.dataclass
class PQStatCat:
  """One category's counts: summed IoU of its matches, TP, FP, FN."""
  iou: float = 0.0
  tp: int = 0
  fp: int = 0
  fn: int = 0

  def __iadd__(self, other: PQStatCat) -> PQStatCat:
    self.iou += other.iou
    self.tp += other.tp
    self.fp += other.fp
    self.fn += other.fn
    return self


class PQStat:
  """Per-category accumulator (panopticapi's PQStat): `stat[cid]` is a PQStatCat, created on first use."""

  def __init__(self):
    self.pq_per_cat: dict[int, PQStatCat] = {}

  def __getitem__(self, cid: int) -> PQStatCat:
    return self.pq_per_cat.setdefault(int(cid), PQStatCat())

  def __iadd__(self, other: PQStat) -> PQStat:
    for cid, stat in other.pq_per_cat.items():
      mine = self[cid]
      mine += stat
    return self

  def pq_average(self, categories: Mapping[int, Mapping[str, Any]],
                 isthing: bool | None) -> tuple[dict[str, float], dict[int, dict[str, Any]]]:
    """Mean PQ/SQ/RQ over the categories of `categories` (things only, stuff only, or all for None) that have
    TP + FP + FN > 0, and those categories' own values."""
    pq = sq = rq = 0.0
    n = 0
    per_class: dict[int, dict[str, Any]] = {}
    for cid, info in categories.items():
      if isthing is not None and bool(info["isthing"]) != isthing:
        continue
      stat = self.pq_per_cat.get(int(cid), PQStatCat())
      if stat.tp + stat.fp + stat.fn == 0:
        continue
      n += 1
      denom = stat.tp + 0.5 * stat.fp + 0.5 * stat.fn
      pq_c = stat.iou / denom
      sq_c = stat.iou / stat.tp if stat.tp else 0.0
      rq_c = stat.tp / denom
      per_class[int(cid)] = {"pq": pq_c, "sq": sq_c, "rq": rq_c, "tp": stat.tp, "fp": stat.fp, "fn": stat.fn,
                             "name": info.get("name", str(cid)), "isthing": bool(info["isthing"])}
      pq, sq, rq = pq + pq_c, sq + sq_c, rq + rq_c
    if n == 0:
      return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def _areas(seg_map: np.ndarray) -> dict[int, int]:
  ids, counts = np.unique(seg_map, return_counts=True)
  return {int(i): int(c) for i, c in zip(ids, counts)}


def _check(name: str, seg_map: np.ndarray, segments: Mapping[int, Mapping[str, Any]],
           categories: Mapping[int, Any], areas: dict[int, int], strict_dict: bool) -> None:
  if seg_map.ndim != 2 or not np.issubdtype(seg_map.dtype, np.integer):
    raise ValueError(f"{name} map must be an integer [H, W] array, got {seg_map.dtype} {seg_map.shape}")
  if seg_map.size and seg_map.min() < 0:
    raise ValueError(f"{name} map has negative segment ids")
  missing = sorted(i for i in areas if i != VOID and i not in segments)
  if missing:
    raise ValueError(f"{name} map has segment ids {missing} absent from its segments dict")
  if VOID in segments:
    raise ValueError(f"{name} segments dict uses id {VOID}, which is VOID")
  if strict_dict:  # panopticapi: every predicted segment of the JSON must be in the PNG
    absent = sorted(i for i in segments if i not in areas)
    if absent:
      raise ValueError(f"{name} segments {absent} are in the dict but not in the map")
  for sid, info in segments.items():
    if info["category_id"] not in categories:
      raise ValueError(f"{name} segment {sid} has unknown category {info['category_id']}")


def pq_single_image(pred_map: np.ndarray, pred_segments: Mapping[int, Mapping[str, Any]], gt_map: np.ndarray,
                    gt_segments: Mapping[int, Mapping[str, Any]],
                    categories: Mapping[int, Mapping[str, Any]]) -> PQStat:
  """One image's PQStat (panopticapi's `pq_compute_single_core` body for one annotation pair)."""
  pred_map, gt_map = np.asarray(pred_map), np.asarray(gt_map)
  if pred_map.shape != gt_map.shape:
    raise ValueError(f"pred map {pred_map.shape} and gt map {gt_map.shape} differ in shape")
  pred_segments = {int(k): v for k, v in pred_segments.items()}
  gt_segments = {int(k): v for k, v in gt_segments.items()}
  pred_area, gt_area = _areas(pred_map), _areas(gt_map)
  _check("pred", pred_map, pred_segments, categories, pred_area, strict_dict=True)
  _check("gt", gt_map, gt_segments, categories, gt_area, strict_dict=False)

  # Intersections of every (gt id, pred id) pair that shares pixels, VOID included.
  offset = int(pred_map.max(initial=0)) + 1
  joint = gt_map.astype(np.int64) * offset + pred_map.astype(np.int64)
  labels, counts = np.unique(joint, return_counts=True)
  inter = {(int(l) // offset, int(l) % offset): int(c) for l, c in zip(labels, counts)}

  stat = PQStat()
  gt_matched, pred_matched = set(), set()
  for (gt_id, pred_id), n_inter in inter.items():
    if gt_id not in gt_segments or pred_id not in pred_segments:
      continue
    gt_info, pred_info = gt_segments[gt_id], pred_segments[pred_id]
    if gt_info.get("iscrowd", False) or gt_info["category_id"] != pred_info["category_id"]:
      continue
    union = pred_area[pred_id] + gt_area[gt_id] - n_inter - inter.get((VOID, pred_id), 0)
    iou = n_inter / union
    if iou > 0.5:
      cat = stat[gt_info["category_id"]]
      cat.tp += 1
      cat.iou += iou
      gt_matched.add(gt_id)
      pred_matched.add(pred_id)

  crowd_by_cat: dict[int, int] = {}
  for gt_id, gt_info in gt_segments.items():
    if gt_id in gt_matched:
      continue
    if gt_info.get("iscrowd", False):
      crowd_by_cat[gt_info["category_id"]] = gt_id
      continue
    stat[gt_info["category_id"]].fn += 1

  for pred_id, pred_info in pred_segments.items():
    if pred_id in pred_matched:
      continue
    ignored = inter.get((VOID, pred_id), 0)
    if pred_info["category_id"] in crowd_by_cat:
      ignored += inter.get((crowd_by_cat[pred_info["category_id"]], pred_id), 0)
    if ignored / pred_area[pred_id] > 0.5:
      continue
    stat[pred_info["category_id"]].fp += 1
  return stat


class PanopticEvaluator:
  """Accumulates PQ statistics over images; `summarize()` gives the COCO panoptic numbers as fractions."""

  def __init__(self, categories: Mapping[int, Mapping[str, Any]]):
    self.categories = {int(k): v for k, v in categories.items()}
    self.stat = PQStat()
    self.num_images = 0

  def add(self, pred_map: np.ndarray, pred_segments: Mapping[int, Mapping[str, Any]], gt_map: np.ndarray,
          gt_segments: Mapping[int, Mapping[str, Any]]) -> PQStat:
    """Adds one image; returns that image's own PQStat."""
    image = pq_single_image(pred_map, pred_segments, gt_map, gt_segments, self.categories)
    self.stat += image
    self.num_images += 1
    return image

  def summarize(self) -> dict[str, Any]:
    result: dict[str, Any] = {}
    per_category: dict[int, dict[str, Any]] = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
      result[name], per_class = self.stat.pq_average(self.categories, isthing)
      if isthing is None:
        per_category = per_class
    result["per_category"] = per_category
    return result


def format_table(result: Mapping[str, Any], per_category: bool = True) -> str:
  """`summarize()`'s result as a text table (values in percent, like panopticapi's print)."""
  lines = [f"{'':14s}| {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'N':>4s}", "-" * 40]
  for name in ("All", "Things", "Stuff"):
    row = result[name]
    lines.append(f"{name:14s}| {100 * row['pq']:6.2f} {100 * row['sq']:6.2f} {100 * row['rq']:6.2f} {row['n']:4d}")
  if per_category and result.get("per_category"):
    lines += ["", f"{'category':14s}| {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'TP':>5s} {'FP':>5s} {'FN':>5s}",
              "-" * 56]
    for cid, row in sorted(result["per_category"].items()):
      label = f"{cid}:{row.get('name', cid)}"[:14]
      lines.append(f"{label:14s}| {100 * row['pq']:6.2f} {100 * row['sq']:6.2f} {100 * row['rq']:6.2f} "
                   f"{row['tp']:5d} {row['fp']:5d} {row['fn']:5d}")
  return "\n".join(lines)
