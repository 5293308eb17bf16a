"""segjax.ops.conv: oneDNN convolutions (forward and both gradients) against XLA's, the dispatch of Flax's Conv,
the backend resolution, and a whole U-Net training step on either backend.

The oneDNN library is optional for users; CI sets SEGJAX_REQUIRE_ONEDNN=1 so that a failed build fails the
suite instead of skipping it.
"""

import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import config as config_lib
from segjax import experiment, models
from segjax.data import augment
from segjax.ops import conv
from segjax.training import steps
from tests.conftest import tiny_config


@pytest.fixture(autouse=True, scope="module")
def _onednn():
  ok, reason = conv.available()
  if not ok:
    if os.environ.get("SEGJAX_REQUIRE_ONEDNN") == "1":
      pytest.fail(f"SEGJAX_REQUIRE_ONEDNN=1 but the oneDNN backend is unavailable: {reason}")
    pytest.skip(f"segjax's oneDNN convolutions are unavailable: {reason}")


def _lax(x, w, strides, padding, dilation):
  return jax.lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _flax_style(backend, x, w, strides, padding, dilation):
  with conv.backend(backend):
    return conv.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                     dimension_numbers=jax.lax.conv_dimension_numbers(
                                         x.shape, w.shape, ("NHWC", "HWIO", "NHWC")))


def _value_and_grads(fn, x, w, cotangent):
  y, vjp = jax.vjp(fn, x, w)
  return (y, *vjp(cotangent))


CASES = [
    # (N, H, W, C), (KH, KW, O), strides, padding, dilation
    ((2, 9, 11, 3), (3, 3, 8), (1, 1), "SAME", (1, 1)),
    ((2, 16, 16, 32), (3, 3, 32), (1, 1), "SAME", (1, 1)),
    ((3, 13, 10, 16), (3, 3, 24), (2, 2), "SAME", (1, 1)),
    ((2, 12, 12, 8), (7, 7, 16), (1, 1), "VALID", (1, 1)),
    ((2, 15, 14, 8), (3, 3, 8), (1, 1), ((2, 2), (2, 2)), (2, 2)),
    ((2, 11, 9, 12), (3, 2, 5), (2, 1), ((0, 2), (1, 0)), (1, 3)),
    ((1, 8, 8, 64), (1, 1, 11), (1, 1), "VALID", (1, 1)),
    ((2, 23, 23, 4), (7, 7, 6), (2, 2), ((3, 3), (3, 3)), (1, 1)),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_onednn_equals_xla_forward_and_gradients(case):
  (n, h, wd, c), (kh, kw, o), strides, padding, dilation = case
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(n, h, wd, c)).astype(np.float32))
  w = jnp.asarray(rng.normal(size=(kh, kw, c, o)).astype(np.float32))
  y_ref = _lax(x, w, strides, padding, dilation)
  cotangent = jnp.asarray(rng.normal(size=y_ref.shape).astype(np.float32))
  ref = jax.jit(lambda x, w, g: _value_and_grads(functools.partial(_lax, strides=strides, padding=padding,
                                                                   dilation=dilation), x, w, g))(x, w, cotangent)
  ours = jax.jit(lambda x, w, g: _value_and_grads(functools.partial(_flax_style, "onednn", strides=strides,
                                                                    padding=padding, dilation=dilation),
                                                  x, w, g))
  hlo = ours.lower(x, w, cotangent).as_text()
  for target in conv._TARGETS.values():  # pylint: disable=protected-access
    assert target in hlo, f"{target} not called"
  for name, a, b in zip(("output", "input gradient", "kernel gradient"), ours(x, w, cotangent), ref):
    assert a.shape == b.shape, name
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * float(jnp.abs(b).max()), err_msg=name)


