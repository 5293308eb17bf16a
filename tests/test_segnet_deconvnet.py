"""SegNet, SegNet-Basic and DeconvNet: parameter counts against the reference prototxts and papers, the Caffe
geometry on odd sizes, and index unpooling checked against a numpy argmax loop.

Real forward passes use narrow networks and numpy-filled parameters (XLA:CPU compiles `model.init`'s random
number generation far more slowly than the forward pass itself); everything at full width goes through
`jax.eval_shape`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.deconvnet import DeconvNet
from segjax.models.segnet import SegNet, SegNetBasic, local_response_norm


def _abstract_variables(model, shape, dtype=jnp.float32):
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), jax.ShapeDtypeStruct(shape, dtype))


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _shapes(tree):
  return jax.tree.map(lambda leaf: leaf.shape, tree)


def _numpy_variables(model, shape, seed=0):
  """Variables with `model.init`'s structure, filled from numpy: He-scaled kernels, small random biases."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      value = rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    elif name == "bias":
      value = rng.normal(0.0, 0.1, leaf.shape)
    else:  # running means
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, _abstract_variables(model, shape))


# ----------------------------------------------------------------------------------------------------------
# Parameter counts, written out from the reference layer tables.


def _conv(cin, cout, k):  # Caffe convolutions and deconvolutions all have a bias
  return k * k * cin * cout + cout


def _bn(c):  # the Caffe "BN" layer of SegNet/DeconvNet: a scale and a shift per channel
  return 2 * c


# (cin, cout) of VGG16's 13 3x3 convolutions (Simonyan & Zisserman 2015, Table 1, D).
_VGG16 = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512), (512, 512),
          (512, 512), (512, 512), (512, 512), (512, 512)]


def segnet_param_count(num_classes):
  """alexgkendall/SegNet-Tutorial Models/segnet_train.prototxt: conv+BN(+ReLU) x 13, conv5_3_D ... conv1_2_D
  with BN, and conv1_1_D (3x3 to the classes, no BN) as the classifier."""
  decoder = [(512, 512)] * 5 + [(512, 256), (256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64)]
  total = sum(_conv(i, o, 3) + _bn(o) for i, o in _VGG16 + decoder)
  return total + _conv(64, num_classes, 3)


def segnet_basic_param_count(num_classes):
  """Models/segnet_basic_train.prototxt: conv1..conv4 and conv_decode4..1 (7x7, 64, each + BN), 1x1 classifier."""
  return _conv(3, 64, 7) + _bn(64) + 7 * (_conv(64, 64, 7) + _bn(64)) + _conv(64, num_classes, 1)


def deconvnet_param_count(num_classes):
  """HyeonwooNoh/DeconvNet DeconvNet_inference_deploy.prototxt: BN after every conv and deconv layer."""
  total = sum(_conv(i, o, 3) + _bn(o) for i, o in _VGG16)
  total += _conv(512, 4096, 7) + _bn(4096)  # fc6
  total += _conv(4096, 4096, 1) + _bn(4096)  # fc7
  total += _conv(4096, 512, 7) + _bn(512)  # fc6-deconv
  deconvs = [(512, 512)] * 5 + [(512, 256), (256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64),
                                (64, 64)]
  total += sum(_conv(i, o, 3) + _bn(o) for i, o in deconvs)
  return total + _conv(64, num_classes, 1)  # seg-score


def test_segnet_has_the_prototxt_layers_and_29_5m_parameters():
  params = _abstract_variables(SegNet(11), (1, 32, 32, 3))["params"]
  n = _count(params)
  assert n == segnet_param_count(11) == 29_449_355
  # SegNet paper (TPAMI 2017), Table 6: 29.5M parameters.
  assert abs(n - 29.5e6) / 29.5e6 < 0.005
  assert params["conv1_1_D"]["kernel"].shape == (3, 3, 64, 11) and "conv1_1_D_bn" not in params
  assert params["conv4_1_D"]["kernel"].shape == (3, 3, 512, 256)
  assert params["encoder"]["conv5_3"]["kernel"].shape == (3, 3, 512, 512)
  assert len([k for k in params["encoder"] if k.startswith("conv")]) == 13
  assert len([k for k in params if k.endswith("_D")]) == 13


