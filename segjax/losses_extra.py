"""More segmentation losses: focal, Lovász-softmax, Tversky, soft Jaccard and OHEM cross-entropy, and the weighted
sum of every loss that `config.loss` turns on (what the semantic task trains with).

Same contract as segjax.losses: logits [B, H, W, K], labels [B, H, W], pixel weights [B, H, W] with 0 = ignore
(never a magic label), sums over the whole global batch so a sharded batch gives the same value on any number of
devices, static shapes throughout (jit-able; OHEM selects pixels by sorting, not by boolean indexing). Focal,
Lovász, Tversky and Jaccard follow segmentation_models_pytorch's multiclass definitions (tests/test_losses_smp.py
compares them), OHEM follows MMSegmentation's OHEMPixelSampler; docs/losses.md gives each formula.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from segjax import losses

# SMP's clamp of the Tversky/Jaccard denominator (its `eps`).
_EPS = 1e-7


def _safe_pow(x: jax.Array, exponent: float) -> jax.Array:
  """x ** exponent for x >= 0, 0 at x == 0 with a finite (zero) gradient there: d/dx x^a is infinite at 0 for
  a < 1, and an all-ignored or perfectly predicted batch reaches x == 0."""
  positive = x > 0
  return jnp.where(positive, jnp.where(positive, x, 1.0) ** exponent, 0.0 if exponent else 1.0)


def _class_mean(values: jax.Array, class_weights, mask=None) -> jax.Array:
  """The (class-weighted) mean of per-class values [K], over the classes where `mask` (default: all); 0 if none."""
  cw = jnp.ones_like(values) if class_weights is None else jnp.asarray(class_weights, values.dtype)
  if mask is not None:
    cw = cw * mask
  return losses._safe_ratio(jnp.sum(cw * values), jnp.sum(cw), 0.0)  # pylint: disable=protected-access


def focal_loss(logits, labels, weights, *, gamma: float = 2.0, alpha: float | None = None,
               class_weights=None) -> jax.Array:
  """SMP's FocalLoss(mode="multiclass"): a one-vs-rest *sigmoid* focal loss per class, averaged over pixels, then
  over classes.

  For class c and pixel p with t = [y_p == c]: bce = BCEWithLogits(x_pc, t), pt = exp(-bce),
  f_pc = (1 - pt)^gamma bce, times alpha t + (1 - alpha)(1 - t) when alpha is given (Lin et al. 2017).
  loss = sum_c cw_c (sum_p m_p f_pc / sum_p m_p) / sum_c cw_c, m the pixel weights; 0 if no pixel is valid.
  """
  logits, labels, weights = losses._valid_inputs(logits, labels, weights)  # pylint: disable=protected-access
  target = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  bce = optax.sigmoid_binary_cross_entropy(logits, target)
  focal = _safe_pow(-jnp.expm1(-bce), gamma) * bce  # 1 - pt = -expm1(-bce), exact for small bce
  if alpha is not None:
    focal = focal * (alpha * target + (1 - alpha) * (1 - target))
  axes = tuple(range(logits.ndim - 1))
  per_class = losses._safe_ratio(jnp.sum(weights[..., None] * focal, axis=axes),  # pylint: disable=protected-access
                                 jnp.sum(weights), 0.0)
  return _class_mean(per_class, class_weights)


def _tp_fp_fn(logits, labels, weights):
  """Per-class soft true positives, false positives and false negatives [K] over the valid pixels, and the
  per-class ground-truth mass."""
  logits, labels, weights = losses._valid_inputs(logits, labels, weights)  # pylint: disable=protected-access
  probs = jax.nn.softmax(logits, axis=-1)
  target = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  w = weights[..., None]
  axes = tuple(range(logits.ndim - 1))
  tp = jnp.sum(w * probs * target, axis=axes)
  fp = jnp.sum(w * probs * (1 - target), axis=axes)
  fn = jnp.sum(w * (1 - probs) * target, axis=axes)
  return tp, fp, fn, jnp.sum(w * target, axis=axes)


def tversky_loss(logits, labels, weights, *, alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0,
                 smooth: float = 0.0, class_weights=None) -> jax.Array:
  """SMP's TverskyLoss(mode="multiclass"): (sum_c cw_c l_c / sum_c cw_c)^gamma, batch-wise sums.

  l_c = 1 - (TP_c + smooth) / max(TP_c + alpha FP_c + beta FN_c + smooth, 1e-7) for a class with ground-truth
  pixels, 0 for one without (SMP's convention; the class still counts in the mean). alpha weighs false positives,
  beta false negatives (Salehi et al. 2017); alpha = beta = 0.5 is Dice, 1 and 1 Jaccard; gamma != 1 is the focal
  Tversky loss (Abraham & Khan 2019).
  """
  tp, fp, fn, gt = _tp_fp_fn(logits, labels, weights)
  score = (tp + smooth) / jnp.maximum(tp + alpha * fp + beta * fn + smooth, _EPS)
  per_class = jnp.where(gt > 0, 1.0 - score, 0.0)
  return _safe_pow(_class_mean(per_class, class_weights), gamma)


def jaccard_loss(logits, labels, weights, *, smooth: float = 0.0, class_weights=None) -> jax.Array:
  """SMP's JaccardLoss(mode="multiclass"): soft IoU loss, Tversky with alpha = beta = 1 (TP / (TP + FP + FN))."""
  return tversky_loss(logits, labels, weights, alpha=1.0, beta=1.0, smooth=smooth, class_weights=class_weights)


def _lovasz_class(errors: jax.Array, fg: jax.Array, valid: jax.Array) -> jax.Array:
  """Berman et al. 2018, Alg. 1 for one class over flat pixels: the Lovász extension of the Jaccard loss at
  `errors`. Ignored pixels sort after every valid one (key -1 < any error) with error 0 and fg 0, so they add
  nothing and leave the valid pixels' prefix sums alone. Tie order does not change the value."""
  order = jnp.argsort(-jnp.where(valid, errors, -1.0))
  errors_sorted = jnp.where(valid, errors, 0.0)[order]
  fg_sorted = fg[order]
  gts = jnp.sum(fg_sorted)
  intersection = gts - jnp.cumsum(fg_sorted)
  union = gts + jnp.cumsum(1.0 - fg_sorted)  # >= 1 at every position
  jaccard = 1.0 - intersection / union
  grad = jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]])
  return jnp.dot(errors_sorted, jax.lax.stop_gradient(grad))


