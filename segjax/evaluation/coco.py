"""COCO box and mask AP of instance predictions, computed by pycocotools on the host.

`CocoEvaluator` is fed one image at a time: the ground truth of a padded evaluation example (or a COCO instances
JSON) and the model's detections for it. `summarize()` runs pycocotools' COCOeval for "bbox" and "segm" and returns
the 12 summary numbers of each (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l) and the AP of every class, as plain
floats for metrics.json; `format_table` prints them. `coco_results` / `results_json` turn detections into COCO's
results format (the file COCO's evaluation server and `COCO.loadRes` read), for eval and predict.py alike.

Conventions, those of pycocotools and of torchvision's references/detection/coco_eval.py:
- Boxes come in as (x1, y1, x2, y2) in continuous pixel coordinates and go to COCO as [x, y, w, h].
- Masks are RLE-encoded (`pycocotools.mask.encode`); a ground-truth annotation's area is its mask area (the box
  area without masks), which decides small / medium / large for box AP as well, as in COCO's own annotations.
- Mask AP is evaluated from results without a "bbox" key: with one, `COCO.loadRes` would take the detection's
  area from the box instead of the mask (detectron2's coco_evaluation removes it for the same reason).
- The mask head's M x M probabilities are pasted as torchvision's paste_masks_in_image (`paste_masks`, the numpy
  twin of segjax.ops.masks) and thresholded with > 0.5, torchvision's coco_eval rule.
- Class ids are contiguous 1..K inside segjax; `category_ids` maps class k to the dataset's own category id
  (COCO's 1..90 with gaps) in the results JSON and when the ground truth comes from an instances JSON.
- Per-class AP is COCO's precision array averaged over IoU thresholds and recall points (area "all", 100
  detections); a class without any non-crowd ground truth has no AP (NaN, null in JSON), not 0.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import coco as coco_lib
from pycocotools import cocoeval
from pycocotools import mask as mask_lib

from segjax.evaluation import metrics

IOU_TYPES = ("bbox", "segm")
# COCOeval.stats, in order (cocoeval.COCOeval.summarize's _summarizeDets).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# metrics.json keys of the two evaluations: "box AP" and "mask AP", the words of the Mask R-CNN paper.
RESULT_KEYS = {"bbox": "box", "segm": "mask"}
MASK_THRESHOLD = 0.5
_CHUNK = 16  # detections pasted and RLE-encoded at once


def _axis_weights(lo: int, hi: int, size: int, in_size: int) -> tuple[int, np.ndarray]:
  """(first image row, float32 [n, in_size] interpolation weights) of the rows lo..hi (inclusive) inside [0, size).

  PyTorch's bilinear resize rule (align_corners=False) from in_size to hi - lo + 1 pixels, as segjax.ops.masks.
  """
  out = max(hi - lo + 1, 1)
  start, stop = max(lo, 0), min(hi + 1, size)
  if stop <= start:
    return start, np.zeros((0, in_size), np.float32)
  local = np.arange(start, stop, dtype=np.float32) - np.float32(lo)
  src = np.maximum(np.float32(in_size) / np.float32(out) * (local + np.float32(0.5)) - np.float32(0.5), np.float32(0))
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  lam = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
  i1 = i0 + (i0 < in_size - 1)
  weights = np.zeros((stop - start, in_size), np.float32)
  rows = np.arange(stop - start)
  weights[rows, i0] += 1 - lam
  weights[rows, i1] += lam
  return start, weights


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_size: Sequence[int], *, padding: int = 1,
                threshold: float | None = MASK_THRESHOLD) -> np.ndarray:
  """torchvision's paste_masks_in_image in numpy, for the host: the footprint and interpolation weights of
  segjax.ops.masks.paste_masks_in_image (which see), computed only inside each box.

  Args:
    masks: [D, M, M] probabilities of each detection's class (the mask head's output).
    boxes: [D, 4] (x1, y1, x2, y2) in image pixels.
    image_size: (H, W) of the image to paste into.
    padding: zero border added before resizing (torchvision: 1).
    threshold: masks are `value > threshold` (bool); None returns the float32 values.

  Returns:
    bool (or float32) [D, H, W].
  """
  masks = np.asarray(masks, np.float32)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  if masks.ndim != 3 or masks.shape[1] != masks.shape[2] or len(masks) != len(boxes):
    raise ValueError(f"paste_masks: masks must be [D, M, M] with one box each, got {masks.shape} and {boxes.shape}")
  h, w = (int(s) for s in image_size)
  m = masks.shape[-1]
  # bool when thresholded: 100 detections of an 800 x 1333 image are 107 MB as bool, 4x that as float32.
  out = np.zeros((len(masks), h, w), np.float32 if threshold is None else bool)
  scale = np.float32((m + 2 * padding) / m)
  for i, (mask, box) in enumerate(zip(masks, boxes)):
    # expand_boxes in float32, then .to(torch.int64), which truncates toward zero.
    w_half, h_half = (box[2] - box[0]) * np.float32(0.5) * scale, (box[3] - box[1]) * np.float32(0.5) * scale
    x_c, y_c = (box[2] + box[0]) * np.float32(0.5), (box[3] + box[1]) * np.float32(0.5)
    x1, x2 = int(np.trunc(x_c - w_half)), int(np.trunc(x_c + w_half))
    y1, y2 = int(np.trunc(y_c - h_half)), int(np.trunc(y_c + h_half))
    top, rows = _axis_weights(y1, y2, h, m + 2 * padding)
    left, cols = _axis_weights(x1, x2, w, m + 2 * padding)
    values = rows @ np.pad(mask, padding) @ cols.T
    out[i, top:top + len(rows), left:left + len(cols)] = values if threshold is None else values > threshold
  return out


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
  """[N, H, W] binary masks -> N COCO RLEs {"size": [H, W], "counts": str} (JSON-ready)."""
  masks = np.asarray(masks)
  if not len(masks):
    return []
  rles = mask_lib.encode(np.asfortranarray(np.moveaxis(masks != 0, 0, -1).astype(np.uint8)))
  for rle in rles:
    rle["counts"] = rle["counts"].decode("ascii")
  return rles


def xywh(boxes: np.ndarray) -> np.ndarray:
  """[N, 4] (x1, y1, x2, y2) -> float64 [N, 4] COCO (x, y, width, height)."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _category(classes: np.ndarray, category_ids: Sequence[int] | None) -> list[int]:
  classes = [int(c) for c in np.asarray(classes).reshape(-1)]
  if category_ids is None:
    return classes
  if any(not 1 <= c <= len(category_ids) for c in classes):
    raise ValueError(f"class ids must be in 1..{len(category_ids)} (the length of category_ids), got {classes}")
  return [int(category_ids[c - 1]) for c in classes]


