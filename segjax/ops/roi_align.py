"""RoIAlign (He et al., Mask R-CNN, 2017) as torchvision computes it, and its FPN form (MultiScaleRoIAlign).

Feature maps are NHWC as everywhere in segjax: one image's map is [H, W, C]; vmap over the batch. Boxes are
(x1, y1, x2, y2) in image pixels; `spatial_scale` maps them onto the feature map.

Sampling is torchvision's roi_align kernel (torchvision/csrc/ops/cpu/roi_align_common.h), step for step:
- aligned=True shifts the box by -0.5 (pixel centres at integer + 0.5); aligned=False clamps its size at 1;
- each of the output_size bins holds sampling_ratio x sampling_ratio points at
  start + p * bin + (i + 0.5) * bin / sampling_ratio, and the bin's value is their mean;
- a point with y < -1 or y > H (or x < -1 or x > W) contributes 0; otherwise y, x are clamped at 0, and a point
  past the last row/column takes that row/column (weights 1 and 0).
sampling_ratio must be > 0: torchvision's adaptive mode (-1) makes the number of points depend on the box size,
which a static shape cannot hold; Mask R-CNN uses 2.

Gradients: w.r.t. the features this is a gather whose transpose is torchvision's backward (the scatter-add of
the same bilinear weights). w.r.t. the boxes JAX differentiates the sample positions piecewise; torchvision
returns no box gradient, and Mask R-CNN stops gradients at the proposals anyway.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from segjax.ops.boxes import box_area


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  return (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(a) for a in v)


def _sample_axis(start, bin_size, pooled: int, grid: int, size):
  """Sample positions along one axis and their bilinear rows: (low, high, w_low, w_high) each [K, pooled, grid].

  start, bin_size: [K] float32; size: [K] (or scalar) extent of the map along this axis.
  """
  p = jnp.arange(pooled, dtype=jnp.float32)[None, :, None]
  i = jnp.arange(grid, dtype=jnp.float32)[None, None, :]
  start, bin_size = start[:, None, None], bin_size[:, None, None]
  # The kernel's float32 association: start + p * bin + ((i + .5) * bin) / grid.
  pos = start + p * bin_size + (i + 0.5) * bin_size / jnp.float32(grid)
  size = jnp.asarray(size)
  size = size[:, None, None] if size.ndim else size
  size_f = size.astype(jnp.float32)
  inside = (pos >= -1.0) & (pos <= size_f)  # NaN positions fail both, as in the kernel
  pos = jnp.maximum(pos, 0.0)
  low = jnp.floor(pos).astype(jnp.int32)
  last = low >= size - 1
  low = jnp.where(last, size - 1, low)
  high = jnp.where(last, low, low + 1)
  pos = jnp.where(last, low.astype(jnp.float32), pos)
  frac = pos - low.astype(jnp.float32)
  zero = jnp.zeros_like(frac)
  return low, high, jnp.where(inside, 1.0 - frac, zero), jnp.where(inside, frac, zero)


def _roi_align_flat(flat: jax.Array, boxes: jax.Array, heights, widths, offsets, scales, output_size,
                    sampling_ratio: int, aligned: bool) -> jax.Array:
  """RoIAlign over a flattened map [P, C]: box k reads the [heights[k], widths[k]] map starting at row
  offsets[k] of `flat`, with spatial scale scales[k]. Returns [K, oh, ow, C]."""
  oh, ow = _pair(output_size)
  g = int(sampling_ratio)
  offset = 0.5 if aligned else 0.0
  boxes = jnp.asarray(boxes, jnp.float32)
  start_w = boxes[:, 0] * scales - offset
  start_h = boxes[:, 1] * scales - offset
  roi_w = boxes[:, 2] * scales - offset - start_w
  roi_h = boxes[:, 3] * scales - offset - start_h
  if not aligned:
    roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
  ylo, yhi, wylo, wyhi = _sample_axis(start_h, roi_h / oh, oh, g, heights)  # [K, oh, g]
  xlo, xhi, wxlo, wxhi = _sample_axis(start_w, roi_w / ow, ow, g, widths)  # [K, ow, g]
  k = boxes.shape[0]
  base = jnp.broadcast_to(jnp.asarray(offsets, jnp.int32), (k,))[:, None, None, None, None]
  wid = jnp.broadcast_to(jnp.asarray(widths, jnp.int32), (k,))[:, None, None, None, None]

  def corner(rows, cols):  # [K, oh, g, ow, g, C]
    idx = base + rows[:, :, :, None, None] * wid + cols[:, None, None, :, :]
    return flat[idx]

  def weight(wy, wx):  # [K, oh, g, ow, g, 1]
    return (wy[:, :, :, None, None] * wx[:, None, None, :, :])[..., None]

  val = (weight(wylo, wxlo) * corner(ylo, xlo) + weight(wylo, wxhi) * corner(ylo, xhi)
         + weight(wyhi, wxlo) * corner(yhi, xlo) + weight(wyhi, wxhi) * corner(yhi, xhi))
  return val.sum(axis=(2, 4)) / jnp.float32(max(g * g, 1))


def roi_align(features: jax.Array, boxes: jax.Array, output_size: int | Sequence[int], spatial_scale: float = 1.0,
              sampling_ratio: int = 2, aligned: bool = True) -> jax.Array:
  """RoIAlign of one image's feature map, as torchvision.ops.roi_align.

  Args:
    features: [H, W, C] (vmap for a batch).
    boxes: [K, 4] (x1, y1, x2, y2) in image coordinates. K may be 0.
    output_size: (oh, ow) or one int.
    spatial_scale: feature map size / image size (1/4 for P2).
    sampling_ratio: sampling points per bin and axis, > 0.
    aligned: torchvision's `aligned` (Mask R-CNN in torchvision uses False in its pooler; Detectron2 and this
      project's default, True, are the half-pixel-correct form).

  Returns:
    [K, oh, ow, C] with features' dtype promoted to float32.
  """
  if sampling_ratio <= 0:
    raise ValueError(f"sampling_ratio must be > 0 for static shapes, got {sampling_ratio}")
  if features.ndim != 3:
    raise ValueError(f"roi_align expects one image's [H, W, C] map (vmap for a batch), got {features.shape}")
  h, w, c = features.shape
  flat = jnp.asarray(features, jnp.float32).reshape(h * w, c)
  return _roi_align_flat(flat, boxes, h, w, 0, jnp.float32(spatial_scale), output_size, sampling_ratio, aligned)


def infer_scale(feature_size: Sequence[int], image_size: Sequence[int]) -> float:
  """torchvision's _infer_scale: 2 ** round(log2(feature height / image height)) (the height decides)."""
  return 2.0 ** round(math.log2(float(feature_size[0]) / float(image_size[0])))