def test_bfloat16_against_float32():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 16, 16, 32)).astype(np.float32)
  w = rng.normal(size=(3, 3, 32, 32)).astype(np.float32) * 0.1
  g = rng.normal(size=(2, 16, 16, 32)).astype(np.float32)
  fn = functools.partial(_flax_style, "onednn", strides=(1, 1), padding="SAME", dilation=(1, 1))
  ref = jax.jit(lambda x, w, g: _value_and_grads(
      functools.partial(_lax, strides=(1, 1), padding="SAME", dilation=(1, 1)), x, w, g))(x, w, g)
  got = jax.jit(lambda x, w, g: _value_and_grads(fn, x, w, g))(*(jnp.asarray(a, jnp.bfloat16) for a in (x, w, g)))
  for a, b in zip(got, ref):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=0, atol=2e-2 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("kwargs", [
    {"feature_group_count": 2},
    {"lhs_dilation": (2, 2), "padding": ((1, 1), (1, 1))},
    {"dimension_numbers": ("NCHW", "OIHW", "NCHW")},
    {"padding": ((-1, 0), (0, 0))},
])
def test_unsupported_convolutions_fall_back_to_xla(kwargs):
  rng = np.random.default_rng(2)
  dn = kwargs.get("dimension_numbers", ("NHWC", "HWIO", "NHWC"))
  groups = kwargs.get("feature_group_count", 1)
  x = rng.normal(size=(2, 4, 8, 8) if dn[0] == "NCHW" else (2, 8, 8, 4)).astype(np.float32)
  w = rng.normal(size=(6, 4 // groups, 3, 3) if dn[1] == "OIHW" else (3, 3, 4 // groups, 6)).astype(np.float32)
  args = dict(window_strides=(1, 1), padding=kwargs.get("padding", "SAME"), lhs_dilation=kwargs.get("lhs_dilation"),
              dimension_numbers=dn, feature_group_count=groups)

  def ours(x, w):
    with conv.backend("onednn"):
      return conv.conv_general_dilated(x, w, **args)

  lowered = jax.jit(ours).lower(x, w).as_text()
  assert "SegjaxOnednn" not in lowered
  np.testing.assert_array_equal(jax.jit(ours)(x, w), jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, **args))(
      x, w))


def test_backend_context_and_flax_conv():
  module = conv.Conv(8, (3, 3))
  x = jnp.ones((2, 8, 8, 4))
  variables = module.init(jax.random.key(0), x)
  assert set(variables["params"]) == {"kernel", "bias"}  # nn.Conv's names
  assert conv.current_backend() == "xla"
  with conv.backend("onednn"):
    assert conv.current_backend() == "onednn"
    hlo = jax.jit(module.apply).lower(variables, x).as_text()
  assert conv.current_backend() == "xla"
  assert "SegjaxOnednnConvForward" in hlo
  assert "SegjaxOnednn" not in jax.jit(module.apply).lower(variables, x).as_text()
  with pytest.raises(ValueError, match="'xla' or 'onednn'"):
    with conv.backend("auto"):
      pass


def test_resolve_backend():
  assert conv.resolve_backend("auto", 1, "cpu") == "onednn"
  assert conv.resolve_backend("auto", 8, "cpu") == "xla"
  assert conv.resolve_backend("auto", 1, "gpu") == "xla"
  assert conv.resolve_backend("xla", 1, "cpu") == "xla"
  assert conv.resolve_backend("onednn", 1, "cpu") == "onednn"
  with pytest.raises(ValueError, match=r"conv_backend='onednn'.*8 devices.*--config.conv_backend=auto"):
    conv.resolve_backend("onednn", 8, "cpu")
  with pytest.raises(ValueError, match="platform is tpu"):
    conv.resolve_backend("onednn", 1, "tpu")
  with pytest.raises(ValueError, match="must be one of"):
    conv.resolve_backend("mkl", 1, "cpu")


def test_experiment_resolves_the_config(tmp_path):
  c = config_lib.default_config()
  c.dataset.data_dir = str(tmp_path)
  assert experiment.build(c).conv_backend == "xla"  # 8 test devices: XLA
  assert experiment.build(c, devices=jax.devices()[:1]).conv_backend == "onednn"
  c.conv_backend = "xla"
  assert experiment.build(c, devices=jax.devices()[:1]).conv_backend == "xla"
  c.conv_backend = "onednn"
  with pytest.raises(ValueError, match="8 devices"):
    _ = experiment.build(c).conv_backend
  c.conv_backend = "mkldnn"
  with pytest.raises(ValueError, match="config.conv_backend='mkldnn'"):
    experiment.build(c)


def test_ffi_rejects_inconsistent_attributes():
  x = jnp.ones((1, 5, 5, 2))
  w = jnp.ones((3, 3, 2, 4))
  target = conv._TARGETS["forward"]  # pylint: disable=protected-access
  call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((1, 5, 5, 4), jnp.float32))
  with pytest.raises(Exception, match="inconsistent shapes or attributes"):
    jax.block_until_ready(call(x, w, stride=np.array([1, 1], np.int64), padding=np.array([0, 0, 0, 0], np.int64),
                               dilation=np.array([1, 1], np.int64)))


