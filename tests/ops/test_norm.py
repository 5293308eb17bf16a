"""segjax.ops.norm.BatchNorm against Flax's nn.BatchNorm (+ ReLU): outputs, statistics, running averages and every
gradient, in training and inference mode, for both channel-sum implementations and on a sharded batch."""

import chex
import flax.linen as nn
import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from segjax.ops import norm


def _data(shape, seed=0, mean=3.0, std=2.0):
  rng = np.random.default_rng(seed)
  # Channels with large and different means: the centred gradient formula is what keeps these exact.
  offsets = rng.uniform(-mean, mean, shape[-1]).astype(np.float32)
  x = (rng.normal(0, std, shape) + offsets).astype(np.float32)
  cotangent = rng.normal(size=shape).astype(np.float32)
  c = shape[-1]
  params = {"scale": rng.uniform(0.5, 1.5, c).astype(np.float32), "bias": rng.normal(size=c).astype(np.float32)}
  stats = {"mean": rng.normal(size=c).astype(np.float32), "var": rng.uniform(0.5, 2.0, c).astype(np.float32)}
  return x, cotangent, params, stats


def _run(module, relu_after, x, cotangent, params, stats, train):
  """(y, new batch_stats, d loss / d params, d loss / d x) for loss = sum(y * cotangent)."""
  def loss(p, x):
    y, updates = module.apply({"params": p, "batch_stats": stats}, x, use_running_average=not train,
                              mutable=["batch_stats"])
    if relu_after:
      y = jax.nn.relu(y)
    return jnp.sum(y.astype(jnp.float32) * cotangent), (y, updates["batch_stats"])

  (_, (y, new_stats)), (dp, dx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
  return y, new_stats, dp, dx


def _close(actual, expected, rtol):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  scale = max(float(np.abs(expected).max()), 1e-6)
  np.testing.assert_allclose(actual / scale, expected / scale, rtol=0, atol=rtol)


def _same_as_flax(ours, ref, *, y_tol, stats_tol, grad_tol):
  """`_run`'s four results for our layer and for Flax's: output, new statistics, parameter and input gradients."""
  (y, new_stats, dp, dx), (y_ref, stats_ref, dp_ref, dx_ref) = ours, ref
  _close(y, y_ref, y_tol)
  for key in ("mean", "var"):
    _close(new_stats[key], stats_ref[key], stats_tol)
  for key in ("scale", "bias"):
    _close(dp[key], dp_ref[key], grad_tol)
  _close(dx, dx_ref, grad_tol)


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("shape", [(4, 8, 8, 48), (2, 6, 10, 3), (3, 5, 7, 256)])
@pytest.mark.parametrize("train", [True, False])
def test_matches_flax_batchnorm(activation, shape, train):
  x, cotangent, params, stats = _data(shape)
  ours = norm.BatchNorm(momentum=0.9, epsilon=1e-5, activation=activation)
  ref = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
  _same_as_flax(_run(ours, False, x, cotangent, params, stats, train),
                _run(ref, activation == "relu", x, cotangent, params, stats, train),
                y_tol=2e-6, stats_tol=2e-6, grad_tol=2e-5)


def test_statistics_and_running_averages_against_numpy():
  x, cotangent, params, stats = _data((4, 6, 6, 16))
  _, new_stats, _, _ = _run(norm.BatchNorm(momentum=0.9), False, x, cotangent, params, stats, True)
  x64 = x.astype(np.float64).reshape(-1, 16)
  np.testing.assert_allclose(new_stats["mean"], 0.9 * stats["mean"] + 0.1 * x64.mean(0), rtol=1e-5, atol=1e-6)
  # Biased variance, as Flax (PyTorch keeps the unbiased one in its running average).
  np.testing.assert_allclose(new_stats["var"], 0.9 * stats["var"] + 0.1 * x64.var(0), rtol=1e-5, atol=1e-6)


def test_gradient_through_the_statistics():
  # The statistics are outputs of the custom-VJP function too; their gradient must be exact for any use.
  x, _, params, _ = _data((3, 4, 5, 6))
  a, b = np.linspace(-1, 1, 6).astype(np.float32), np.linspace(2, 0, 6).astype(np.float32)

  def ours(x):
    y, mean, var = norm.batch_norm_train(x, jnp.asarray(params["scale"]), jnp.asarray(params["bias"]), 1e-5,
                                         "relu", jnp.float32)
    return jnp.sum(mean * a) + jnp.sum(var * b) + 0.1 * jnp.sum(y)

  def reference(x):
    mean = x.mean((0, 1, 2))
    var = (x * x).mean((0, 1, 2)) - mean**2
    y = jax.nn.relu((x - mean) / jnp.sqrt(var + 1e-5) * params["scale"] + params["bias"])
    return jnp.sum(mean * a) + jnp.sum(var * b) + 0.1 * jnp.sum(y)

  _close(jax.jit(jax.grad(ours))(x), jax.jit(jax.grad(reference))(x), 2e-5)


@pytest.mark.parametrize("shape", [(8, 16, 16, 32), (2, 3, 5, 48), (1, 1, 7, 5), (4, 4, 4, 1024)])
def test_channel_sum_forms_equal_numpy(shape):
  a = np.random.default_rng(1).normal(size=shape).astype(np.float32)
  b = np.random.default_rng(2).normal(size=shape).astype(np.float32)
  expected = [v.astype(np.float64).reshape(-1, shape[-1]).sum(0) for v in (a, b)]
  for fn in (norm._sums_wide, norm._sums_reference, norm.channel_sums):  # pylint: disable=protected-access
    got = jax.jit(fn)(a, b)
    for g, e in zip(got, expected):
      np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-4)