def test_segnet_basic_parameter_count():
  params = _abstract_variables(SegNetBasic(11), (1, 32, 32, 3))["params"]
  n = _count(params)
  assert n == segnet_basic_param_count(11) == 1_416_587
  # SegNet paper (TPAMI 2017), Table 1 lists SegNet-Basic with 1.425M parameters (rounded loosely).
  assert abs(n - 1.425e6) / 1.425e6 < 0.01
  assert params["conv1"]["kernel"].shape == (7, 7, 3, 64)
  assert params["conv_classifier"]["kernel"].shape == (1, 1, 64, 11)


def test_deconvnet_has_the_prototxt_layers_and_252m_parameters():
  params = _abstract_variables(DeconvNet(21), (1, 224, 224, 3))["params"]
  n = _count(params)
  assert n == deconvnet_param_count(21) == 251_805_653
  # Noh et al. (ICCV 2015) and SegNet (TPAMI 2017, Table 6): 252M parameters.
  assert abs(n - 252e6) / 252e6 < 0.005
  assert params["fc6"]["kernel"].shape == (7, 7, 512, 4096)
  assert params["fc7"]["kernel"].shape == (1, 1, 4096, 4096)
  assert params["fc6_deconv"]["kernel"].shape == (7, 7, 4096, 512)
  assert params["deconv4_3"]["kernel"].shape == (3, 3, 512, 256)
  assert params["seg_score"]["kernel"].shape == (1, 1, 64, 21)


@pytest.mark.parametrize("model,sizes", [
    (SegNet(4, base_features=4), [(32, 32), (45, 60)]),
    (SegNetBasic(4, features=8), [(16, 16), (45, 60)]),
    (DeconvNet(4, base_features=4, fc_features=8), [(224, 224), (257, 300)]),
    (DeconvNet(4, base_features=4, fc_features=8, fc6_padding="SAME"), [(32, 32), (37, 50)]),
])
def test_parameter_shapes_do_not_depend_on_input_size(model, sizes):
  shapes = [_shapes(_abstract_variables(model, (1, h, w, 3))) for h, w in sizes]
  assert all(s == shapes[0] for s in shapes[1:])


# ----------------------------------------------------------------------------------------------------------
# Geometry.


def _apply_shapes(model, shape, dtype=jnp.float32, **kwargs):
  """Shapes of (logits, variables) of a forward pass; the variables include the sown intermediates."""
  return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False, mutable=True, **kwargs),
                        jax.ShapeDtypeStruct(shape, dtype))


def test_segnet_unpools_to_the_camvid_sizes_of_the_prototxt():
  # segnet_train.prototxt, 360x480 CamVid: upsample5 to 23x30 and upsample4 to 45x60 (Caffe pools round up).
  logits, state = _apply_shapes(SegNet(11, base_features=4), (1, 360, 480, 3))
  inter = state["intermediates"]
  assert inter["unpool5"][0].shape[1:3] == (23, 30)
  assert inter["unpool4"][0].shape[1:3] == (45, 60)
  assert inter["unpool1"][0].shape[1:3] == (360, 480)
  assert logits.shape == (1, 360, 480, 11) and logits.dtype == jnp.float32
  # segnet_basic_train.prototxt: upsample4 uses pad_out_h to go from 23 back to 45 rows.
  logits, state = _apply_shapes(SegNetBasic(11, features=8), (1, 360, 480, 3))
  assert state["intermediates"]["unpool4"][0].shape[1:3] == (45, 60)
  assert logits.shape == (1, 360, 480, 11)


@pytest.mark.parametrize("model,size", [(SegNet(3, base_features=4), (36, 52)), (SegNet(3, base_features=4), (1, 1)),
                                        (SegNetBasic(3, features=8), (17, 9))])
