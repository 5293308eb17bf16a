"""Instance predictions drawn and written: an overlay (masks tinted and outlined, boxes, "class score" labels) and an
instance-id PNG with its per-id list, for evaluation reports and predict.py.

Detections come as the model returns them for one image (boxes x1y1x2y2 in pixels, scores, classes 1..K, valid)
with binary masks already pasted into the image (`segjax.evaluation.coco.paste_masks` turns the mask head's 28 x 28
probabilities into them). Only valid detections scoring at least `score_threshold` are drawn or numbered. Ids go by
score, highest first (1 = the best detection, ties in input order), and where masks overlap a pixel belongs to the
best-scoring one, as in a panoptic-style id map: a lower-scored mask never covers a higher-scored one, in the id map
and in the overlay alike.
"""

from __future__ import annotations

import colorsys
import math
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from segjax import viz
from segjax.evaluation import coco

SCORE_THRESHOLD = 0.5
_GOLDEN = (math.sqrt(5) - 1) / 2  # hue step: consecutive ids get far-apart hues, never repeating exactly


def instance_colors(n: int) -> np.ndarray:
  """uint8 [n, 3]: a distinct saturated colour per instance id 1..n (row i - 1 for id i), the same for every image."""
  hues = (np.arange(n) * _GOLDEN) % 1.0
  values = np.where(np.arange(n) % 2 == 0, 1.0, 0.8)  # alternate brightness: neighbours in hue differ twice
  rgb = [colorsys.hsv_to_rgb(h, 0.85, v) for h, v in zip(hues, values)]
  return np.round(np.asarray(rgb, np.float64).reshape(n, 3) * 255).astype(np.uint8)


def ranked(scores: np.ndarray, valid: np.ndarray | None = None, score_threshold: float = SCORE_THRESHOLD) -> np.ndarray:
  """Indices of the valid detections scoring >= score_threshold, highest score first (stable: ties in input order);
  detection ranked[i] gets id i + 1."""
  scores = np.asarray(scores, np.float32).reshape(-1)
  keep = scores >= score_threshold
  if valid is not None:
    keep &= np.asarray(valid).reshape(-1).astype(bool)
  order = np.argsort(-scores, kind="stable")
  return order[keep[order]]


def instance_ids(masks: np.ndarray, scores: np.ndarray, classes: np.ndarray, *, boxes: np.ndarray | None = None,
                 valid: np.ndarray | None = None, class_names: Sequence[str] | None = None,
                 score_threshold: float = SCORE_THRESHOLD) -> tuple[np.ndarray, list[dict[str, Any]]]:
  """The instance-id map of one image and what each id is.

  Args:
    masks: [D, H, W] binary (nonzero = inside), pasted into the image.
    scores: [D]; classes: [D] class ids 1..K; boxes: [D, 4] (x1, y1, x2, y2), copied into the list when given.
    valid: [D] bool, False for padding rows.
    class_names: K names (class k is class_names[k - 1]), copied into the list when given.
    score_threshold: detections scoring below it get no id.

  Returns:
    (ids, entries): ids is [H, W], 0 for background and i where the i-th detection by score is the best-scoring
    mask covering the pixel; uint8 when there are at most 255 ids, uint16 otherwise. entries[i - 1] describes id i:
    {"id", "index" (row in the inputs), "class_id", "name" (with class_names), "score", "box" (with boxes), "pixels"
    (the pixels id i holds in the map)}.
  """
  masks = np.asarray(masks)
  order = ranked(scores, valid, score_threshold)
  ids = np.zeros(masks.shape[1:], np.uint8 if len(order) <= 255 else np.uint16)
  entries = []
  for i, index in enumerate(order, start=1):
    free = (masks[index] != 0) & (ids == 0)
    ids[free] = i
    entry = {"id": i, "index": int(index), "class_id": int(np.asarray(classes).reshape(-1)[index])}
    if class_names is not None:
      entry["name"] = str(class_names[entry["class_id"] - 1])
    entry["score"] = float(np.asarray(scores, np.float32).reshape(-1)[index])
    if boxes is not None:
      entry["box"] = [float(v) for v in np.asarray(boxes, np.float32).reshape(-1, 4)[index]]
    entry["pixels"] = int(free.sum())
    entries.append(entry)
  return ids, entries


