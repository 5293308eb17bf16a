"""Panoptic FPN's panoptic fusion: one image's instance detections and semantic prediction merged into a panoptic map.

Panoptic FPN (Kirillov, Girshick, He and Dollar, "Panoptic Feature Pyramid Networks", CVPR 2019) predicts things
with its instance branch (Mask R-CNN) and stuff with its semantic branch, and combines the two with a simple greedy
heuristic: instances are laid down by decreasing score, each one taking only the pixels no better instance took (and
dropped outright when most of it is already taken); stuff then fills the pixels left, one segment per stuff class of
the semantic argmax, dropped when smaller than a minimum area. This module is that heuristic as Detectron2 implements
it in `combine_semantic_and_instance_outputs` (detectron2/modeling/meta_arch/panoptic_fpn.py), with its defaults,
run on the host in numpy: it is data-dependent, sequential work on one image at a time, done after the device step
has pasted the detections into the image (segjax.evaluation.instance).

As in Detectron2, overlap_threshold 1.0 keeps an instance already entirely covered, and stuff_area_thresh 0 keeps a
stuff class whose pixels the things all took: each such segment gets an id and no pixels.

One difference, on purpose: instances of equal score keep their input order (a stable sort); Detectron2's
`torch.argsort(-scores)` leaves the order of ties unspecified.

The semantic prediction holds stuff class ids plus one "thing" id meaning "some object" (Detectron2's semantic head
for panoptic uses 0); that id never becomes a stuff segment. The output follows Detectron2: a panoptic map of
segment ids (int32, 0 = void) and a list with one dict per segment:
  thing: {"id", "isthing": True, "score", "category_id", "instance_id"} (instance_id: the row in the input),
  stuff: {"id", "isthing": False, "category_id", "area"}.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class FusionConfig:
  """The fusion's thresholds (Detectron2's MODEL.PANOPTIC_FPN.COMBINE.* defaults).

  overlap_threshold: an instance whose fraction of pixels already taken by better instances exceeds this is dropped.
  stuff_area_thresh: a stuff segment with fewer pixels than this (after the things) is dropped.
  instances_score_thresh: instances scoring below this are ignored.
  thing_id: the semantic prediction's "some object" id, never turned into a stuff segment.
  """
  overlap_threshold: float = 0.5
  stuff_area_thresh: int = 4096
  instances_score_thresh: float = 0.5
  thing_id: int = 0

  def __post_init__(self):
    if not 0.0 <= self.overlap_threshold <= 1.0:
      raise ValueError(f"overlap_threshold must be in [0, 1], got {self.overlap_threshold}")
    if self.stuff_area_thresh < 0:
      raise ValueError(f"stuff_area_thresh must be >= 0, got {self.stuff_area_thresh}")

  @classmethod
  def from_dict(cls, values: dict[str, Any] | None = None, **overrides) -> FusionConfig:
    """A config from a mapping (e.g. a config file's section) and/or keyword arguments; unknown keys are an error."""
    merged = {**(values or {}), **overrides}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(merged) - known)
    if unknown:
      raise ValueError(f"unknown panoptic fusion settings {unknown}; known: {sorted(known)}")
    return cls(**merged)


def _check_inputs(masks, scores, classes, valid, semantic):
  masks = np.asarray(masks)
  semantic = np.asarray(semantic)
  if semantic.ndim != 2:
    raise ValueError(f"semantic must be [H, W], got shape {semantic.shape}")
  if masks.ndim != 3 or masks.shape[1:] != semantic.shape:
    raise ValueError(f"masks must be [D, H, W] with [H, W] = {semantic.shape}, got shape {masks.shape}")
  d = masks.shape[0]
  scores = np.asarray(scores, np.float64).reshape(-1)
  classes = np.asarray(classes).reshape(-1)
  valid = np.ones((d,), bool) if valid is None else np.asarray(valid, bool).reshape(-1)
  for name, arr in (("scores", scores), ("classes", classes), ("valid", valid)):
    if arr.shape[0] != d:
      raise ValueError(f"{name} must have {d} entries (one per mask), got {arr.shape[0]}")
  return masks.astype(bool), scores, classes, valid, semantic


def combine_semantic_and_instance_outputs(masks, scores, classes, valid, semantic,
                                          config: FusionConfig | None = None,
                                          ) -> tuple[np.ndarray, list[dict[str, Any]]]:
  """One image's panoptic segmentation from its instance detections and semantic prediction.

  Args:
    masks: [D, H, W] bool (or 0/1 integers) instance masks, already pasted into the image.
    scores: [D] instance scores.
    classes: [D] instance (thing) class ids.
    valid: [D] bool, False for padding rows (ignored); None means all rows are real.
    semantic: [H, W] int, the semantic branch's argmax: stuff class ids and `config.thing_id`.
    config: the thresholds; FusionConfig() (Detectron2's defaults) when None.

  Returns:
    (panoptic [H, W] int32 of segment ids 1, 2, ... with 0 for void, segments_info: one dict per segment in id
    order, things first, see the module docstring).
  """
  config = FusionConfig() if config is None else config
  masks, scores, classes, valid, semantic = _check_inputs(masks, scores, classes, valid, semantic)
  panoptic = np.zeros(semantic.shape, np.int32)
  taken = np.zeros(semantic.shape, bool)
  segments: list[dict[str, Any]] = []
  current = 0

  rows = np.flatnonzero(valid)
  order = rows[np.argsort(-scores[rows], kind="stable")]  # stable: equal scores keep their input order
  for row in order:
    score = float(scores[row])
    if score < config.instances_score_thresh:
      break  # sorted: every later instance scores lower
    mask = masks[row]
    mask_area = int(mask.sum())
    if mask_area == 0:
      continue
    intersect_area = int(np.count_nonzero(mask & taken))
    if intersect_area / mask_area > config.overlap_threshold:
      continue
    if intersect_area > 0:
      mask = mask & ~taken
    current += 1
    panoptic[mask] = current
    taken |= mask
    segments.append({"id": current, "isthing": True, "score": score, "category_id": int(classes[row]),
                     "instance_id": int(row)})

  for label in np.unique(semantic):  # ascending, as torch.unique
    if label == config.thing_id:
      continue
    region = (semantic == label) & ~taken
    area = int(np.count_nonzero(region))
    if area < config.stuff_area_thresh:
      continue
    current += 1
    panoptic[region] = current
    taken |= region
    segments.append({"id": current, "isthing": False, "category_id": int(label), "area": area})
  return panoptic, segments


def combine_batch(masks, scores, classes, valid, semantic, config: FusionConfig | None = None,
                  ) -> list[tuple[np.ndarray, list[dict[str, Any]]]]:
  """`combine_semantic_and_instance_outputs` for each image of a batch: masks [B, D, H, W], scores / classes /
  valid [B, D] (valid may be None), semantic [B, H, W]. Images of different true sizes are the caller's to crop
  first."""
  masks, scores, classes, semantic = (np.asarray(a) for a in (masks, scores, classes, semantic))
  valid = None if valid is None else np.asarray(valid)
  return [combine_semantic_and_instance_outputs(masks[i], scores[i], classes[i], None if valid is None else valid[i],
                                                semantic[i], config)
          for i in range(semantic.shape[0])]
