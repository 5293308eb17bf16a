"""PSPNet: adaptive pooling and the pyramid pooling module against numpy loops, channel dropout in the heads,
parameter counts written out from the layer table, and the auxiliary head's sowing."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import pspnet as pspnet_lib
from segjax.ops.norm import BatchNorm
from tests.models.common import abstract_variables, count_params, numpy_variables


def _adaptive_pool_reference(x, oh, ow):
  """numpy loop over PyTorch's AdaptiveAvgPool2d bins: start = floor(i*H/o), end = ceil((i+1)*H/o)."""
  b, h, w, c = x.shape
  out = np.zeros((b, oh, ow, c), np.float64)
  for i in range(oh):
    h0, h1 = int(np.floor(i * h / oh)), int(np.ceil((i + 1) * h / oh))
    for j in range(ow):
      w0, w1 = int(np.floor(j * w / ow)), int(np.ceil((j + 1) * w / ow))
      out[:, i, j] = np.asarray(x, np.float64)[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return out


def test_adaptive_avg_pool_matches_pytorch_bins():
  rng = np.random.default_rng(0)
  bins = (1, 2, 3, 6)
  pool = jax.jit(lambda x: [pspnet_lib.adaptive_avg_pool(x, b) for b in bins])
  # Overlapping bins (7, 10, 61), exact tiling (12, 60), and more bins than inputs (3, 5).
  for h, w in ((7, 10), (12, 3), (60, 61)):
    x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    for b, y in zip(bins, pool(x)):
      np.testing.assert_allclose(y, _adaptive_pool_reference(x, b, b), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pspnet_lib.adaptive_avg_pool(x, (2, 5)), _adaptive_pool_reference(x, 2, 5),
                             rtol=1e-5, atol=1e-6)
  assert pspnet_lib.adaptive_avg_pool(jnp.ones((1, 7, 7, 2), jnp.bfloat16), 3).dtype == jnp.bfloat16


def _bilinear_align_corners(x, oh, ow):
  """numpy loop: output (i, j) samples input (i * (h - 1) / (oh - 1), j * (w - 1) / (ow - 1))."""
  b, h, w, c = x.shape
  out = np.zeros((b, oh, ow, c))
  for i in range(oh):
    y = i * (h - 1) / (oh - 1) if oh > 1 else 0.0
    y0 = min(int(np.floor(y)), h - 1)
    y1, fy = min(y0 + 1, h - 1), y - y0
    for j in range(ow):
      xx = j * (w - 1) / (ow - 1) if ow > 1 else 0.0
      x0 = min(int(np.floor(xx)), w - 1)
      x1, fx = min(x0 + 1, w - 1), xx - x0
      out[:, i, j] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx * x[:, y0, x1]
                      + fy * (1 - fx) * x[:, y1, x0] + fy * fx * x[:, y1, x1])
  return out


def test_pyramid_pooling_module_matches_numpy():
  x = np.random.default_rng(0).normal(size=(2, 7, 9, 8)).astype(np.float32)
  ppm = pspnet_lib.PyramidPooling((1, 2, 3, 6))
  variables = numpy_variables(ppm, x, random_stats=True)
  y = np.asarray(jax.jit(lambda v, x: ppm.apply(v, x, train=False))(variables, x))
  assert y.shape == (2, 7, 9, 8 + 4 * 2)  # each level reduced to 8 / 4 channels
  np.testing.assert_allclose(y[..., :8], x, rtol=1e-6)
  p, stats = variables["params"], variables["batch_stats"]
  for i, b in enumerate((1, 2, 3, 6)):
    pooled = _adaptive_pool_reference(x, b, b)
    z = pooled @ np.asarray(p[f"conv{i}"]["kernel"][0, 0], np.float64)
    z = (z - stats[f"bn{i}"]["mean"]) / np.sqrt(stats[f"bn{i}"]["var"] + 1e-5)
    z = z * p[f"bn{i}"]["scale"] + p[f"bn{i}"]["bias"]
    ref = _bilinear_align_corners(np.maximum(z, 0), 7, 9)
    np.testing.assert_allclose(y[..., 8 + 2 * i:10 + 2 * i], ref, rtol=1e-4, atol=1e-5)


