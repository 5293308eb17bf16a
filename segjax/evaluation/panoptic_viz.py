"""Panoptic segmentations drawn on their image: stuff tinted by category, each thing by a colour of its own with its
outline, for evaluation reports (ground truth | prediction panels) and predict.py.

A panoptic segmentation is a segment-id map (int [H, W], 0 = void) and its segments, as
`segjax.evaluation.panoptic_fusion` returns them or `segjax.data.panoptic.features.decode` reads them: dicts with
"id", "category_id" (the dataset's ids, as the keys of `category_colours`) and "isthing". Stuff shows its category's
colour, so one class reads the same in every image; a thing's colour is its category's colour jittered by its segment
id, so neighbouring objects of one class stay apart while keeping their class's hue. Crowd regions (ground truth
segments with "iscrowd") are tinted like stuff, unoutlined: they are no single object to find. Void pixels, and
pixels of ids that no segment lists, are left as they are.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from segjax import viz
from segjax.evaluation import instance_viz

_JITTER = 64  # how far (per RGB unit vector) a thing's colour moves from its category's: visible, hue kept


def _is_outlined(segment: Mapping[str, Any]) -> bool:
  return bool(segment.get("isthing", False)) and not bool(segment.get("iscrowd", False))


def _jitter(colour: np.ndarray, seed: int) -> np.ndarray:
  """`colour` moved by _JITTER along a direction drawn from `seed`; a component that would leave 0..255 moves the
  other way instead (clipping could map two things of a saturated colour onto the same corner)."""
  direction = np.random.default_rng(seed).normal(size=3)
  step = _JITTER * direction / max(np.linalg.norm(direction), 1e-9)
  moved = colour + step
  moved = np.where((moved < 0) | (moved > 255), colour - step, moved)
  return np.clip(np.round(moved), 0, 255)


def segment_colours(segments: Sequence[Mapping[str, Any]],
                    category_colours: Mapping[int, Sequence[int]]) -> dict[int, tuple[int, int, int]]:
  """{segment id: (r, g, b)}: stuff (and crowd) segments get their category's colour, each thing its category's
  colour jittered deterministically by its segment id, distinct from every other thing of `segments`.

  Raises:
    ValueError: a segment's category has no colour in `category_colours` (naming the categories).
  """
  missing = sorted({int(s["category_id"]) for s in segments} - {int(c) for c in category_colours})
  if missing:
    raise ValueError(f"no colour for categories {missing}: category_colours has {sorted(category_colours)}")
  colours: dict[int, tuple[int, int, int]] = {}
  used: set[tuple[int, int, int]] = set()
  # Id order: which thing gives way on a clash never depends on the list's order.
  for segment in sorted(segments, key=lambda s: int(s["id"])):
    base = np.asarray(category_colours[int(segment["category_id"])], np.float64)
    seg_id = int(segment["id"])
    if not _is_outlined(segment):
      colours[seg_id] = tuple(int(c) for c in base)
      continue
    colour, attempt = tuple(int(c) for c in _jitter(base, seg_id)), 0
    while colour in used:  # rare (rounding); a further draw keeps it deterministic and distinct
      attempt += 1
      colour = tuple(int(c) for c in _jitter(base, seg_id + attempt * 1_000_003))
    used.add(colour)
    colours[seg_id] = colour
  return colours


def _check(image: np.ndarray, panoptic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  rgb, panoptic = viz.to_rgb(image), np.asarray(panoptic)
  if panoptic.shape != rgb.shape[:2]:
    raise ValueError(f"panoptic map {panoptic.shape} and image {rgb.shape[:2]} must have the same [H, W]")
  return rgb, panoptic


def _label(draw: ImageDraw.ImageDraw, mask: np.ndarray, text: str, colour: Sequence[int]) -> None:
  """A filled "name" tag centred on the segment's median pixel (which lies inside most shapes), kept in the image."""
  rows, cols = np.nonzero(mask)
  text_w, text_h = viz.text_size(text)
  height, width = mask.shape
  left = int(min(max(np.median(cols) - text_w / 2, 0), max(width - text_w - 3, 0)))
  top = int(min(max(np.median(rows) - text_h / 2, 0), max(height - text_h - 1, 0)))
  draw.rectangle((left, top, left + text_w + 3, top + text_h + 1), fill=tuple(colour))
  draw.text((left + 2, top), text, fill=instance_viz._text_color(np.asarray(colour)))


