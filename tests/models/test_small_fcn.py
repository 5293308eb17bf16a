"""The small teaching FCNs: shapes, parameter counts against a layer-by-layer formula, and one SGD step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from segjax.models import MODELS
from segjax.models.small_fcn import FCNNearest, FCNSkipConcat, FCNTransposedSkip
from tests.models.common import conv_block_param_count, count_params

VARIANTS = [
    (FCNNearest, {}),
    (FCNSkipConcat, {"upsample": "nearest"}),
    (FCNSkipConcat, {"upsample": "bilinear"}),
    (FCNTransposedSkip, {"upsample": "transpose_bilinear"}),
    (FCNTransposedSkip, {"upsample": "transpose"}),
]
IDS = ["nearest", "concat-nearest", "concat-bilinear", "transposed-bilinear", "transposed"]


def _param_shapes(model, hw, channels=3):
  x = jax.ShapeDtypeStruct((1, *hw, channels), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)["params"]


def small_fcn_param_count(cls, upsample, in_ch, k, base, bn):
  """Written out from the module docstring's layer list, not from the modules."""
  def conv(cin, cout, size, bias=True):
    return size * size * cin * cout + (cout if bias else 0)

  def block(cin, cout):
    return conv_block_param_count(cin, cout, bn)

  widths = [base, 2 * base, 4 * base, 8 * base]
  total = block(in_ch, widths[0]) + block(widths[0], widths[1]) + block(widths[1], widths[2])
  total += block(widths[2], widths[3])
  if cls is FCNNearest:
    return total + conv(widths[3], k, 1)
  if cls is FCNSkipConcat:  # decoder at 1/4, 1/2, 1: in = upsampled (2x skip width) + skip width
    for w in (widths[2], widths[1], widths[0]):
      total += block(3 * w, w)
    return total + conv(widths[0], k, 1)
  total += conv(widths[3], k, 1)  # scores at 1/8
  for w in (widths[2], widths[1], widths[0]):  # 4x4 transposed conv K -> K, then skip scores
    total += conv(k, k, 4, bias=upsample == "transpose") + conv(w, k, 1)
  return total


@pytest.mark.parametrize("cls,kw", VARIANTS, ids=IDS)
def test_shapes_and_dtypes(cls, kw):
  model = cls(5, base_features=4, **kw)
  params = _param_shapes(model, (8, 8))
  for hw in ((32, 32), (48, 64)):
    y = jax.eval_shape(lambda p, x: model.apply(p, x, train=False), {"params": params, **_stats(model, params)},
                       jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32))
    assert y.shape == (2, *hw, 5) and y.dtype == jnp.float32
  assert model.size_divisor == 8


def _stats(model, params):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False))
  return {k: v for k, v in shapes.items() if k != "params"}


@pytest.mark.parametrize("bn", [True, False])
@pytest.mark.parametrize("cls,kw", VARIANTS, ids=IDS)
def test_parameter_count(cls, kw, bn):
  model = cls(21, base_features=32, batch_norm=bn, **kw)
  expected = small_fcn_param_count(cls, kw.get("upsample"), 3, 21, 32, bn)
  counts = {count_params(_param_shapes(model, hw)) for hw in ((8, 8), (16, 24), (48, 64))}
  assert counts == {expected}  # independent of the input size
  shapes = [jax.tree.map(lambda a: a.shape, _param_shapes(model, hw)) for hw in ((8, 8), (48, 64))]
  assert shapes[0] == shapes[1]


def test_default_parameter_counts():
  # 3 input channels, 21 classes (PASCAL VOC), base 32, BN; the same formula as above, evaluated by hand:
  # encoder 10,208 + 55,552 + 221,696 + 885,760 = 1,173,216.
  assert count_params(_param_shapes(FCNNearest(21), (8, 8))) == 1_173_216 + 256 * 21 + 21
  # scores 256*21+21, then per level 16*21*21 (no bias) + (w*21 + 21) for w = 128, 64, 32.
  assert count_params(_param_shapes(FCNTransposedSkip(21), (8, 8))) == (
      1_173_216 + 5_397 + 3 * 16 * 21 * 21 + (128 + 64 + 32) * 21 + 3 * 21)


def _init(model, x):
  """Variables of the model's shapes filled from numpy (LeCun-normal kernels, BN scale 1, biases 0).

  Compiling `model.init` costs more than the whole step here: the default partitionable threefry takes
  seconds per parameter shape on XLA:CPU (jax 0.10.2). What these tests check does not depend on the init.
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  rng = np.random.default_rng(1)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])), leaf.dtype)
    return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


# One SGD step per model (the decoder variants share these modules; each compile costs seconds here).
@pytest.mark.parametrize("cls,kw", [VARIANTS[0], VARIANTS[2], VARIANTS[3]], ids=[IDS[0], IDS[2], IDS[3]])
def test_one_sgd_step_reduces_the_loss(cls, kw):
  model = cls(3, base_features=4, **kw)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 16, 16, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, (2, 16, 16)))
  variables = _init(model, x)
  params, stats = variables["params"], {k: v for k, v in variables.items() if k != "params"}

  def loss_fn(p):
    logits, _ = model.apply({"params": p, **stats}, x, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  opt = optax.sgd(0.05)

  @jax.jit
  def step(p):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, _ = opt.update(grads, opt.init(p), p)
    return loss, optax.apply_updates(p, updates), grads

  loss0, new_params, grads = step(params)
  loss1, _, _ = step(new_params)
  chex.assert_tree_all_finite(grads)
  assert float(loss1) < float(loss0)


def test_bfloat16_compute_returns_float32_logits():
  model = FCNTransposedSkip(4, base_features=4, dtype=jnp.bfloat16)
  x = jnp.ones((1, 16, 24, 3))
  variables = _init(model, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  y = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert y.shape == (1, 16, 24, 4) and y.dtype == jnp.float32


def test_errors_and_registry():
  with pytest.raises(ValueError, match="divisible by 8"):
    FCNNearest(2).init(jax.random.key(0), jnp.ones((1, 20, 24, 3)), train=False)
  with pytest.raises(ValueError, match="upsample"):
    FCNSkipConcat(2, upsample="transpose").init(jax.random.key(0), jnp.ones((1, 8, 8, 3)), train=False)
  with pytest.raises(ValueError, match="upsample"):
    FCNTransposedSkip(2, upsample="nearest").init(jax.random.key(0), jnp.ones((1, 8, 8, 3)), train=False)
  assert {k: MODELS[k] for k in ("fcn_nearest", "fcn_skip_concat", "fcn_transposed_skip")} == {
      "fcn_nearest": FCNNearest, "fcn_skip_concat": FCNSkipConcat, "fcn_transposed_skip": FCNTransposedSkip}
