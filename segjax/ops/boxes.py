"""Box arithmetic for detection: areas, IoU, the R-CNN box encoding, clipping and the small-box filter.

Boxes are (x1, y1, x2, y2) in pixels, float32, with any leading shape where an op says `[..., 4]`. Every op is
written as torchvision writes it (torchvision.ops.boxes, torchvision.models.detection._utils.BoxCoder), down to
the order of the float32 operations, so that results agree to the last bits where it matters: the IoU compared
against an NMS threshold, a level floor in RoIAlign. Filters return masks instead of indices (static shapes).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

# BoxCoder weights of torchvision's Mask R-CNN: the RPN regresses raw deltas, the box head deltas scaled up
# (so that its smooth-L1/L1 loss sees targets of about unit size).
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
BOX_HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Largest log-scale a decoded box may grow by (torchvision's default): keeps exp() finite for wild predictions.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def box_area(boxes: jax.Array) -> jax.Array:
  """(x2 - x1) * (y2 - y1) of [..., 4] boxes; negative for inverted boxes, as torchvision's box_area."""
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
  """Pairwise IoU, as torchvision.ops.box_iou.

  Args:
    boxes1: [N, 4].
    boxes2: [M, 4].

  Returns:
    [N, M] float32. Two zero-area boxes have IoU 0/0 = NaN, as in torchvision; NMS treats NaN as "not above the
    threshold" (every comparison with NaN is false), as torchvision's kernel does.
  """
  boxes1, boxes2 = jnp.asarray(boxes1, jnp.float32), jnp.asarray(boxes2, jnp.float32)
  area1, area2 = box_area(boxes1), box_area(boxes2)
  lt = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
  rb = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = area1[:, None] + area2[None, :] - inter
  return inter / union


def encode_boxes(reference_boxes: jax.Array, proposals: jax.Array,
                 weights: Sequence[float] = RPN_WEIGHTS) -> jax.Array:
  """Regression targets that move `proposals` onto `reference_boxes` (BoxCoder.encode_single).

  Args:
    reference_boxes: [..., 4] the targets (matched ground truth).
    proposals: [..., 4] the boxes they are expressed against (anchors or proposals); broadcast together.
    weights: (wx, wy, ww, wh): RPN_WEIGHTS for the RPN, BOX_HEAD_WEIGHTS for the box head.

  Returns:
    [..., 4] (dx, dy, dw, dh). Degenerate proposals (zero width) give inf/NaN as in torchvision; mask them.
  """
  wx, wy, ww, wh = (float(w) for w in weights)
  reference_boxes, proposals = jnp.asarray(reference_boxes, jnp.float32), jnp.asarray(proposals, jnp.float32)
  ex_w = proposals[..., 2] - proposals[..., 0]
  ex_h = proposals[..., 3] - proposals[..., 1]
  ex_cx = proposals[..., 0] + 0.5 * ex_w
  ex_cy = proposals[..., 1] + 0.5 * ex_h
  gt_w = reference_boxes[..., 2] - reference_boxes[..., 0]
  gt_h = reference_boxes[..., 3] - reference_boxes[..., 1]
  gt_cx = reference_boxes[..., 0] + 0.5 * gt_w
  gt_cy = reference_boxes[..., 1] + 0.5 * gt_h
  # Same association as torchvision: (w * difference) / size.
  dx = wx * (gt_cx - ex_cx) / ex_w
  dy = wy * (gt_cy - ex_cy) / ex_h
  dw = ww * jnp.log(gt_w / ex_w)
  dh = wh * jnp.log(gt_h / ex_h)
  return jnp.stack([dx, dy, dw, dh], axis=-1)


def decode_boxes(rel_codes: jax.Array, boxes: jax.Array, weights: Sequence[float] = RPN_WEIGHTS,
                 bbox_xform_clip: float = BBOX_XFORM_CLIP) -> jax.Array:
  """Applies regression deltas to boxes (BoxCoder.decode_single), dw and dh clamped at `bbox_xform_clip`.

  Args:
    rel_codes: [..., 4] deltas (dx, dy, dw, dh). Per-class deltas of the box head are [N, K, 4] with boxes
      [N, 1, 4] (torchvision's [N, K * 4] reshaped).
    boxes: [..., 4] reference boxes, broadcast against rel_codes.
    weights: the weights the deltas were encoded with.
    bbox_xform_clip: upper bound of dw / ww and dh / wh before exp.

  Returns:
    [..., 4] decoded boxes, float32.
  """
  wx, wy, ww, wh = (float(w) for w in weights)
  rel_codes, boxes = jnp.asarray(rel_codes, jnp.float32), jnp.asarray(boxes, jnp.float32)
  widths = boxes[..., 2] - boxes[..., 0]
  heights = boxes[..., 3] - boxes[..., 1]
  ctr_x = boxes[..., 0] + 0.5 * widths
  ctr_y = boxes[..., 1] + 0.5 * heights
  dx = rel_codes[..., 0] / wx
  dy = rel_codes[..., 1] / wy
  dw = jnp.minimum(rel_codes[..., 2] / ww, bbox_xform_clip)
  dh = jnp.minimum(rel_codes[..., 3] / wh, bbox_xform_clip)
  pred_ctr_x = dx * widths + ctr_x
  pred_ctr_y = dy * heights + ctr_y
  half_w = 0.5 * (jnp.exp(dw) * widths)
  half_h = 0.5 * (jnp.exp(dh) * heights)
  return jnp.stack([pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], axis=-1)


def clip_boxes_to_image(boxes: jax.Array, image_size: Sequence[int] | jax.Array) -> jax.Array:
  """Clamps x to [0, width] and y to [0, height] (torchvision.ops.clip_boxes_to_image).

  Args:
    boxes: [..., 4].
    image_size: (height, width); static ints or a traced [2] array (per-image sizes under vmap).
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  size = jnp.asarray(image_size, jnp.float32)
  height, width = size[0], size[1]
  x = jnp.clip(boxes[..., 0::2], 0.0, width)
  y = jnp.clip(boxes[..., 1::2], 0.0, height)
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def small_boxes_mask(boxes: jax.Array, min_size: float) -> jax.Array:
  """True for the boxes torchvision.ops.remove_small_boxes keeps: width and height both >= min_size. [..., 4] ->
  [...] bool (a mask, not indices, so shapes stay static)."""
  boxes = jnp.asarray(boxes, jnp.float32)
  return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)