def coco_results(image_id: int, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, *,
                 valid: np.ndarray | None = None, masks: np.ndarray | None = None,
                 mask_probs: np.ndarray | None = None, image_size: Sequence[int] | None = None,
                 category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
  """One image's detections in COCO's results format, in the order given (invalid rows left out).

  Args:
    image_id: the COCO image id.
    boxes: [D, 4] (x1, y1, x2, y2) in pixels of the image.
    scores: [D] confidence.
    classes: [D] class ids 1..K.
    valid: [D] bool, False for padding rows (default: all valid).
    masks: [D, H, W] binary masks, already pasted into the image (nonzero = inside).
    mask_probs: instead of `masks`, [D, M, M] probabilities of the mask head, pasted with `paste_masks` into
      `image_size` and thresholded at 0.5.
    image_size: (H, W), needed with `mask_probs`.
    category_ids: K dataset category ids; class k is written as category_ids[k - 1] (default: k itself).

  Returns:
    dicts {"image_id", "category_id", "bbox" [x, y, w, h], "score"} and, with masks, "segmentation" (an RLE
    whose "counts" is a str), ready for `json.dump` and `COCO.loadRes`.
  """
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  keep = np.ones(len(boxes), bool) if valid is None else np.asarray(valid).astype(bool).reshape(-1)
  if masks is not None and mask_probs is not None:
    raise ValueError("coco_results: pass masks (pasted) or mask_probs (M x M), not both")
  if mask_probs is not None and image_size is None:
    raise ValueError("coco_results: mask_probs need image_size, the (H, W) to paste them into")
  cats = _category(np.asarray(classes)[keep], category_ids)
  results = [{"image_id": int(image_id), "category_id": c, "bbox": [float(v) for v in b], "score": float(s)}
             for c, b, s in zip(cats, xywh(boxes[keep]), np.asarray(scores, np.float32)[keep])]
  if masks is None and mask_probs is None:
    return results
  rows = np.nonzero(keep)[0]
  for start in range(0, len(rows), _CHUNK):  # pasted and encoded a few at a time: full-image masks are large
    chunk = rows[start:start + _CHUNK]
    pasted = np.asarray(masks)[chunk] if masks is not None else paste_masks(np.asarray(mask_probs)[chunk],
                                                                            boxes[chunk], image_size)
    for result, rle in zip(results[start:start + _CHUNK], encode_masks(pasted)):
      result["segmentation"] = rle
  return results


def results_json(path: str | pathlib.Path, results: Sequence[Mapping[str, Any]]) -> None:
  """Writes COCO-format results (`coco_results`, or `CocoEvaluator.results()`) as a JSON list."""
  pathlib.Path(path).write_text(json.dumps(list(results)) + "\n")


def _quiet(fn, *args):
  """pycocotools prints progress to stdout; the evaluation logs its own summary instead."""
  with contextlib.redirect_stdout(io.StringIO()):
    return fn(*args)


class CocoEvaluator:
  """Accumulates ground truth and detections image by image; `summarize()` gives COCO box and mask AP.

  Usage:
    evaluator = CocoEvaluator(class_names)  # or CocoEvaluator.from_json(instances_json)
    for example, detections in ...:         # unbatched numpy dicts, padded examples skipped
      evaluator.add(example, detections)
    result = evaluator.summarize()          # {"box": {...}, "mask": {...}, "per_class": [...], ...}
    print(format_table(result))

  Attributes:
    class_names: K names, of the classes 1..K.
    category_ids: K dataset category ids (results JSON), or None for 1..K.
    iou_types: the evaluations run: "bbox" and/or "segm" (mask AP needs masks in every detection).
  """

  def __init__(self, class_names: Sequence[str], *, category_ids: Sequence[int] | None = None,
               iou_types: Sequence[str] = IOU_TYPES, ground_truth: Mapping[str, Any] | None = None):
    """See the class docstring; `ground_truth` is a COCO instances dataset (prefer `from_json`)."""
    if not set(iou_types) <= set(IOU_TYPES) or not iou_types:
      raise ValueError(f"iou_types={tuple(iou_types)}: choose from {IOU_TYPES}")
    if category_ids is not None and len(category_ids) != len(class_names):
      raise ValueError(f"{len(category_ids)} category_ids for {len(class_names)} classes; pass one per class")
    self.class_names = [str(n) for n in class_names]
    self.category_ids = None if category_ids is None else [int(c) for c in category_ids]
    self.iou_types = tuple(t for t in IOU_TYPES if t in iou_types)
    self._images: dict[int, dict[str, Any]] = {}  # ground-truth images by id
    self._annotations: list[dict[str, Any]] = []  # ground truth, category ids 1..K
    self._detections: dict[int, list[dict[str, Any]]] = {}  # by image id, category ids 1..K
    self._from_json = ground_truth is not None
    if ground_truth is not None:
      self._load_ground_truth(ground_truth)

  @classmethod
  def from_json(cls, path: str | pathlib.Path, *, class_names: Sequence[str] | None = None,
                category_ids: Sequence[int] | None = None, iou_types: Sequence[str] = IOU_TYPES) -> CocoEvaluator:
    """An evaluator whose ground truth is a COCO instances JSON (polygons, RLE and crowd regions as COCO has them).

    Detections must then be in the JSON's image coordinates, for the JSON's image ids; only the images given
    detections (`add_detections`, even an empty set) are evaluated. Classes default to the JSON's categories
    sorted by id (class k = the k-th); `category_ids` chooses (and orders) them instead.
    """
    dataset = json.loads(pathlib.Path(path).read_text())
    categories = sorted(dataset["categories"], key=lambda c: c["id"])
    if category_ids is None:
      category_ids = [c["id"] for c in categories]
    if class_names is None:
      names = {c["id"]: c["name"] for c in categories}
      class_names = [names[c] for c in category_ids]
    return cls(class_names, category_ids=category_ids, iou_types=iou_types, ground_truth=dataset)

  def _load_ground_truth(self, dataset: Mapping[str, Any]) -> None:
    contiguous = {c: k + 1 for k, c in enumerate(self.category_ids or range(1, len(self.class_names) + 1))}
    known = {c["id"] for c in dataset["categories"]}
    if not set(contiguous) <= known:
      raise ValueError(f"category ids {sorted(set(contiguous) - known)} are not in the ground truth's categories")
    self._images = {int(im["id"]): dict(im) for im in dataset["images"]}
    for ann in dataset["annotations"]:
      if ann["category_id"] in contiguous:  # categories not evaluated are dropped, as COCOeval's catIds would
        # Ids from 1: COCOeval marks a detection's match by the ground truth's id, so an id 0 would be no match.
        self._annotations.append({**ann, "category_id": contiguous[ann["category_id"]],
                                  "id": len(self._annotations) + 1})

  def add_ground_truth(self, image_id: int, image_size: Sequence[int], boxes: np.ndarray, classes: np.ndarray,
                       valid: np.ndarray, crowd: np.ndarray | None = None, masks: np.ndarray | None = None) -> None:
    """One image's annotations (a padded evaluation example's fields).

    Args:
      image_id: the image's id (unique).
      image_size: (height, width) before padding; masks are cropped to it.
      boxes: [N, 4] (x1, y1, x2, y2); classes: [N] 1..K; valid: [N] nonzero for a real annotation.
      crowd: [N] nonzero for an iscrowd region (matched detections are ignored, not counted).
      masks: [N, H', W'] binary, H' >= height, W' >= width; required for mask AP.
    """
    if self._from_json:
      raise ValueError("this evaluator's ground truth comes from a COCO JSON; add detections only")
    image_id, (height, width) = int(image_id), (int(s) for s in image_size)
    if image_id in self._images:
      raise ValueError(f"image id {image_id} was added twice; every evaluated image needs its own id")
    keep = np.asarray(valid).reshape(-1) != 0
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)[keep]
    classes = np.asarray(classes).reshape(-1)[keep]
    iscrowd = np.zeros(len(boxes), bool) if crowd is None else np.asarray(crowd).reshape(-1)[keep] != 0
    if len(classes) and not ((classes >= 1) & (classes <= len(self.class_names))).all():
      raise ValueError(f"image {image_id}: ground-truth classes {classes.tolist()} outside 1..{len(self.class_names)}")
    if masks is None:
      if "segm" in self.iou_types:
        raise ValueError("mask AP needs ground-truth masks; pass masks, or iou_types=('bbox',)")
      rles, areas = [None] * len(boxes), [float(w * h) for _, _, w, h in xywh(boxes)]
    else:
      rles = encode_masks(np.asarray(masks)[keep][:, :height, :width])
      areas = [float(a) for a in mask_lib.area(rles)] if rles else []
    self._images[image_id] = {"id": image_id, "height": height, "width": width}
    for box, cls, is_crowd, rle, area in zip(xywh(boxes), classes, iscrowd, rles, areas):
      ann = {"id": len(self._annotations) + 1, "image_id": image_id, "category_id": int(cls),
             "bbox": [float(v) for v in box], "area": area, "iscrowd": int(is_crowd)}
      if rle is not None:
        ann["segmentation"] = rle
      self._annotations.append(ann)

  def add_detections(self, image_id: int, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, *,
                     valid: np.ndarray | None = None, masks: np.ndarray | None = None,
                     mask_probs: np.ndarray | None = None, image_size: Sequence[int] | None = None) -> None:
    """One image's detections (none at all is an image to evaluate too); arguments as `coco_results`.

    Masks are cropped to the image: pasted `masks` to `image_size` (default: the ground truth's), `mask_probs`
    are pasted into it.
    """
    image_id = int(image_id)
    if image_id in self._detections:
      raise ValueError(f"detections of image {image_id} were added twice")
    if image_id not in self._images:
      raise ValueError(f"image {image_id} has no ground truth; add it first (add_ground_truth)")
    if "segm" in self.iou_types and masks is None and mask_probs is None:
      raise ValueError("mask AP needs masks or mask_probs for the detections, or iou_types=('bbox',)")
    if image_size is None:
      image_size = (self._images[image_id]["height"], self._images[image_id]["width"])
    if masks is not None:
      masks = np.asarray(masks)[:, :int(image_size[0]), :int(image_size[1])]
    if "segm" not in self.iou_types:
      masks = mask_probs = None
    # The identity as category_ids: a valid detection's class outside 1..K is refused (COCOeval would drop it).
    self._detections[image_id] = coco_results(image_id, boxes, scores, classes, valid=valid, masks=masks,
                                              mask_probs=mask_probs, image_size=image_size,
                                              category_ids=range(1, len(self.class_names) + 1))

  def add(self, example: Mapping[str, Any], detections: Mapping[str, Any]) -> None:
    """One evaluation example and the model's outputs for it, both unbatched numpy dicts.

    Args:
      example: image_id, image_size, boxes, classes, valid, crowd, masks (the evaluation batch fields). With
        ground truth from a JSON only image_id (and image_size, to paste into) is read.
      detections: boxes, scores, classes, valid, and for mask AP either "masks" ([D, M, M] probabilities, the
        model's output, pasted here) or "pasted_masks" ([D, H', W'] binary, already in the image).
    """
    image_id = int(np.asarray(example["image_id"]))
    image_size = tuple(int(s) for s in np.asarray(example["image_size"]))
    if self._from_json and image_id in self._images:
      json_size = (int(self._images[image_id]["height"]), int(self._images[image_id]["width"]))
      if image_size != json_size:
        raise ValueError(f"image {image_id} is {image_size[0]} x {image_size[1]} here but {json_size[0]} x "
                         f"{json_size[1]} in the ground-truth JSON: scale the detections' boxes to the JSON's image "
                         "and pass them to add_detections with its image_size")
    if not self._from_json:
      self.add_ground_truth(image_id, image_size, example["boxes"], example["classes"], example["valid"],
                            example.get("crowd"), example.get("masks") if "segm" in self.iou_types else None)
    self.add_detections(image_id, detections["boxes"], detections["scores"], detections["classes"],
                        valid=detections.get("valid"), masks=detections.get("pasted_masks"),
                        mask_probs=detections.get("masks"), image_size=image_size)

  def add_batch(self, batch: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
    """`add` for every row of a host (numpy) evaluation batch and the model's outputs for it; rows with
    batch["index"] < 0 (the eval pipeline's padding examples) are skipped."""
    index = np.asarray(batch["index"]) if "index" in batch else np.zeros(len(outputs["boxes"]), np.int32)
    for i in np.nonzero(index >= 0)[0]:
      self.add({k: v[i] for k, v in batch.items()}, {k: v[i] for k, v in outputs.items() if k != "stats"})

  def merge(self, other: CocoEvaluator) -> None:
    """Adds `other`'s images (e.g. another process's share of the split); image ids must not repeat."""
    # pylint: disable=protected-access
    if set(self._detections) & set(other._detections):
      raise ValueError("merge: both evaluators hold detections of some of the same image ids")
    if not self._from_json:
      if set(self._images) & set(other._images):
        raise ValueError("merge: both evaluators hold some of the same image ids")
      for ann in other._annotations:
        self._annotations.append({**ann, "id": len(self._annotations) + 1})
      self._images.update(other._images)
    self._detections.update(other._detections)

  def results(self) -> list[dict[str, Any]]:
    """All detections in COCO's results format, category ids mapped by `category_ids` (for `results_json`)."""
    return [{**r, "category_id": _category([r["category_id"]], self.category_ids)[0]}
            for image_id in sorted(self._detections) for r in self._detections[image_id]]

  def _ground_truth(self) -> coco_lib.COCO:
    gt = coco_lib.COCO()
    gt.dataset = {"images": [self._images[i] for i in sorted(self._images)],
                  "annotations": copy.deepcopy(self._annotations),
                  "categories": [{"id": k + 1, "name": n} for k, n in enumerate(self.class_names)]}
    _quiet(gt.createIndex)
    return gt

  def _evaluate(self, gt: coco_lib.COCO, iou_type: str) -> cocoeval.COCOeval:
    drop = "bbox" if iou_type == "segm" else "segmentation"  # see the module docstring
    results = [{k: copy.deepcopy(v) for k, v in r.items() if k != drop}
               for image_id in sorted(self._detections) for r in self._detections[image_id]]
    if results:
      dt = _quiet(gt.loadRes, results)
    else:  # loadRes cannot take an empty list
      dt = coco_lib.COCO()
      dt.dataset = {"images": list(gt.dataset["images"]), "categories": gt.dataset["categories"], "annotations": []}
      _quiet(dt.createIndex)
    evaluation = cocoeval.COCOeval(gt, dt, iou_type)
    evaluation.params.imgIds = sorted(self._detections)
    with contextlib.redirect_stdout(io.StringIO()):
      evaluation.evaluate()
      evaluation.accumulate()
      evaluation.summarize()
    return evaluation

  def summarize(self) -> dict[str, Any]:
    """Runs COCOeval on everything added.

    Returns:
      {"box": {name: float for name in STAT_NAMES}, "mask": likewise (with "segm"), "per_class": [{"name",
      "class_id" (1..K), "category_id" (with category_ids), "box_ap", "mask_ap"}], "num_images", "num_instances"
      (non-crowd ground truth), "num_detections"}. Fractions in [0, 1]; NaN where COCO has no value (-1: no
      ground truth of that area or class).
    """
    if not self._detections:
      raise ValueError("summarize: no image was added")
    gt = self._ground_truth()
    evaluated = set(self._detections)
    per_class = [{"name": n, "class_id": k + 1, **({"category_id": self.category_ids[k]} if self.category_ids else {})}
                 for k, n in enumerate(self.class_names)]
    result: dict[str, Any] = {}
    for iou_type in self.iou_types:
      evaluation = self._evaluate(gt, iou_type)
      key = RESULT_KEYS[iou_type]
      result[key] = {name: (float(v) if v > -1 else math.nan) for name, v in zip(STAT_NAMES, evaluation.stats)}
      # precision: [IoU thresholds, recall points, classes, area ranges, max detections]; area "all", 100.
      precision = evaluation.eval["precision"][:, :, :, 0, -1]
      for k, entry in enumerate(per_class):
        p = precision[:, :, evaluation.params.catIds.index(k + 1)]
        p = p[p > -1]
        entry[f"{key}_ap"] = float(p.mean()) if p.size else math.nan
    result["per_class"] = per_class
    result["num_images"] = len(evaluated)
    result["num_instances"] = sum(1 for a in self._annotations if a["image_id"] in evaluated and not a.get("iscrowd"))
    result["num_detections"] = sum(len(r) for r in self._detections.values())
    return result


def format_table(result: Mapping[str, Any]) -> str:
  """The summary (a row per evaluation, a column per COCO number) then AP per class; percent, "-" for NaN.

  Args:
    result: the output of `CocoEvaluator.summarize`.

  Returns:
    Multi-line text, no trailing newline.
  """
  kinds = [key for key in RESULT_KEYS.values() if key in result]

  def table(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:  # names left-aligned, numbers right-aligned
      return "  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])

    return [line(header), "  ".join("-" * w for w in widths)] + [line(row) for row in rows]

  lines = table(("", *STAT_NAMES), [(kind, *(metrics.format_percent(result[kind][n]) for n in STAT_NAMES))
                                    for kind in kinds])
  lines.append("")
  lines += table(("class", *(f"{kind} AP" for kind in kinds)),
                 [(c["name"], *(metrics.format_percent(c[f"{kind}_ap"]) for kind in kinds))
                  for c in result["per_class"]])
  lines.append("")
  lines.append(f"{result['num_images']} images, {result['num_instances']} instances, "
               f"{result['num_detections']} detections")
  return "\n".join(lines)