def overlay(image: np.ndarray, panoptic: np.ndarray, segments: Sequence[Mapping[str, Any]],
            category_colours: Mapping[int, Sequence[int]], *, alpha: float = 0.5,
            names: Mapping[int, str] | None = None) -> np.ndarray:
  """One image with its panoptic segmentation drawn on it.

  Every listed segment's pixels are blended with its `segment_colours` colour (weight `alpha`); then each thing's
  border (its pixels with a 4-neighbour of another id or outside the image, `instance_viz.outline`) is drawn in its
  colour, opaque; then, with `names`, each thing gets its class name in a tag of its colour.

  Args:
    image: uint8 [H, W] or [H, W, C] (grey repeated, extra channels dropped).
    panoptic: int [H, W] segment ids, 0 = void.
    segments: the segments' dicts ("id", "category_id", "isthing", optionally "iscrowd").
    category_colours: {category_id: (r, g, b)} for every category in `segments`.
    alpha: the tint's weight.
    names: {category_id: name}; things get name tags when given.

  Returns:
    uint8 [H, W, 3].
  """
  rgb, panoptic = _check(image, panoptic)
  colours = segment_colours(segments, category_colours)
  layer = np.zeros_like(rgb)
  tinted = np.zeros(panoptic.shape, bool)
  things = np.zeros(panoptic.shape, np.int64)  # thing ids only: stuff and void are "another id" for the outline
  for segment in segments:
    mask = panoptic == int(segment["id"])
    layer[mask] = colours[int(segment["id"])]
    tinted |= mask
    if _is_outlined(segment):
      things[mask] = int(segment["id"])
  out = rgb.copy()
  # float64 (viz.overlay blends in float32, where e.g. 0.7 * a + 0.3 * b can round the other way at .5)
  blend = (1 - alpha) * rgb[tinted].astype(np.float64) + alpha * layer[tinted].astype(np.float64)
  out[tinted] = np.clip(np.round(blend), 0, 255).astype(np.uint8)
  border = instance_viz.outline(things)
  for seg_id in np.unique(things[border]):
    out[border & (things == seg_id)] = colours[int(seg_id)]
  if not names:
    return out
  canvas = Image.fromarray(out)
  draw = ImageDraw.Draw(canvas)
  for segment in segments:
    mask = things == int(segment["id"])
    if _is_outlined(segment) and mask.any():
      category = int(segment["category_id"])
      _label(draw, mask, str(names.get(category, category)), colours[int(segment["id"])])
  return np.asarray(canvas)


def panel(image: np.ndarray, gt_panoptic: np.ndarray, gt_segments: Sequence[Mapping[str, Any]],
          pred_panoptic: np.ndarray, pred_segments: Sequence[Mapping[str, Any]],
          category_colours: Mapping[int, Sequence[int]], names: Mapping[int, str] | None = None, *,
          alpha: float = 0.5) -> np.ndarray:
  """Ground truth | prediction of one image side by side, for evaluation reports: `overlay` of each, separated by a
  white strip `viz.SEPARATOR` pixels wide (`viz.caption` adds a title when wanted).

  Returns:
    uint8 [H, 2 * W + viz.SEPARATOR, 3].
  """
  truth = overlay(image, gt_panoptic, gt_segments, category_colours, alpha=alpha, names=names)
  pred = overlay(image, pred_panoptic, pred_segments, category_colours, alpha=alpha, names=names)
  sep = np.full((truth.shape[0], viz.SEPARATOR, 3), 255, np.uint8)
  return np.concatenate([truth, sep, pred], axis=1)