def test_segnet_output_has_the_input_size(model, size):
  logits, _ = _apply_shapes(model, (2, *size, 3))
  assert logits.shape == (2, *size, 3) and logits.dtype == jnp.float32


def test_deconvnet_fc6_collapses_a_224_input_to_1x1():
  model = DeconvNet(21)
  logits, state = _apply_shapes(model, (2, 224, 224, 3), capture_intermediates=True)
  inter = state["intermediates"]
  assert inter["fc6"]["__call__"][0].shape == (2, 1, 1, 4096)
  assert inter["fc6_deconv"]["__call__"][0].shape == (2, 7, 7, 512)
  assert inter["unpool5"][0].shape == (2, 14, 14, 512)
  assert logits.shape == (2, 224, 224, 21) and logits.dtype == jnp.float32


def test_deconvnet_input_size_limits():
  model = DeconvNet(5, base_features=4, fc_features=8)
  assert model.min_input_size == 193  # ceil(193 / 32) = 7 = fc6's kernel
  logits, state = _apply_shapes(model, (1, 193, 250, 3))
  assert state["intermediates"]["encoder"]["pre_pool5"][0].shape[1:3] == (13, 16)
  assert logits.shape == (1, 193, 250, 5)
  with pytest.raises(ValueError, match="at least 193"):
    _apply_shapes(model, (1, 192, 250, 3))
  same = DeconvNet(5, base_features=4, fc_features=8, fc6_padding="SAME")
  logits, _ = _apply_shapes(same, (1, 37, 50, 3))
  assert logits.shape == (1, 37, 50, 5)
  with pytest.raises(ValueError, match="fc6_padding"):
    _apply_shapes(DeconvNet(5, base_features=4, fc_features=8, fc6_padding="FULL"), (1, 224, 224, 3))


@pytest.mark.parametrize("model", [SegNet(3, base_features=4, dtype=jnp.bfloat16),
                                   SegNetBasic(3, features=8, dtype=jnp.bfloat16),
                                   DeconvNet(3, base_features=4, fc_features=8, dtype=jnp.bfloat16)])
def test_bfloat16_compute_gives_float32_logits_and_params(model):
  logits, variables = _apply_shapes(model, (1, 224, 224, 3))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables["params"]))
  assert logits.dtype == jnp.float32


