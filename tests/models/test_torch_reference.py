"""bench/torch_models.py: the PyTorch twins of U-Net, SegNet and FCN-8s are the same functions as segjax's.

The throughput benchmark compares frameworks on these twins, so they must not differ in architecture: equal
parameter counts at the benchmark's real widths, and, with the flax weights copied over, equal outputs at narrow
widths (inference, and BatchNorm's batch statistics in training for U-Net). Weights are randomised away from
the flax initialisation first (FCN's zero-initialised score layers, BatchNorm's unit scale and zero statistics)
so that every layer contributes to the compared output.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import models

torch = pytest.importorskip("torch", reason="the PyTorch reference networks need torch (pip install -e '.[test]')")

from bench import torch_models  # noqa: E402  pylint: disable=wrong-import-position

RTOL = 1e-4


def _init(name, num_classes, x_nhwc, **overrides):
  """(flax model, variables with randomised weights and BatchNorm statistics, torch twin with them copied)."""
  model = models.build_model(name, num_classes, **torch_models.segjax_kwargs(name, **overrides))
  # Only the shapes of `init`: every value is replaced below, and an eager init costs minutes on this CPU.
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.asarray(x_nhwc), train=False))
  rng = np.random.default_rng(1)

  def randomise(path, leaf):
    names = [getattr(k, "key", str(k)) for k in path]
    if names[-1] == "var":
      return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    if names[-1] in ("mean", "bias"):
      return rng.normal(0.0, 0.2, leaf.shape).astype(np.float32)
    if names[-1] == "scale":
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    # Kernels: He-normal scale (fan-in = all axes but the last), which also replaces FCN's all-zero score layers.
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.normal(0.0, 1.0, leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  variables = jax.tree_util.tree_map_with_path(randomise, shapes)
  net = torch_models.build(name, x_nhwc.shape[-1], num_classes, **overrides)
  torch_models.copy_flax_params(net, variables)
  return model, variables, net


# XLA:CPU compiles SegNet's five unpoolings for ~10 s at its default LLVM optimisation level, half that at level 0;
# these tiny forwards run in well under a second either way, and the numbers compared are the same function's.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _flax_forward(model, variables, x_nhwc):
  """Inference logits of the flax model, jitted (one compile per net, where op-by-op dispatch costs minutes)."""
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=_FAST_COMPILE)
  return np.asarray(fn(variables, jnp.asarray(x_nhwc)))


def _torch_forward(net, x_nhwc):
  with torch.no_grad():
    y = net(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
  return y.numpy().transpose(0, 2, 3, 1)


def _assert_close(actual, expected):
  # Relative to the output's scale: logits near zero carry only absolute float32 rounding.
  scale = float(np.abs(expected).max())
  assert scale > 1e-3, "degenerate reference output: the comparison would prove nothing"
  np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale)


def _num_params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,num_classes,published", [
    ("unet", 12, 7_763_500),      # the U-Net of ENVIRONMENT.md's timing table ("7.76 M params")
    ("segnet", 11, 29_449_355),   # SegNet paper, Table 6 ("29.5M"); segjax's docstring
    ("fcn8s", 21, 134_362_751),   # FCN papers' "134M"; segjax's docstring
])
def test_parameter_counts_at_benchmark_widths(name, num_classes, published):
  # The benchmark's real widths: shapes only on the flax side, meta tensors on the torch side (no memory).
  model = models.build_model(name, num_classes, **torch_models.segjax_kwargs(name))
  side = models.init_size(model)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, side, side, 3)), train=False))
  with torch.device("meta"):
    net = torch_models.build(name, 3, num_classes)
  torch_count = sum(p.numel() for p in net.parameters())
  assert torch_count == _num_params(shapes["params"])
  if name != "unet":
    assert torch_count == published
  else:
    assert round(torch_count / 1e4) == round(published / 1e4)


def test_unet_matches_flax_in_eval_and_train_mode():
  x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  model, variables, net = _init("unet", 5, x, depth=2, base_features=4)
  assert sum(p.numel() for p in net.parameters()) == _num_params(variables["params"])

  @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
  def flax_eval_and_train(variables, x):
    train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return model.apply(variables, x, train=False), train_logits, updates["batch_stats"]

  expected, train_expected, stats = jax.tree.map(np.asarray, flax_eval_and_train(variables, jnp.asarray(x)))

  net.eval()
  _assert_close(_torch_forward(net, x), expected)
  # The copy flips the up-convolution kernels (Flax applies transposed-convolution kernels flipped); unflipped,
  # the output differs, so the equality is not an accident of a symmetric layer.
  with torch.no_grad():
    net.upconv0.weight.copy_(net.upconv0.weight.flip(2, 3))
    assert np.abs(_torch_forward(net, x) - expected).max() > 1e-2 * np.abs(expected).max()
    net.upconv0.weight.copy_(net.upconv0.weight.flip(2, 3))

  # Training mode: BatchNorm normalises with the batch's statistics and updates its running averages.
  net.train()
  old = variables["batch_stats"]["down1"]["BatchNorm_0"]
  _assert_close(_torch_forward(net, x), train_expected)
  new, bn = stats["down1"]["BatchNorm_0"], net.down1.BatchNorm_0
  # Same momentum: the running mean moves identically.
  np.testing.assert_allclose(bn.running_mean.numpy(), new["mean"], rtol=1e-5, atol=1e-6)
  # The running variance differs only by torch's unbiased estimate: n / (n - 1), n = 2 x 8 x 8 pixels.
  n = 2 * 8 * 8
  flax_batch_var = (new["var"] - 0.9 * old["var"]) / 0.1
  torch_batch_var = (bn.running_var.numpy() - 0.9 * old["var"]) / 0.1
  np.testing.assert_allclose(torch_batch_var, flax_batch_var * n / (n - 1), rtol=1e-3)


def test_segnet_matches_flax():
  # 36x44 exercises the ceil-mode pooling (18x22 -> 9x11 -> 5x6 -> 3x3 -> 2x2) and unpooling to odd sizes.
  x = np.random.default_rng(0).normal(size=(2, 36, 44, 3)).astype(np.float32)
  model, variables, net = _init("segnet", 5, x, base_features=8)
  assert sum(p.numel() for p in net.parameters()) == _num_params(variables["params"])
  net.eval()
  _assert_close(_torch_forward(net, x), _flax_forward(model, variables, x))


def test_fcn8s_matches_flax():
  # Narrow VGG (stage widths 4..16) and fc6/fc7 of 32; the geometry (pad 100, ceil pooling, crops) is the real one.
  x = np.random.default_rng(0).normal(size=(1, 32, 40, 3)).astype(np.float32)
  stages = ((4, 2), (8, 2), (8, 3), (16, 3), (16, 3))
  model, variables, net = _init("fcn8s", 5, x, stages=stages, fc_features=32)
  assert sum(p.numel() for p in net.parameters()) == _num_params(variables["params"])
  net.eval()
  _assert_close(_torch_forward(net, x), _flax_forward(model, variables, x))


def test_build_rejects_options_without_a_twin():
  with pytest.raises(ValueError, match="upsample"):
    torch_models.build("unet", 3, 2, upsample="bilinear")
  with pytest.raises(ValueError, match="no PyTorch twin"):
    torch_models.build("pspnet", 3, 2)