def lovasz_softmax_loss(logits, labels, weights, *, class_weights=None) -> jax.Array:
  """SMP's LovaszLoss(mode="multiclass", per_image=False) (classes="present"): the mean over the classes present
  in the batch's valid labels of the Lovász extension of 1 - IoU_c at the errors |[y == c] - softmax_c|.

  Pixels with weight > 0 count fully (the Lovász extension has no per-pixel weight); class_weights make the mean
  over present classes weighted. 0 if no pixel is valid.
  """
  logits, labels, weights = losses._valid_inputs(logits, labels, weights)  # pylint: disable=protected-access
  num_classes = logits.shape[-1]
  probs = jax.nn.softmax(logits, axis=-1).reshape(-1, num_classes)
  valid = weights.reshape(-1) > 0
  fg = jax.nn.one_hot(labels.reshape(-1), num_classes, dtype=logits.dtype) * valid[:, None]
  errors = jnp.abs(fg - probs)
  per_class = jax.vmap(_lovasz_class, in_axes=(1, 1, None))(errors, fg, valid)
  return _class_mean(per_class, class_weights, mask=jnp.sum(fg, axis=0) > 0)


def ohem_mask(logits, labels, weights, *, thresh: float | None = 0.7, min_kept: int = 100000) -> jax.Array:
  """MMSegmentation's OHEMPixelSampler.sample: which valid pixels the OHEM loss keeps (float mask [B, H, W]).

  batch_kept = min_kept * B. With `thresh`: p = softmax probability of the true class; the valid pixels' p sorted
  ascending give min_threshold = sorted[min(batch_kept, n_valid - 1)] (0 with no valid pixel); a pixel is kept
  when p < max(min_threshold, thresh). Without: the batch_kept valid pixels of largest cross-entropy. Sorting the
  whole batch with ignored pixels pushed to the end keeps shapes static; no gradient flows through the selection.
  """
  logits, labels, weights = losses._valid_inputs(logits, labels, weights)  # pylint: disable=protected-access
  logits = jax.lax.stop_gradient(logits)
  valid = weights > 0
  batch_kept = min_kept * logits.shape[0]
  if thresh is not None:
    prob = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), labels[..., None], axis=-1)[..., 0]
    sorted_prob = jnp.sort(jnp.where(valid, prob, jnp.inf).reshape(-1))
    n_valid = jnp.sum(valid)
    index = jnp.clip(jnp.minimum(batch_kept, n_valid - 1), 0, sorted_prob.size - 1)
    min_threshold = jnp.where(n_valid > 0, sorted_prob[index], 0.0)
    keep = prob < jnp.maximum(min_threshold, thresh)
  else:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    order = jnp.argsort(-jnp.where(valid, ce, -jnp.inf).reshape(-1))
    rank = jnp.zeros(order.shape, jnp.int32).at[order].set(jnp.arange(order.size, dtype=jnp.int32))
    keep = rank.reshape(valid.shape) < batch_kept
  return (keep & valid).astype(logits.dtype)