def test_head_dropout_drops_whole_channels():
  # PyTorch's Dropout2d (semseg, MMSeg): one keep/drop decision per example and channel, kept ones scaled 1/(1-p).
  head = pspnet_lib.ConvHead(3, features=16, dropout_rate=0.5)
  x = np.random.default_rng(0).normal(size=(4, 6, 6, 8)).astype(np.float32)
  variables = numpy_variables(head, x, random_stats=True)

  @jax.jit
  def run(variables, x):
    return head.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2, impl="rbg")},
                      capture_intermediates=lambda m, _: isinstance(m, (nn.Dropout, BatchNorm)),
                      mutable=["batch_stats", "intermediates"])[1]

  state = run(variables, x)
  kept = np.asarray(state["intermediates"]["bn"]["__call__"][0]) / 0.5  # the BatchNorm's fused ReLU output
  dropped = np.asarray(state["intermediates"]["Dropout_0"]["__call__"][0])
  keep = np.any(dropped != 0, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
  assert 0.2 < keep.mean() < 0.8
  np.testing.assert_allclose(dropped, np.where(keep, kept, 0.0), rtol=1e-6, atol=1e-6)


PSP_BACKBONE = {50: 23_631_808, 101: 42_623_936}  # deep-stem counts, tests/models/backbones/test_resnet.py


def pspnet_param_count(num_classes, depth=50, aux=True):
  """Written out from the PSPNet layer table (semseg pspnet.py): PPM 4 x (1x1 2048->512 + BN), 3x3 4096->512 +
  BN, 1x1 512->K with bias; auxiliary 3x3 1024->256 + BN, 1x1 256->K with bias."""
  ppm = 4 * (2048 * 512 + 2 * 512)
  cls = 9 * 4096 * 512 + 2 * 512 + 512 * num_classes + num_classes
  aux_head = 9 * 1024 * 256 + 2 * 256 + 256 * num_classes + num_classes
  return PSP_BACKBONE[depth] + ppm + cls + (aux_head if aux else 0)


@pytest.mark.parametrize("num_classes,depth,aux,expected", [
    (21, 50, True, 49_081_578),    # PASCAL VOC
    (150, 50, True, 49_180_908),   # ADE20K
    (150, 50, False, 46_782_550),  # deployed model: the auxiliary head is dropped after training
    (19, 101, False, 65_707_475),  # Cityscapes PSPNet-101 at inference
])
def test_pspnet_parameter_count(num_classes, depth, aux, expected):
  model = pspnet_lib.PSPNet(num_classes, depth=depth, aux_head=aux)
  n = count_params(abstract_variables(model, jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32))["params"])
  assert n == pspnet_param_count(num_classes, depth, aux) == expected


def test_pspnet_aux_logits_are_sown_in_training_only():
  model = pspnet_lib.PSPNet(5, dtype=jnp.bfloat16)  # logits are float32 whatever the compute dtype
  x = jax.ShapeDtypeStruct((2, 40, 57, 3), jnp.float32)
  variables = abstract_variables(model, x)
  train_out, train_state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)},
                               mutable=["batch_stats", "aux"]), variables, x)
  eval_out, eval_state = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, mutable=["aux"]),
                                        variables, x)
  for out in (train_out, eval_out):
    assert out.shape == (2, 40, 57, 5) and out.dtype == jnp.float32
  (aux,) = train_state["aux"]["logits"]
  assert aux.shape == (2, 40, 57, 5) and aux.dtype == jnp.float32
  assert "aux" not in eval_state

  no_aux = pspnet_lib.PSPNet(5, aux_head=False)
  variables = abstract_variables(no_aux, x)
  assert "aux" not in variables["params"]
  _, state = jax.eval_shape(lambda v, x: no_aux.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)},
                                                      mutable=["batch_stats", "aux"]), variables, x)
  assert "aux" not in state


def test_pspnet_any_input_size_same_param_shapes():
  model = pspnet_lib.PSPNet(7)
  shapes = {}
  # 9x9 leaves a 2x2 layer4 map, smaller than the 3x3 and 6x6 bins; 473 = 8 * 59 + 1 is semseg's crop.
  for size in ((9, 9), (64, 48), (473, 473)):
    x = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
    logits, variables = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x, train=False), x)
    assert logits.shape == (1, *size, 7) and logits.dtype == jnp.float32
    shapes[size] = jax.tree.map(lambda a: (a.shape, a.dtype), variables)
  assert shapes[(9, 9)] == shapes[(64, 48)] == shapes[(473, 473)]