def test_bfloat16_compute_keeps_float32_statistics():
  x, cotangent, params, stats = _data((4, 8, 8, 16))
  ours = norm.BatchNorm(momentum=0.9, dtype=jnp.bfloat16, activation="relu")
  ref = nn.BatchNorm(momentum=0.9, dtype=jnp.bfloat16)
  y, new_stats, dp, dx = result = _run(ours, False, jnp.asarray(x, jnp.bfloat16), cotangent, params, stats, True)
  chex.assert_type([y, dx, new_stats["mean"], dp["scale"]], [jnp.bfloat16, jnp.bfloat16, jnp.float32, jnp.float32])
  _same_as_flax(result, _run(ref, True, jnp.asarray(x, jnp.bfloat16), cotangent, params, stats, True),
                y_tol=1e-2, stats_tol=1e-5, grad_tol=2e-2)


def test_batch_sharded_over_8_devices_equals_one_device():
  # Under jit the statistics are those of the global batch, whatever the sharding (the wide-view reshape merges
  # the sharded batch axis with the others; XLA's partitioner must keep that exact).
  assert jax.device_count() == 8
  x, cotangent, params, stats = _data((8, 6, 6, 24))
  module = norm.BatchNorm(momentum=0.9, activation="relu")
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x8 = jax.device_put(x, NamedSharding(mesh, P("data")))
  one = _run(module, False, x, cotangent, params, stats, True)
  eight = _run(module, False, x8, cotangent, params, stats, True)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
    _close(b, a, 2e-6)


def test_flax_names_and_shapes():
  x = jnp.ones((2, 4, 4, 8))
  ours = norm.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
  ref = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
  chex.assert_trees_all_equal_shapes_and_dtypes(ours, ref)


def test_rejects_unknown_activation():
  with pytest.raises(ValueError, match="activation"):
    norm.BatchNorm(use_running_average=False, activation="gelu").init(jax.random.key(0), jnp.ones((1, 2, 2, 3)))


def test_gradient_check_float32():
  # A finite-difference check of the closed-form gradient itself (no Flax in the loop).
  x, _, params, _ = _data((2, 3, 3, 4), mean=0.5, std=1.0)
  def f(x, s, b):
    return norm.batch_norm_train(x, s, b, 1e-3, None, jnp.float32)[0]
  jax.test_util.check_grads(f, (x, params["scale"], params["bias"]), order=1, modes=("rev",), atol=2e-2, rtol=2e-2,
                            eps=1e-2)
