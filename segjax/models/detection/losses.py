"""Mask R-CNN's training losses over a batch, as torchvision computes them, with padded (static-shape) inputs.

- `rpn_losses`: RegionProposalNetwork.compute_loss (torchvision/models/detection/rpn.py): binary cross-entropy
  with logits averaged over the batch's sampled anchors; smooth L1 (beta 1/9) over the sampled positives, summed
  and divided by the number of sampled anchors.
- `box_losses`: fastrcnn_loss (roi_heads.py): cross-entropy averaged over the batch's sampled RoIs; class-specific
  smooth L1 (beta 1/9) of the positives' ground-truth class, summed and divided by the number of sampled RoIs.
- `mask_loss`: maskrcnn_loss (roi_heads.py): binary cross-entropy with logits of each positive RoI's ground-truth
  class mask, averaged over RoIs and pixels; 0 (with a zero gradient) when the batch has no positive RoI, as
  torchvision's `mask_logits.sum() * 0`.

torchvision concatenates the images' samples and averages over the concatenation; here the samples are padded
[B, ...] arrays with masks, and the same sums are divided by the same counts. Padded rows contribute nothing and
their values (possibly inf/NaN) never reach a loss or a gradient (`jnp.where` before the arithmetic). Where a
count is 0 (no sampled anchor or RoI at all, which torchvision turns into NaN) the loss is 0.
The targets come from targets.py (rpn_targets, sample_rois, mask_targets vmapped over the batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# torchvision's smooth-L1 beta for both the RPN and the box head.
BOX_LOSS_BETA = 1.0 / 9.0


def smooth_l1(diff: jax.Array, beta: float = BOX_LOSS_BETA) -> jax.Array:
  """Elementwise smooth L1 (torch.nn.functional.smooth_l1_loss): 0.5 d^2 / beta if |d| < beta, else |d| - beta/2."""
  a = jnp.abs(diff)
  return jnp.where(a < beta, 0.5 * diff * diff / beta, a - 0.5 * beta)


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Elementwise binary cross-entropy with logits, in the overflow-free form max(x, 0) - x z + log(1 + e^-|x|)."""
  return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _mean(values: jax.Array, mask: jax.Array, count: jax.Array | None = None) -> jax.Array:
  """sum(values where mask) / count (default: the number of True entries of mask); 0 when the count is 0."""
  total = jnp.where(mask, values, 0.0).sum()
  count = mask.sum() if count is None else count
  return total / jnp.maximum(count, 1).astype(jnp.float32)


def rpn_losses(objectness: jax.Array, deltas: jax.Array, targets: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(loss_objectness, loss_rpn_box_reg) of the batch.

  Args:
    objectness: [B, A] logits.
    deltas: [B, A, 4] predicted box deltas.
    targets: rpn_targets vmapped over the batch: labels [B, A], sampled_pos [B, A], sampled_neg [B, A],
      regression_targets [B, A, 4].

  Returns:
    Two float32 scalars.
  """
  objectness = jnp.asarray(objectness, jnp.float32)
  deltas = jnp.asarray(deltas, jnp.float32)
  pos = jnp.asarray(targets["sampled_pos"]).astype(bool)
  sampled = pos | jnp.asarray(targets["sampled_neg"]).astype(bool)
  labels = jnp.where(sampled, jnp.asarray(targets["labels"], jnp.float32), 0.0)
  loss_objectness = _mean(bce_with_logits(objectness, labels), sampled)
  reg = jnp.where(pos[..., None], jnp.asarray(targets["regression_targets"], jnp.float32), 0.0)
  per_anchor = smooth_l1(deltas - reg).sum(axis=-1)
  loss_box = _mean(per_anchor, pos, sampled.sum())
  return loss_objectness, loss_box


def box_losses(class_logits: jax.Array, box_regression: jax.Array,
               samples: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(loss_classifier, loss_box_reg) of the batch.

  Args:
    class_logits: [B, S, K + 1] (class 0 is background).
    box_regression: [B, S, (K + 1) * 4] (torchvision's layout) or [B, S, K + 1, 4].
    samples: sample_rois vmapped over the batch: labels [B, S] int, valid [B, S], regression_targets [B, S, 4]
      (positives are the valid rows with a label > 0).

  Returns:
    Two float32 scalars.
  """
  class_logits = jnp.asarray(class_logits, jnp.float32)
  b, s, num_classes = class_logits.shape
  box_regression = jnp.asarray(box_regression, jnp.float32).reshape(b, s, num_classes, 4)
  valid = jnp.asarray(samples["valid"]).astype(bool)
  labels = jnp.where(valid, jnp.asarray(samples["labels"], jnp.int32), 0)
  logp = jax.nn.log_softmax(class_logits, axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  loss_classifier = _mean(nll, valid)
  positive = valid & (labels > 0)
  pred = jnp.take_along_axis(box_regression, labels[..., None, None], axis=2)[:, :, 0]  # [B, S, 4]
  reg = jnp.where(positive[..., None], jnp.asarray(samples["regression_targets"], jnp.float32), 0.0)
  loss_box = _mean(smooth_l1(pred - reg).sum(axis=-1), positive, valid.sum())
  return loss_classifier, loss_box


def mask_loss(mask_logits: jax.Array, labels: jax.Array, mask_targets: jax.Array, valid: jax.Array) -> jax.Array:
  """loss_mask of the batch.

  Args:
    mask_logits: [B, R, M, M, K + 1] (NHWC, class last).
    labels: [B, R] int, the ground-truth class of each RoI (1..K on valid rows).
    mask_targets: [B, R, M, M] in [0, 1] (mask_targets vmapped over the batch).
    valid: [B, R] 1 for a positive RoI (the mask head's rows: the first rows of sample_rois, `positive`).

  Returns:
    A float32 scalar: the mean over valid RoIs and their M x M pixels; 0 with zero gradient if none is valid.
  """
  mask_logits = jnp.asarray(mask_logits, jnp.float32)
  valid = jnp.asarray(valid).astype(bool)
  labels = jnp.where(valid, jnp.asarray(labels, jnp.int32), 0)
  logits = jnp.take_along_axis(mask_logits, labels[:, :, None, None, None], axis=-1)[..., 0]  # [B, R, M, M]
  targets = jnp.where(valid[..., None, None], jnp.asarray(mask_targets, jnp.float32), 0.0)
  per_roi = bce_with_logits(logits, targets).sum(axis=(-2, -1))
  pixels = mask_logits.shape[2] * mask_logits.shape[3]
  return _mean(per_roi, valid, valid.sum() * pixels)