def outline(ids: np.ndarray) -> np.ndarray:
  """bool [H, W]: pixels of an instance (id > 0) with a 4-neighbour of another id or outside the image."""
  padded = np.pad(ids, 1)
  centre = padded[1:-1, 1:-1]
  edge = ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre) | (padded[1:-1, :-2] != centre)
          | (padded[1:-1, 2:] != centre))
  return edge & (ids > 0)


def box_pixels(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int] | None:
  """(left, top, right, bottom) inclusive pixel columns/rows a box covers: a box x1..x2 in continuous coordinates
  covers columns floor(x1) .. ceil(x2) - 1. Clipped to the image; None when nothing of it is inside."""
  x1, y1, x2, y2 = (float(v) for v in box)
  left, top = max(math.floor(x1), 0), max(math.floor(y1), 0)
  right, bottom = min(math.ceil(x2) - 1, width - 1), min(math.ceil(y2) - 1, height - 1)
  if right < left or bottom < top:
    return None
  return left, top, right, bottom


def _text_color(color: np.ndarray) -> tuple[int, int, int]:
  luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
  return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def overlay(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
            class_names: Sequence[str], *, masks: np.ndarray | None = None, valid: np.ndarray | None = None,
            score_threshold: float = SCORE_THRESHOLD, alpha: float = 0.5, draw_boxes: bool = True,
            draw_labels: bool = True, show_scores: bool = True, line_width: int | None = None) -> np.ndarray:
  """One image with its detections drawn on it.

  Each detection (id i by `instance_ids`, colour `instance_colors(n)[i - 1]`) has the pixels it holds in the id
  map blended with its colour (weight `alpha`) and the border of that region in full colour; then its box is drawn
  (`box_pixels`, `line_width` pixels wide inward) with "name score" in a filled tag above its top-left corner (inside
  the box at the image's top). Boxes and tags are drawn lowest score first, so the best detection's are on top.

  Args:
    image: uint8 [H, W] or [H, W, C] (grey repeated, extra channels dropped).
    boxes: [D, 4] (x1, y1, x2, y2) in pixels; scores: [D]; classes: [D] 1..K; class_names: K names.
    masks: [D, H', W'] binary with H' >= H, W' >= W (cropped to the image), or None to draw boxes only.
    valid, score_threshold: which detections are drawn (see `ranked`).
    alpha: the tint's weight.
    draw_boxes, draw_labels: the boxes and the tags can be left out.
    show_scores: tags say "name score" (False: "name", for ground truth).
    line_width: box outline width; default max(1, round(min(H, W) / 300)).

  Returns:
    uint8 [H, W, 3].
  """
  rgb = viz.to_rgb(image).copy()
  height, width = rgb.shape[:2]
  order = ranked(scores, valid, score_threshold)
  colors = instance_colors(len(order))
  if masks is not None and len(order):
    ids, _ = instance_ids(np.asarray(masks)[:, :height, :width], scores, classes, valid=valid,
                          score_threshold=score_threshold)
    inside = ids > 0
    tint = colors[ids[inside].astype(np.int64) - 1].astype(np.float32)
    rgb[inside] = np.clip(np.round((1 - alpha) * rgb[inside].astype(np.float32) + alpha * tint), 0, 255)
    border = outline(ids)
    rgb[border] = colors[ids[border].astype(np.int64) - 1]
  if not (draw_boxes or draw_labels) or not len(order):
    return rgb
  canvas = Image.fromarray(rgb)
  draw = ImageDraw.Draw(canvas)
  line_width = line_width or max(1, round(min(height, width) / 300))
  for rank in range(len(order) - 1, -1, -1):
    index, color = order[rank], tuple(int(c) for c in colors[rank])
    extent = box_pixels(np.asarray(boxes, np.float32).reshape(-1, 4)[index], height, width)
    if extent is None:
      continue
    if draw_boxes:
      draw.rectangle(extent, outline=color, width=line_width)
    if draw_labels:
      cls = int(np.asarray(classes).reshape(-1)[index])
      name = class_names[cls - 1] if 1 <= cls <= len(class_names) else str(cls)
      text = f"{name} {float(np.asarray(scores).reshape(-1)[index]):.2f}" if show_scores else name
      text_w, text_h = viz.text_size(text)
      left, top = extent[0], extent[1] - text_h - 2
      if top < 0:  # no room above the box: inside it
        top = extent[1]
      draw.rectangle((left, top, left + text_w + 3, top + text_h + 1), fill=color)
      draw.text((left + 2, top), text, fill=_text_color(colors[rank]))  # PIL's default font, as viz.text_size
  return np.asarray(canvas)


