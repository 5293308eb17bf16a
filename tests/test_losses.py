"""Tests of segjax.losses against float64 numpy references."""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads
import numpy as np
import pytest

from segjax import losses

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