def test_unet_train_steps_agree_across_backends():
  # Three full U-Net steps (BatchNorm, up-convolutions) on one device: the backends differ only by float rounding
  # in the convolutions. SGD keeps parameter differences proportional to gradient differences (Adam's per-weight
  # normalisation would magnify the rounding of near-zero gradients).
  model = models.build_model("unet", 5, depth=2, base_features=8)
  rng = np.random.default_rng(3)
  batch = {"image": rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32),
           "label": rng.integers(0, 5, (4, 32, 32)).astype(np.int32), "weight": np.ones((4, 32, 32), np.float32)}
  results = {}
  for backend in ("xla", "onednn"):
    # Plain SGD at 0.05, cross-entropy, inputs (x - 127.5) / 127.5, no augmentation, on one device.
    config = tiny_config("unused", **{"dataset.crop_size": (32, 32), "optimizer.name": "sgd",
                                      "optimizer.learning_rate": 0.05, "optimizer.schedule": "constant",
                                      "optimizer.warmup_steps": 0, "optimizer.weight_decay": 0.0,
                                      "optimizer.momentum": 0.0, "loss.ce_weight": 1.0, "loss.dice_weight": 0.0,
                                      "augment": augment.config_block(), "conv_backend": backend})
    exp = experiment.build(config, jax.devices()[:1], model=model)
    assert exp.conv_backend == backend and exp.mean == (127.5,) and exp.std == (127.5,)
    state = exp.init_state()
    fn = steps.jit_train_step(exp)
    losses = []
    for _ in range(3):
      state, out = fn(state, batch)
      losses.append(float(out["loss"]))
    results[backend] = (losses, state)
    hlo = fn.lower(state, batch).as_text() if hasattr(fn, "lower") else ""
    if hlo:
      assert ("SegjaxOnednn" in hlo) == (backend == "onednn")
  np.testing.assert_allclose(results["onednn"][0], results["xla"][0], rtol=1e-4)
  for a, b in zip(jax.tree.leaves(results["onednn"][1].params), jax.tree.leaves(results["xla"][1].params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-4 * max(float(jnp.abs(b).max()), 1e-3))


def test_exported_models_never_call_the_library():
  from segjax.serving import export  # pylint: disable=import-outside-toplevel
  model = models.build_model("unet", 3, depth=2, base_features=4)
  variables = model.init(jax.random.key(0), jnp.ones((1, 16, 16, 3)), train=False)
  fn = export.inference_function(model, variables, mean=(127.5,), std=(127.5,))
  with conv.backend("onednn"):
    text = jax.jit(fn).lower(jnp.zeros((1, 16, 16, 3), jnp.uint8)).as_text()
  assert not re.search("SegjaxOnednn", text)


def test_vmap_loops_over_the_mapped_axis():
  rng = np.random.default_rng(4)
  xs = rng.normal(size=(3, 2, 6, 6, 4)).astype(np.float32)
  w = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
  fn = functools.partial(_flax_style, "onednn", strides=(1, 1), padding="SAME", dilation=(1, 1))
  ref = functools.partial(_lax, strides=(1, 1), padding="SAME", dilation=(1, 1))
  got = jax.jit(jax.vmap(fn, in_axes=(0, None)))(xs, w)
  np.testing.assert_allclose(got, jax.vmap(ref, in_axes=(0, None))(xs, w), rtol=0, atol=1e-4)


def test_concurrent_primitives_keep_their_own_scratchpads():
  # Independent convolutions in one program run concurrently on XLA's threads; with oneDNN's shared
  # "library" scratchpad two of them overwrote each other (FCN-8s' step segfaulted at 352x480). Eight
  # independent layers with large kernel gradients, forward and backward, against XLA, several times.
  rng = np.random.default_rng(5)
  shapes = [((2, 18, 22, 256), (7, 7, 256, 512)), ((2, 40, 40, 64), (3, 3, 64, 128)),
            ((2, 30, 30, 128), (3, 3, 128, 128)), ((1, 20, 20, 512), (3, 3, 512, 256))] * 2
  xs = [jnp.asarray(rng.normal(size=s).astype(np.float32)) for s, _ in shapes]
  ws = [jnp.asarray(rng.normal(size=k).astype(np.float32) * 0.01) for _, k in shapes]

  def loss(backend, xs, ws):
    with conv.backend(backend):
      return sum(jnp.sum(conv.conv_general_dilated(x, w, (1, 1), "VALID",
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)
                 for x, w in zip(xs, ws))

  ref = jax.jit(jax.grad(functools.partial(loss, "xla"), argnums=(0, 1)))(xs, ws)
  ours = jax.jit(jax.grad(functools.partial(loss, "onednn"), argnums=(0, 1)))
  for _ in range(3):
    got = ours(xs, ws)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * float(jnp.abs(b).max()))