def save_overlay(path: str | pathlib.Path, image: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                 classes: np.ndarray, class_names: Sequence[str], **kwargs) -> None:
  """Writes `overlay(image, boxes, scores, classes, class_names, **kwargs)` as a PNG."""
  Image.fromarray(overlay(image, boxes, scores, classes, class_names, **kwargs)).save(path, format="PNG")


def save_ids(path: str | pathlib.Path, ids: np.ndarray) -> None:
  """Writes an `instance_ids` map as a greyscale PNG, 8-bit or 16-bit as its dtype (pixel value = id)."""
  ids = np.asarray(ids)
  if ids.dtype not in (np.uint8, np.uint16):
    raise ValueError(f"save_ids: ids must be uint8 or uint16, got {ids.dtype}")
  Image.fromarray(ids).save(path, format="PNG")


def panel(example: Mapping[str, Any], detections: Mapping[str, Any], class_names: Sequence[str], *,
          score_threshold: float = SCORE_THRESHOLD) -> np.ndarray:
  """Ground truth | prediction of one evaluation example, side by side under a caption, for evaluation reports.

  Args:
    example: unbatched evaluation fields: image (padded), image_size, boxes, classes, valid, crowd, masks. Crowd
      regions are not drawn (they are no instances to find).
    detections: the model's outputs for it: boxes, scores, classes, valid, and "masks" ([D, M, M] probabilities,
      pasted here with `coco.paste_masks`) or "pasted_masks" ([D, H', W'] binary), or neither (boxes only).
    class_names: K names.
    score_threshold: detections scoring below it are left out.

  Returns:
    uint8 [caption + H, 2 * W + viz.SEPARATOR, 3]: `overlay` of the ground truth (names only) and of the
    detections, cropped to image_size.
  """
  height, width = (int(s) for s in np.asarray(example["image_size"]))
  image = viz.to_rgb(np.asarray(example["image"])[:height, :width])
  keep = np.asarray(example["valid"]) > 0
  if "crowd" in example:
    keep &= np.asarray(example["crowd"]) == 0
  gt_masks = np.asarray(example["masks"])[keep] if "masks" in example else None
  truth = overlay(image, np.asarray(example["boxes"])[keep], np.ones(int(keep.sum())),
                  np.asarray(example["classes"])[keep], class_names, masks=gt_masks, score_threshold=0,
                  show_scores=False)
  boxes, scores = np.asarray(detections["boxes"], np.float32).reshape(-1, 4), np.asarray(detections["scores"])
  shown = ranked(scores, detections.get("valid"), score_threshold)  # only these are pasted
  masks = detections.get("pasted_masks")
  masks = None if masks is None else np.asarray(masks)[shown]
  if masks is None and detections.get("masks") is not None:
    masks = coco.paste_masks(np.asarray(detections["masks"])[shown], boxes[shown], (height, width))
  pred = overlay(image, boxes[shown], scores[shown], np.asarray(detections["classes"])[shown], class_names,
                 masks=masks, score_threshold=score_threshold)
  sep = np.full((height, viz.SEPARATOR, 3), 255, np.uint8)
  return viz.caption(np.concatenate([truth, sep, pred], axis=1),
                     f"ground truth  |  prediction (score >= {score_threshold:g})")


def save_panel(path: str | pathlib.Path, example: Mapping[str, Any], detections: Mapping[str, Any],
               class_names: Sequence[str], **kwargs) -> None:
  """Writes `panel(example, detections, class_names, **kwargs)` as a PNG."""
  Image.fromarray(panel(example, detections, class_names, **kwargs)).save(path, format="PNG")