def fpn_levels(boxes: jax.Array, k_min: int = 2, k_max: int = 5, canonical_scale: float = 224,
               canonical_level: int = 4, eps: float = 1e-6) -> jax.Array:
  """FPN level of each box (torchvision's LevelMapper, Eqn. 1 of the FPN paper), as an index from k_min.

  k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps), clamped to [k_min, k_max]; returns
  k - k_min, int32 [...]. The float32 operations are in torchvision's order, so a box of side exactly 112 or
  224 lands on the same level.
  """
  s = jnp.sqrt(box_area(jnp.asarray(boxes, jnp.float32)))
  k = jnp.floor(jnp.float32(canonical_level) + jnp.log2(s / jnp.float32(canonical_scale)) + jnp.float32(eps))
  return (jnp.clip(k, k_min, k_max) - k_min).astype(jnp.int32)


def multiscale_roi_align(features: Sequence[jax.Array], boxes: jax.Array, image_size: Sequence[int],
                         output_size: int | Sequence[int] = 7, sampling_ratio: int = 2, aligned: bool = True,
                         canonical_scale: float = 224, canonical_level: int = 4) -> jax.Array:
  """RoIAlign from the FPN level each box maps to (torchvision.ops.MultiScaleRoIAlign).

  Scales are inferred as torchvision does (`infer_scale` against `image_size`, the largest unpadded image size
  of the batch), the levels k_min..k_max are -log2 of the first and last scale, and each box is pooled from its
  `fpn_levels` map only. All levels are flattened into one [sum H_l W_l, C] array and each box gathers from its
  own level's rows: one gather for every level, no per-level masking.

  Args:
    features: one [H_l, W_l, C] map per level, finest first (P2..P5 for Mask R-CNN).
    boxes: [K, 4] in image coordinates.
    image_size: (H, W) static.
    output_size, sampling_ratio, aligned: as `roi_align` (7 for the box head, 14 for the mask head).
    canonical_scale, canonical_level: the LevelMapper's s0 and k0.

  Returns:
    [K, oh, ow, C] float32.
  """
  if sampling_ratio <= 0:
    raise ValueError(f"sampling_ratio must be > 0 for static shapes, got {sampling_ratio}")
  scales = [infer_scale(f.shape[:2], image_size) for f in features]
  k_min, k_max = int(-math.log2(scales[0])), int(-math.log2(scales[-1]))
  boxes = jnp.asarray(boxes, jnp.float32)
  level = fpn_levels(boxes, k_min, k_max, canonical_scale, canonical_level)
  sizes = [f.shape[:2] for f in features]
  flat = jnp.concatenate([jnp.asarray(f, jnp.float32).reshape(-1, f.shape[-1]) for f in features], axis=0)
  starts = np.concatenate([[0], np.cumsum([h * w for h, w in sizes])[:-1]]).astype(np.int32)

  def per_level(values, dtype):
    return jnp.asarray(np.asarray(values, dtype))[level]

  return _roi_align_flat(flat, boxes, per_level([h for h, _ in sizes], np.int32),
                         per_level([w for _, w in sizes], np.int32), per_level(starts, np.int32),
                         per_level(scales, np.float32), output_size, sampling_ratio, aligned)
