"""Tests of segjax.losses and segjax.losses_extra against float64 numpy references (OHEM against MMSegmentation's
algorithm in numpy), finite gradients in degenerate batches, config.loss's checks and a training step with a
combination of losses. The comparisons with segmentation_models_pytorch: tests/test_losses_smp.py."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads
import numpy as np
import pytest

from segjax import loss_config, losses, losses_extra

K = 4
SHAPE = (2, 3, 5)


def make_inputs(seed, ignore_fraction=0.3):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 2, SHAPE + (K,)).astype(np.float32)
  labels = rng.integers(0, K, SHAPE)
  weights = (rng.random(SHAPE) > ignore_fraction).astype(np.float32)
  # Ignored pixels carry an out-of-range label, as a raw mask would.
  labels = np.where(weights > 0, labels, 255)
  return logits, labels, weights


def reference_cross_entropy(logits, labels, weights, class_weights=None):
  """Loop over pixels; log-softmax as x_y - log(sum exp(x))."""
  if class_weights is None:
    class_weights = np.ones(K)
  num = den = 0.0
  for index in np.ndindex(*SHAPE):
    if weights[index] <= 0:
      continue
    x = logits[index].astype(np.float64)
    shift = x.max()
    nll = np.log(np.exp(x - shift).sum()) + shift - x[labels[index]]
    w = weights[index] * class_weights[labels[index]]
    num += w * nll
    den += w
  return num / den if den else 0.0


def reference_dice(logits, labels, weights, smooth=1.0, class_weights=None):
  """Per-class loops over pixels with an explicit softmax."""
  dices = []
  for c in range(K):
    inter = p_sum = g_sum = 0.0
    for index in np.ndindex(*SHAPE):
      w = float(weights[index])
      if w <= 0:
        continue
      x = logits[index].astype(np.float64)
      p = np.exp(x[c] - x.max()) / np.exp(x - x.max()).sum()
      g = 1.0 if labels[index] == c else 0.0
      inter += w * p * g
      p_sum += w * p
      g_sum += w * g
    dices.append((2 * inter + smooth) / (p_sum + g_sum + smooth))
  if class_weights is None:
    return 1 - np.mean(dices)
  return 1 - np.dot(class_weights, dices) / np.sum(class_weights)


def test_cross_entropy_matches_reference():
  logits, labels, weights = make_inputs(0)
  got = jax.jit(losses.cross_entropy)(logits, labels, weights)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(
      got, reference_cross_entropy(logits, labels, weights), rtol=1e-5)


def test_cross_entropy_class_and_pixel_weights():
  logits, labels, weights = make_inputs(1)
  class_weights = np.array([0.5, 2.0, 1.0, 3.0])
  got = jax.jit(losses.cross_entropy)(logits, labels, weights, class_weights)
  np.testing.assert_allclose(
      got, reference_cross_entropy(logits, labels, weights, class_weights),
      rtol=1e-5)
  # Fractional pixel weights multiply in, in numerator and denominator.
  weights = weights * np.random.default_rng(2).random(SHAPE)
  got = losses.cross_entropy(logits, labels, weights, class_weights)
  np.testing.assert_allclose(
      got, reference_cross_entropy(logits, labels, weights, class_weights),
      rtol=1e-5)


def test_cross_entropy_all_ignored():
  logits, labels, _ = make_inputs(3)
  weights = np.zeros(SHAPE, np.float32)
  labels = np.full(SHAPE, 255)
  loss, grad = jax.jit(jax.value_and_grad(losses.cross_entropy))(
      jnp.asarray(logits), labels, weights, np.ones(K))
  assert loss == 0
  assert np.all(np.isfinite(grad)) and not np.any(grad)


def test_bf16_logits_give_float32():
  logits, labels, weights = make_inputs(4)
  low = jnp.asarray(logits, jnp.bfloat16)
  got = losses.cross_entropy(low, labels, weights)
  assert got.dtype == jnp.float32
  want = reference_cross_entropy(np.asarray(low, np.float32), labels, weights)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert losses.dice_loss(low, labels, weights).dtype == jnp.float32


def test_cross_entropy_sharded_equals_unsharded():
  mesh = jax.make_mesh((2,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:2])
  sharding = NamedSharding(mesh, P("data"))
  inputs = make_inputs(5)
  sharded = [jax.device_put(x, sharding) for x in inputs]
  np.testing.assert_allclose(jax.jit(losses.cross_entropy)(*sharded),
                             losses.cross_entropy(*inputs), rtol=1e-6)


def test_dice_matches_reference():
  logits, labels, weights = make_inputs(6)
  np.testing.assert_allclose(losses.dice_loss(logits, labels, weights),
                             reference_dice(logits, labels, weights),
                             rtol=1e-5)
  class_weights = np.array([1.0, 0.0, 2.0, 0.5])
  np.testing.assert_allclose(
      losses.dice_loss(logits, labels, weights, smooth=0.1,
                       class_weights=class_weights),
      reference_dice(logits, labels, weights, 0.1, class_weights), rtol=1e-5)


def test_dice_range_and_perfect_prediction():
  logits, labels, weights = make_inputs(7)
  loss = losses.dice_loss(logits, labels, weights)
  assert 0 < loss <= 1
  # Large margin: softmax is one-hot up to exp(-50); garbage on ignored pixels
  # must not matter.
  perfect = 50.0 * jax.nn.one_hot(np.where(weights > 0, labels, 0), K)
  perfect = np.where(weights[..., None] > 0, perfect, -perfect)
  np.testing.assert_allclose(losses.dice_loss(perfect, labels, weights), 0,
                             atol=1e-6)


def test_dice_all_ignored():
  logits, _, _ = make_inputs(8)
  weights = np.zeros(SHAPE, np.float32)
  labels = np.full(SHAPE, 255)
  for smooth in (1.0, 0.0):
    fn = functools.partial(losses.dice_loss, smooth=smooth)
    loss, grad = jax.jit(jax.value_and_grad(fn))(logits, labels, weights)
    assert loss == 0
    assert np.all(np.isfinite(grad))


def test_segmentation_loss_combines_terms():
  logits, labels, weights = make_inputs(9)
  class_weights = np.array([1.0, 2.0, 1.0, 0.5])
  got = losses.segmentation_loss(logits, labels, weights, ce_weight=0.5,
                                 dice_weight=2.0, class_weights=class_weights)
  want = (0.5 * reference_cross_entropy(logits, labels, weights, class_weights)
          + 2.0 * reference_dice(logits, labels, weights,
                                 class_weights=class_weights))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(
      losses.segmentation_loss(logits, labels, weights),
      reference_cross_entropy(logits, labels, weights), rtol=1e-5)
  with pytest.raises(ValueError):
    losses.segmentation_loss(logits, labels, weights, ce_weight=0)


@pytest.mark.parametrize("loss_fn", [
    functools.partial(losses.cross_entropy, class_weights=np.arange(1.0, 5.0)),
    functools.partial(losses.dice_loss, class_weights=np.arange(1.0, 5.0)),
], ids=["cross_entropy", "dice_loss"])
def test_gradients(loss_fn):
  logits, labels, weights = make_inputs(10)
  # float64 so finite differences are precise; jit because eager op-by-op
  # evaluation makes check_grads several times slower. First order only:
  # second order costs ~5 s per loss and training never uses it.
  with jax.enable_x64(True):
    check_grads(jax.jit(lambda x: loss_fn(x, labels, weights)),
                (logits.astype(np.float64),), order=1, modes=("fwd", "rev"))


def reference_squared_dice(logits, labels, weights, smooth=1.0):
  """V-Net's Dice, 1 - mean_c (2 sum p g + s) / (sum p^2 + sum g^2 + s), over the valid pixels (0/1 weights)."""
  valid = weights > 0
  x = logits[valid].astype(np.float64)
  p = np.exp(x - x.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  g = np.eye(K)[labels[valid]]
  dice = (2 * (p * g).sum(0) + smooth) / ((p ** 2).sum(0) + (g ** 2).sum(0) + smooth)
  return 1 - dice.mean()


def test_squared_dice_matches_reference():
  logits, labels, weights = make_inputs(11)
  for smooth in (1.0, 0.1):
    np.testing.assert_allclose(losses.dice_loss(logits, labels, weights, smooth=smooth, squared=True),
                               reference_squared_dice(logits, labels, weights, smooth), rtol=1e-5)


def reference_ohem(logits, labels, weights, thresh, min_kept):
  """MMSegmentation's OHEMPixelSampler.sample, then the cross-entropy averaged over the sampled pixels, in numpy
  with boolean indexing (the dynamic shapes the jit version avoids)."""
  x = logits.astype(np.float64)
  logp = x - x.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  valid = weights > 0
  safe_labels = np.where(valid, labels, 0)
  nll = -np.take_along_axis(logp, safe_labels[..., None], -1)[..., 0]
  batch_kept = min_kept * labels.shape[0]
  seg_weight = np.zeros(labels.shape)
  valid_seg_weight = seg_weight[valid]
  if thresh is not None:
    prob = np.exp(-nll)[valid]
    sort_prob = np.sort(prob)
    min_threshold = sort_prob[min(batch_kept, sort_prob.size - 1)] if sort_prob.size else 0.0
    valid_seg_weight[prob < max(min_threshold, thresh)] = 1.0
  else:
    sort_indices = np.argsort(-nll[valid], kind="stable")
    valid_seg_weight[sort_indices[:batch_kept]] = 1.0
  seg_weight[valid] = valid_seg_weight
  return (seg_weight * nll).sum() / seg_weight.sum() if seg_weight.sum() else 0.0


@pytest.mark.parametrize("thresh,min_kept", [(0.7, 3), (0.7, 0), (0.2, 5), (0.9, 100), (None, 4), (None, 100)])
def test_ohem_matches_mmseg_reference(thresh, min_kept):
  fn = jax.jit(functools.partial(losses_extra.ohem_cross_entropy, thresh=thresh, min_kept=min_kept))
  for seed in range(3):
    logits, labels, weights = make_inputs(20 + seed)
    np.testing.assert_allclose(fn(logits, labels, weights), reference_ohem(logits, labels, weights, thresh, min_kept),
                               rtol=1e-5, atol=1e-7)


def test_ohem_keeps_min_kept_hardest():
  logits, labels, weights = make_inputs(12)
  mask = losses_extra.ohem_mask(logits, labels, weights, thresh=None, min_kept=3)
  assert mask.sum() == 3 * SHAPE[0] and not np.any(np.asarray(mask)[weights == 0])


SETTINGS = loss_config.LossSettings(
    ce_weight=0.5, dice_weight=0.5, class_weights=None, aux_weight=0.4, focal_weight=1.0, lovasz_weight=0.3,
    tversky_weight=0.2, jaccard_weight=0.1, ohem_weight=0.7, label_smoothing=0.1, dice_squared=True,
    focal_alpha=0.25, focal_gamma=0.5, tversky_alpha=0.3, tversky_beta=0.7, tversky_gamma=0.75, ohem_thresh=0.7,
    ohem_min_kept=2)
TERMS = {
    "focal": functools.partial(losses_extra.focal_loss, gamma=0.5, alpha=0.25),
    "lovasz": losses_extra.lovasz_softmax_loss,
    "tversky": functools.partial(losses_extra.tversky_loss, alpha=0.3, beta=0.7, gamma=0.75),
    "jaccard": losses_extra.jaccard_loss,
    "ohem": functools.partial(losses_extra.ohem_cross_entropy, thresh=None, min_kept=2),
    "dice_squared": functools.partial(losses.dice_loss, squared=True),
    "label_smoothing": functools.partial(losses.cross_entropy, label_smoothing=0.1),
    "total": functools.partial(losses_extra.total_loss, settings=SETTINGS),
}


@pytest.mark.parametrize("name", list(TERMS))
def test_gradients_finite_all_ignored_and_single_class(name):
  fn = TERMS[name]
  logits, _, _ = make_inputs(13)
  cw = np.arange(1.0, K + 1)
  # One compilation for the three batches (same shapes and dtypes).
  value_and_grad = jax.jit(jax.value_and_grad(lambda x, y, w: fn(x, y, w, class_weights=cw)))
  loss, g = value_and_grad(logits, np.full(SHAPE, 255, np.int32), np.zeros(SHAPE, np.float32))
  assert abs(loss) < 1e-6 and np.all(np.isfinite(g)) and not np.any(g)
  # Every pixel class 1, predicted with a huge margin: probabilities saturate at exactly 0 and 1.
  for scale in (1.0, 100.0):
    single = np.where(np.arange(K) == 1, scale, -scale) * np.ones(SHAPE + (K,), np.float32)
    loss, g = value_and_grad(single, np.ones(SHAPE, np.int32), np.ones(SHAPE, np.float32))
    assert np.isfinite(loss) and np.all(np.isfinite(g)), (name, scale)


def test_total_loss_sums_the_terms():
  logits, labels, weights = make_inputs(14)
  cw = np.array([1.0, 2.0, 0.5, 1.0])
  settings = dataclasses.replace(SETTINGS, ohem_thresh=None)
  want = (0.5 * losses.cross_entropy(logits, labels, weights, cw, label_smoothing=0.1)
          + 0.5 * losses.dice_loss(logits, labels, weights, class_weights=cw, squared=True)
          + sum(w * TERMS[n](logits, labels, weights, class_weights=cw)
                for n, w in [("focal", 1.0), ("lovasz", 0.3), ("tversky", 0.2), ("jaccard", 0.1)])
          + 0.7 * losses_extra.ohem_cross_entropy(logits, labels, weights, thresh=None, min_kept=2, class_weights=cw,
                                                  label_smoothing=0.1))
  np.testing.assert_allclose(losses_extra.total_loss(logits, labels, weights, settings, cw), want, rtol=1e-6)
  with pytest.raises(ValueError, match="every loss weight is 0"):
    losses_extra.total_loss(logits, labels, weights, dataclasses.replace(
        SETTINGS, ce_weight=0, dice_weight=0, focal_weight=0, lovasz_weight=0, tversky_weight=0, jaccard_weight=0,
        ohem_weight=0))


@pytest.mark.parametrize("key,value,match", [
    ("focal_weight", -1.0, "config.loss.focal_weight=-1.0: must be >= 0"),
    ("ce_weight", 0.0, "every loss weight is 0"),
    ("label_smoothing", 1.5, "config.loss.label_smoothing=1.5"),
    ("focal_gamma", -2.0, "config.loss.focal_gamma"),
    ("focal_alpha", 2.0, "config.loss.focal_alpha=2.0"),
    ("tversky_beta", -0.5, "config.loss.tversky_alpha/tversky_beta"),
    ("tversky_gamma", 0.0, "config.loss.tversky_gamma=0.0"),
    ("ohem_thresh", 1.5, "config.loss.ohem_thresh=1.5"),
    ("ohem_min_kept", -1, "config.loss.ohem_min_kept=-1"),
])
def test_config_refuses_bad_values(key, value, match):
  block = loss_config.config_block()
  block[key] = value

  def fail(k, v, fix):
    raise ValueError(f"config.{k}={v!r}: {fix}")

  with pytest.raises(ValueError, match=re.escape(match)):
    loss_config.check(block, fail)
  loss_config.check(loss_config.config_block(), fail)
  assert loss_config.settings(loss_config.config_block()).ohem_min_kept == 100000


def test_a_recipe_with_every_loss_trains_a_step(shapes_data_dir):
  """experiment.build validates config.loss; the semantic task sums every term on the U-Net's logits."""
  from segjax import experiment, sharding  # pylint: disable=import-outside-toplevel
  from segjax.data import datasets, pipeline  # pylint: disable=import-outside-toplevel
  from segjax.training import steps  # pylint: disable=import-outside-toplevel
  from tests.conftest import semantic_train_dataset, tiny_config  # pylint: disable=import-outside-toplevel

  config = tiny_config(shapes_data_dir, **{"optimizer.warmup_steps": 0, "batch_size": 2, "loss.dice_weight": 0.5,
                                           "loss.dice_squared": True, "loss.label_smoothing": 0.1,
                                           "loss.focal_weight": 1.0, "loss.lovasz_weight": 0.5,
                                           "loss.tversky_weight": 0.5, "loss.tversky_alpha": 0.3,
                                           "loss.tversky_beta": 0.7, "loss.jaccard_weight": 0.5,
                                           "loss.ohem_weight": 1.0, "loss.ohem_min_kept": 64})
  exp = experiment.build(config, jax.devices()[:1])
  assert exp.settings.loss.ohem_min_kept == 64 and exp.settings.loss.focal_weight == 1.0
  spec = datasets.get_spec(config.dataset.name)
  source = datasets.data_source(spec.name, "train", data_dir=config.dataset.data_dir)
  batch = semantic_train_dataset(source, spec=spec, batch_size=config.batch_size,
                                 crop_size=config.dataset.crop_size, seed=0)[0]
  state = exp.init_state()
  before = jax.device_get(state.params)  # the step donates `state`
  new_state, out = steps.jit_train_step(exp)(state, pipeline.to_global(batch, sharding.batch_sharding(exp.mesh)))
  assert np.isfinite(out["loss"]) and out["loss"] > 0
  after = jax.device_get(new_state.params)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
