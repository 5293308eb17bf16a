"""Greedy non-maximum suppression with a fixed output count, and its class-aware (batched) form.

Semantics are those of torchvision's CPU kernel (torchvision/csrc/ops/cpu/nms_kernel.cpp):
- order: scores sorted descending with a *stable* sort (`scores.sort(stable=true, descending=true)`), so of
  equal scores the box with the lower input index comes first. This is the tie rule matched here. (torchvision's
  CUDA kernel sorts unstably; on ties its order, and so its kept set, can differ from the CPU kernel's.)
- greedy: walk that order; keep a box unless an earlier kept box overlaps it with IoU > iou_threshold (strictly
  greater), where IoU = inter / (area_i + area_j - inter) in float32 (NaN, from two zero-area boxes, never
  suppresses) and the float32 IoU is compared with the threshold as a double, as the kernel does.

Static shapes: the inputs may be padded (`valid` marks the real boxes; padded ones are never kept and never
suppress), and the output is always `max_output` indices into the input, in kept (descending score) order,
padded with -1, plus a mask of the real entries. When more than `max_output` boxes survive, the first
`max_output` of torchvision's result are returned: the greedy walk stops there.

The walk is a `lax.while_loop` over the sorted boxes with one [N] IoU row per kept box (O(N) memory, no [N, N]
matrix); it stops after `max_output` boxes are kept or the boxes run out.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp


def _threshold_f32(iou_threshold) -> jax.Array | np.float32:
  """A float32 t such that, for every float32 x, x > t exactly when x > iou_threshold in double precision.

  torchvision compares the float32 IoU with the threshold as a double. Rounding 0.3 to float32 rounds it *up*
  (0.30000001), and an IoU equal to that float32 would then count as above 0.3 in torchvision but not above
  float32(0.3); rounding the threshold *down* instead gives the same answer for every float32 IoU.
  """
  if isinstance(iou_threshold, (int, float, np.floating)):
    t = float(iou_threshold)
    f = np.float32(t)
    if float(f) > t:
      f = np.nextafter(f, np.float32(-np.inf))
    return f
  return jnp.asarray(iou_threshold, jnp.float32)  # traced: float32 already, nothing to round


def nms(boxes: jax.Array, scores: jax.Array, iou_threshold: float, max_output: int,
        valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS of [N, 4] boxes (x1, y1, x2, y2), as torchvision.ops.nms, with a fixed output size.

  Args:
    boxes: [N, 4] float.
    scores: [N] float.
    iou_threshold: boxes overlapping a kept box with IoU > iou_threshold are suppressed.
    max_output: static number of output slots.
    valid: optional [N] bool; False marks padding (never kept, never suppresses). Default: all valid.

  Returns:
    (indices [max_output] int32: the kept boxes' input indices in descending score order, then -1;
     kept [max_output] bool: True for the real entries, i.e. indices >= 0).
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  n = boxes.shape[0]
  max_output = int(max_output)
  if n == 0:  # nothing to keep; the loop below would index empty arrays while tracing
    return jnp.full((max_output,), -1, jnp.int32), jnp.zeros((max_output,), bool)
  valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
  iota = jnp.arange(n, dtype=jnp.int32)
  # Invalid boxes last, then scores descending; is_stable keeps input order among equal scores (the tie rule).
  _, _, order = jax.lax.sort((jnp.where(valid, 0, 1).astype(jnp.int32), -scores, iota), num_keys=2,
                             is_stable=True)
  sorted_boxes = boxes[order]
  sorted_valid = valid[order]
  x1, y1, x2, y2 = (sorted_boxes[:, k] for k in range(4))
  areas = (x2 - x1) * (y2 - y1)
  threshold = _threshold_f32(iou_threshold)

  def cond(state):
    i, count, _, _ = state
    # Invalid boxes are sorted last: the first one ends the walk (the detections' NMS gets thousands of padded
    # candidates and a few hundred real ones).
    return (i < n) & (count < max_output) & sorted_valid[jnp.minimum(i, n - 1)]

  def body(state):
    i, count, suppressed, keep = state
    take = sorted_valid[i] & ~suppressed[i]
    keep = keep.at[count].set(jnp.where(take, order[i], keep[count]))
    # The kernel's IoU, term for term: max/min corners, clamp at 0, inter / (area_i + area_j - inter).
    w = jnp.maximum(0.0, jnp.minimum(x2[i], x2) - jnp.maximum(x1[i], x1))
    h = jnp.maximum(0.0, jnp.minimum(y2[i], y2) - jnp.maximum(y1[i], y1))
    inter = w * h
    iou = inter / (areas[i] + areas - inter)
    suppressed = suppressed | (take & (iou > threshold))
    return i + 1, count + take.astype(jnp.int32), suppressed, keep

  init = (jnp.int32(0), jnp.int32(0), jnp.zeros((n,), bool), jnp.full((max_output,), -1, jnp.int32))
  _, count, _, keep = jax.lax.while_loop(cond, body, init)
  kept = jnp.arange(max_output, dtype=jnp.int32) < count
  return keep, kept


def batched_nms(boxes: jax.Array, scores: jax.Array, idxs: jax.Array, iou_threshold: float, max_output: int,
                valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """NMS within each category only, as torchvision.ops.batched_nms (its coordinate-offset form).

  Each box is shifted by idxs * (max coordinate + 1), so that boxes of different categories cannot overlap, and
  one NMS runs over all of them. The max is taken over the valid boxes only, which is torchvision's value for
  the unpadded input, so the shifted coordinates (and their float32 rounding) are the same as torchvision's.
  Like torchvision's trick this assumes coordinates >= -1 (clip boxes to the image first): with boxes far left
  of 0 shifted categories could touch. (torchvision runs a per-category loop instead above 1000 CPU boxes; it
  computes IoUs on unshifted coordinates, which can differ in the last bit.)

  Args:
    boxes: [N, 4].
    scores: [N].
    idxs: [N] int category of each box.
    iou_threshold: as `nms`.
    max_output: as `nms`.
    valid: as `nms`.

  Returns:
    As `nms`.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  valid = jnp.ones(boxes.shape[:1], bool) if valid is None else jnp.asarray(valid, bool)
  max_coordinate = jnp.max(jnp.where(valid[:, None], boxes, -jnp.inf), initial=-jnp.inf)
  max_coordinate = jnp.where(jnp.isfinite(max_coordinate), max_coordinate, 0.0)  # no valid box: no offset needed
  offsets = jnp.asarray(idxs).astype(jnp.float32) * (max_coordinate + 1.0)
  return nms(boxes + offsets[:, None], scores, iou_threshold, max_output, valid)