def test_lrn_matches_caffe_formula():
  x = np.random.default_rng(0).normal(0, 30, (2, 3, 4, 7)).astype(np.float32)
  size, alpha, beta = 5, 1e-4, 0.75
  ref = np.empty_like(x)
  for c in range(x.shape[-1]):
    lo, hi = max(0, c - size // 2), min(x.shape[-1], c + size // 2 + 1)
    ref[..., c] = x[..., c] / (1 + alpha / size * (x[..., lo:hi] ** 2).sum(-1)) ** beta
  np.testing.assert_allclose(np.asarray(local_response_norm(jnp.asarray(x), size, alpha, beta)), ref, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Real forward passes (narrow networks, one compilation per model).


def _numpy_unpool_reference(pre_pool):
  """2x2/2 ceil-mode max pooling of [B, H, W, C] written back where each maximum was (first in row-major order
  on ties), zeros elsewhere; also the boolean map of those argmax positions."""
  b, h, w, c = pre_pool.shape
  out, mask = np.zeros_like(pre_pool), np.zeros(pre_pool.shape, bool)
  for i in range(0, h, 2):
    for j in range(0, w, 2):
      window = pre_pool[:, i:i + 2, j:j + 2, :]
      ww = window.shape[2]
      flat = window.reshape(b, -1, c)
      arg = flat.argmax(axis=1)
      for bi in range(b):
        for ci in range(c):
          di, dj = divmod(arg[bi, ci], ww)
          out[bi, i + di, j + dj, ci] = flat[bi, arg[bi, ci], ci]
          mask[bi, i + di, j + dj, ci] = True
  return out, mask


def _forward(model, shape):
  x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
  variables = _numpy_variables(model, shape)

  @jax.jit
  def apply(v, x):
    return model.apply(v, x, train=True, mutable=["batch_stats", "intermediates"],
                       capture_intermediates=lambda mdl, _: mdl.name == "conv1_1")

  logits, state = apply(variables, x)
  return variables, jax.tree.map(np.asarray, (logits, state))


@pytest.fixture(scope="module")
def segnet_run():
  return _forward(SegNet(5, base_features=4), (2, 45, 60, 3))


@pytest.fixture(scope="module")
def segnet_basic_run():
  return _forward(SegNetBasic(5, features=8), (2, 45, 60, 3))


@pytest.fixture(scope="module")
def deconvnet_run():
  return _forward(DeconvNet(5, base_features=4, fc_features=16), (2, 193, 200, 3))


def _assert_zero_off_argmax(unpooled, pre_pool):
  _, mask = _numpy_unpool_reference(pre_pool)
  assert unpooled.shape == pre_pool.shape
  assert not np.any(unpooled[~mask]), "unpooled map has values away from the encoder's argmax positions"
  assert np.count_nonzero(unpooled) > 0.2 * mask.sum()


def test_segnet_decoder_unpools_to_the_encoder_argmax(segnet_run):
  _, (_, state) = segnet_run
  inter = state["intermediates"]
  pre5 = inter["encoder"]["pre_pool5"][0]
  assert pre5.shape == (2, 3, 4, 32)  # 45x60 -> 23x30 -> 12x15 -> 6x8 -> 3x4 (ceil), then a partial window
  # The first decoder stage unpools pool5 itself: every window's maximum back in place, zeros elsewhere.
  expected, _ = _numpy_unpool_reference(pre5)
  np.testing.assert_array_equal(inter["unpool5"][0], expected)
  _assert_zero_off_argmax(inter["unpool1"][0], inter["encoder"]["pre_pool1"][0])
  _assert_zero_off_argmax(inter["unpool3"][0], inter["encoder"]["pre_pool3"][0])


def test_segnet_basic_decoder_unpools_to_the_encoder_argmax(segnet_basic_run):
  _, (_, state) = segnet_basic_run
  inter = state["intermediates"]
  expected, _ = _numpy_unpool_reference(inter["pre_pool4"][0])
  np.testing.assert_array_equal(inter["unpool4"][0], expected)
  _assert_zero_off_argmax(inter["unpool1"][0], inter["pre_pool1"][0])
  _assert_zero_off_argmax(inter["unpool2"][0], inter["pre_pool2"][0])


def test_deconvnet_decoder_unpools_to_the_encoder_argmax(deconvnet_run):
  _, (_, state) = deconvnet_run
  inter = state["intermediates"]
  for s in (5, 1):
    _assert_zero_off_argmax(inter[f"unpool{s}"][0], inter["encoder"][f"pre_pool{s}"][0])


@pytest.mark.parametrize("run", ["segnet_run", "segnet_basic_run", "deconvnet_run"])
def test_train_forward_gives_logits_and_updates_batch_stats(run, request):
  variables, (logits, state) = request.getfixturevalue(run)
  assert logits.dtype == np.float32 and np.all(np.isfinite(logits))
  pre_pool1 = state["intermediates"].get("encoder", state["intermediates"])["pre_pool1"][0]
  assert logits.shape == pre_pool1.shape[:3] + (5,)
  old, new = variables["batch_stats"], state["batch_stats"]
  assert jax.tree.structure(old) == jax.tree.structure(new)
  for path, mean in jax.tree_util.tree_leaves_with_path(new):
    if path[-1].key == "mean":
      assert np.all(mean != 0), f"{jax.tree_util.keystr(path)} was not updated"
  if "encoder" in new:
    # Flax momentum 0.9: running mean <- 0.9 * 0 + 0.1 * batch mean of conv1_1's output.
    conv1_1 = state["intermediates"]["encoder"]["conv1_1"]["__call__"][0]
    np.testing.assert_allclose(new["encoder"]["bn1_1"]["mean"], 0.1 * conv1_1.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