def ohem_cross_entropy(logits, labels, weights, *, thresh: float | None = 0.7, min_kept: int = 100000,
                       class_weights=None, label_smoothing: float = 0.0) -> jax.Array:
  """Cross-entropy averaged over the pixels `ohem_mask` keeps (their pixel weights multiply in, class weights
  normalise as in segjax.losses.cross_entropy). MMSegmentation's CrossEntropyLoss would divide by every pixel of
  the batch (avg_non_ignore=False); averaging over the kept pixels keeps the scale of plain cross-entropy."""
  keep = ohem_mask(logits, labels, weights, thresh=thresh, min_kept=min_kept)
  return losses.cross_entropy(logits, labels, jnp.asarray(weights, keep.dtype) * keep, class_weights,
                              label_smoothing=label_smoothing)


def total_loss(logits, labels, weights, settings, class_weights=None) -> jax.Array:
  """sum over the terms of `settings` (a segjax.config.LossSettings, or anything with its attributes) of
  weight * loss; a term of weight 0 is not computed at all.

  Raises:
    ValueError: every weight is 0 (segjax.config.validate refuses such a recipe first).
  """
  s = settings
  terms = [
      (s.ce_weight, lambda: losses.cross_entropy(logits, labels, weights, class_weights,
                                                 label_smoothing=s.label_smoothing)),
      (s.dice_weight, lambda: losses.dice_loss(logits, labels, weights, class_weights=class_weights,
                                               squared=s.dice_squared)),
      (s.focal_weight, lambda: focal_loss(logits, labels, weights, gamma=s.focal_gamma, alpha=s.focal_alpha,
                                          class_weights=class_weights)),
      (s.lovasz_weight, lambda: lovasz_softmax_loss(logits, labels, weights, class_weights=class_weights)),
      (s.tversky_weight, lambda: tversky_loss(logits, labels, weights, alpha=s.tversky_alpha, beta=s.tversky_beta,
                                              gamma=s.tversky_gamma, class_weights=class_weights)),
      (s.jaccard_weight, lambda: jaccard_loss(logits, labels, weights, class_weights=class_weights)),
      (s.ohem_weight, lambda: ohem_cross_entropy(logits, labels, weights, thresh=s.ohem_thresh,
                                                 min_kept=s.ohem_min_kept, class_weights=class_weights,
                                                 label_smoothing=s.label_smoothing)),
  ]
  if not any(w for w, _ in terms):
    raise ValueError("every loss weight is 0")
  return sum(w * fn() for w, fn in terms if w)
