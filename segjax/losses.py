"""Segmentation losses: (class-weighted, optionally label-smoothed) cross-entropy and soft Dice (linear or squared
denominator); focal, Lovász-softmax, Tversky, Jaccard and OHEM live in segjax.losses_extra.

Pixels are ignored through a per-pixel `weights` array (0 = ignore, also used
for padding), never through a magic label value. Everything is a sum over the
whole global batch, so under jit with a sharded batch the result is the same on
any number of devices.
"""

import jax
import jax.numpy as jnp
import optax


def _compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
  # At least float32: bf16/f16 logits lose too much in log-softmax and sums.
  # float64 (under x64) stays float64, which keeps gradient checks precise.
  return jnp.promote_types(dtype, jnp.float32)


def _valid_inputs(logits, labels, weights):
  """Casts inputs and replaces the labels of ignored pixels by 0.

  An ignored pixel may carry any label (e.g. 255); indexing with it would give
  NaN, and NaN * 0 is still NaN.
  """
  logits = jnp.asarray(logits)
  logits = logits.astype(_compute_dtype(logits.dtype))
  weights = jnp.asarray(weights).astype(logits.dtype)
  labels = jnp.where(weights > 0, jnp.asarray(labels).astype(jnp.int32), 0)
  return logits, labels, weights


def _safe_ratio(num: jax.Array, den: jax.Array, empty: float) -> jax.Array:
  """num / den, or `empty` where den == 0, with finite gradients everywhere."""
  safe_den = jnp.where(den == 0, 1.0, den)
  return jnp.where(den == 0, empty, num / safe_den)


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    class_weights: jax.Array | None = None,
    label_smoothing: float = 0.0,
) -> jax.Array:
  """Weighted mean softmax cross-entropy over valid pixels.

  Normalised like PyTorch's `F.cross_entropy(weight=w, ignore_index=...)` with
  reduction='mean': sum_p m_p w[y_p] ce_p / sum_p m_p w[y_p], where m_p is the
  pixel weight (0 = ignore; other values multiply in).

  With label_smoothing = e, as torch's `label_smoothing`: the target is
  (1 - e) one_hot(y) + e / K, so ce_p becomes
  (1 - e) w[y_p] ce_p + e / K sum_k w[k] (-log p_k), still divided by
  sum_p m_p w[y_p] (torch weighs the smoothed term by each class's weight).

  Args:
    logits: [B, H, W, K], any float dtype; computed in at least float32.
    labels: [B, H, W] int in [0, K) (anything where weights == 0).
    weights: [B, H, W] float or bool pixel weights, 0 = ignore.
    class_weights: [K] or None.
    label_smoothing: e in [0, 1].

  Returns:
    Scalar (float32 unless logits are float64); 0 if no pixel is valid.
  """
  logits, labels, weights = _valid_inputs(logits, labels, weights)
  num_classes = logits.shape[-1]
  cw = jnp.ones((num_classes,), logits.dtype) if class_weights is None else jnp.asarray(class_weights, logits.dtype)
  pixel_weights = weights * cw[labels]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  num = jnp.sum(pixel_weights * ce)
  if label_smoothing:
    # Static branch: without smoothing the log-softmax over every class is never materialised.
    smooth = -jnp.sum(jax.nn.log_softmax(logits, axis=-1) * cw, axis=-1)
    num = (1.0 - label_smoothing) * num + label_smoothing / num_classes * jnp.sum(weights * smooth)
  return _safe_ratio(num, jnp.sum(pixel_weights), 0.0)


def dice_loss(
    logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    *,
    smooth: float = 1.0,
    class_weights: jax.Array | None = None,
    squared: bool = False,
) -> jax.Array:
  """Multi-class soft Dice loss, 1 - mean_c dice_c.

  dice_c = (2 sum p_c g_c + smooth) / (sum p_c + sum g_c + smooth), or with
  `squared` V-Net's (2 sum p_c g_c + smooth) / (sum p_c^2 + sum g_c^2 + smooth)
  (Milletari et al. 2016, eq. 1), with
  p = softmax(logits), g = one_hot(labels) and the sums running over every
  valid pixel of the batch (batch-wise Dice, nnU-Net's `batch_dice`): one
  ratio per class for the whole batch rather than per image, so a class that
  is small or absent in one image does not give that image a noisy ratio.
  Pixel weights multiply p and g; ignored pixels contribute nothing. A class
  with no ground-truth pixel gets dice_c = smooth / (sum p_c + smooth), near 1
  only if it is hardly predicted. With no valid pixel at all the loss is 0.

  Args:
    logits: [B, H, W, K], any float dtype; computed in at least float32.
    labels: [B, H, W] int in [0, K) (anything where weights == 0).
    weights: [B, H, W] float or bool pixel weights, 0 = ignore.
    smooth: additive smoothing of numerator and denominator.
    class_weights: [K] weights of the mean over classes, or None (plain mean).
    squared: V-Net's squared denominator.

  Returns:
    Scalar in [0, 1] (for non-negative weights).
  """
  logits, labels, weights = _valid_inputs(logits, labels, weights)
  num_classes = logits.shape[-1]
  probs = jax.nn.softmax(logits, axis=-1) * weights[..., None]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  onehot = onehot * weights[..., None]
  axes = tuple(range(logits.ndim - 1))
  intersection = jnp.sum(probs * onehot, axis=axes)
  if squared:  # p and g already carry the pixel weight: m^2 p^2, like the intersection's m^2 p g
    denominator = jnp.sum(probs * probs, axis=axes) + jnp.sum(onehot * onehot, axis=axes)
  else:
    denominator = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
  dice = _safe_ratio(2 * intersection + smooth, denominator + smooth, 1.0)
  if class_weights is None:
    mean_dice = jnp.mean(dice)
  else:
    class_weights = jnp.asarray(class_weights, logits.dtype)
    mean_dice = jnp.sum(class_weights * dice) / jnp.sum(class_weights)
  return 1.0 - mean_dice


def segmentation_loss(
    logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    *,
    ce_weight: float = 1.0,
    dice_weight: float = 0.0,
    class_weights: jax.Array | None = None,
    dice_smooth: float = 1.0,
) -> jax.Array:
  """ce_weight * cross_entropy + dice_weight * dice_loss.

  A term whose weight is 0 is not computed at all.

  Args:
    logits: [B, H, W, K].
    labels: [B, H, W] int.
    weights: [B, H, W] pixel weights, 0 = ignore.
    ce_weight: weight of the cross-entropy term.
    dice_weight: weight of the Dice term.
    class_weights: [K] or None, passed to both terms.
    dice_smooth: `smooth` of `dice_loss`.

  Returns:
    Scalar.
  """
  if not ce_weight and not dice_weight:
    raise ValueError("ce_weight and dice_weight are both 0")
  loss = 0.0
  if ce_weight:
    loss += ce_weight * cross_entropy(logits, labels, weights, class_weights)
  if dice_weight:
    loss += dice_weight * dice_loss(logits, labels, weights,
                                    smooth=dice_smooth,
                                    class_weights=class_weights)
  return loss
