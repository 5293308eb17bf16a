"""Pasting the mask head's fixed-size masks into the image, as torchvision's paste_masks_in_image.

torchvision (roi_heads.paste_masks_in_image) pads each M x M mask by one zero pixel on every side, grows its
box by the same factor (M + 2) / M about the centre, truncates the box to int64 (toward zero), resizes the
padded mask to (y2 - y1 + 1, x2 - x1 + 1) pixels with bilinear interpolation (align_corners=False), and copies
the part inside the image to rows y1..y2, columns x1..x2. The resize has a data-dependent size, so here it is
written the other way round with static shapes: for every image row (column) the source coordinate in the
padded mask is computed from that same integer box, with PyTorch's resize rule
(src = (dst + 0.5) * in / out - 0.5, clamped at 0, the upper neighbour clamped at the last row), and rows
(columns) outside the box get weight 0. Bilinear interpolation is separable, so one mask is pasted as
rows [H, M+2] @ mask [M+2, M+2] @ columns [M+2, W]. The integer box, the footprint and the interpolation
weights are torchvision's, so the result agrees up to float32 rounding of the interpolation sums: there is no
difference at box borders. (A box entirely right of or below the image pastes nothing here; torchvision raises on
it, its source slice getting a negative end. Detections are clipped to the image first, so it meets none.)
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def _axis_weights(lo: jax.Array, hi: jax.Array, size: int, in_size: int) -> jax.Array:
  """[size, in_size] interpolation matrix of one axis for the integer box extent lo..hi (inclusive)."""
  out = jnp.maximum(hi - lo + 1, 1)  # torchvision: max(int(x2 - x1 + 1), 1)
  dst = jnp.arange(size, dtype=jnp.int32)
  local = dst - lo  # position inside the resized mask
  inside = (dst >= jnp.maximum(lo, 0)) & (dst < jnp.minimum(hi + 1, size))
  scale = jnp.float32(in_size) / out.astype(jnp.float32)
  src = jnp.maximum(scale * (local.astype(jnp.float32) + 0.5) - 0.5, 0.0)
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_size - 1)
  lam = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
  i1 = i0 + (i0 < in_size - 1).astype(jnp.int32)
  w = ((1.0 - lam)[:, None] * jax.nn.one_hot(i0, in_size, dtype=jnp.float32)
       + lam[:, None] * jax.nn.one_hot(i1, in_size, dtype=jnp.float32))
  return jnp.where(inside[:, None], w, 0.0)


def paste_mask(mask: jax.Array, box: jax.Array, image_size: Sequence[int], padding: int = 1) -> jax.Array:
  """One [M, M] mask (probabilities or logits) pasted into a zero [H, W] image at `box` (x1, y1, x2, y2)."""
  mask = jnp.asarray(mask, jnp.float32)
  m = mask.shape[-1]
  if mask.shape != (m, m):
    raise ValueError(f"paste_mask expects a square [M, M] mask, got {mask.shape}")
  h, w = (int(s) for s in image_size)
  padded = jnp.pad(mask, padding)
  box = jnp.asarray(box, jnp.float32)
  # expand_boxes, with the scale as a float32 multiplier as torch applies a Python float to a float32 tensor.
  scale = jnp.float32((m + 2 * padding) / m)
  w_half = (box[2] - box[0]) * 0.5 * scale
  h_half = (box[3] - box[1]) * 0.5 * scale
  x_c = (box[2] + box[0]) * 0.5
  y_c = (box[3] + box[1]) * 0.5
  # .to(torch.int64) truncates toward zero (a box starting at -0.7 starts at 0).
  x1, x2 = jnp.trunc(x_c - w_half).astype(jnp.int32), jnp.trunc(x_c + w_half).astype(jnp.int32)
  y1, y2 = jnp.trunc(y_c - h_half).astype(jnp.int32), jnp.trunc(y_c + h_half).astype(jnp.int32)
  rows = _axis_weights(y1, y2, h, m + 2 * padding)
  cols = _axis_weights(x1, x2, w, m + 2 * padding)
  # HIGHEST: the default precision of a TPU/GPU matmul would round the mask and weights to bfloat16 / TF32.
  return jnp.einsum("yi,ij,xj->yx", rows, padded, cols, precision=jax.lax.Precision.HIGHEST)


def paste_masks_in_image(masks: jax.Array, boxes: jax.Array, image_size: Sequence[int],
                         padding: int = 1) -> jax.Array:
  """torchvision's paste_masks_in_image with static shapes.

  Args:
    masks: [N, M, M] (the mask head's output for each detection's class, e.g. 28 x 28 probabilities).
    boxes: [N, 4] detection boxes in image coordinates.
    image_size: static (H, W) of the image to paste into.
    padding: zero border added to the masks before resizing (torchvision: 1).

  Returns:
    [N, H, W] float32, zero outside each box (threshold at 0.5 for binary masks). Memory is N * H * W floats:
    paste in chunks of detections for large images.
  """
  return jax.vmap(lambda mk, bx: paste_mask(mk, bx, image_size, padding))(masks, boxes)
