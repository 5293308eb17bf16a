"""Sliding-window patch classifier and the tied-weight conv/deconv network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from segjax.models import patch_classifier, tied
from segjax.models.patch_classifier import PatchClassifier, PatchNet, sliding_window_predict
from segjax.models.tied import ConvSpec, TiedConvDeconv, parse_spec

_DN = ("NHWC", "HWIO", "NHWC")


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _abstract_params(model, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)["params"]


def _numpy_params(model, shape, seed=0):
  """Parameters with `model.init`'s structure, filled from numpy: XLA:CPU compiles threefry initialisers slowly
  on a loaded machine, and the tests only need well-scaled values."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if path[-1].key.endswith("bias"):
      return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, _abstract_params(model, shape))


def _image(shape, seed=1):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# PatchClassifier

_TINY = dict(patch_size=9, features=(4, 5), kernel_sizes=(2, 2), hidden=8)


def test_ciresan_n4_parameter_count():
  # Ciresan et al., NIPS 2012, Table 1 (network N4, 65x65 window), layer by layer:
  n4 = (4 * 4 * 1 * 48 + 48          # conv 4x4, 48 maps: 65 -> 62, pool -> 31
        + 4 * 4 * 48 * 48 + 48       # conv 4x4, 48 maps: 31 -> 28, pool -> 14
        + 3 * 3 * 48 * 48 + 48       # conv 3x3, 48 maps: 14 -> 12, pool -> 6
        + 3 * 3 * 48 * 48 + 48       # conv 3x3, 48 maps: 6 -> 4, pool -> 2
        + 2 * 2 * 48 * 200 + 200     # fully connected, 200 neurons
        + 200 * 2 + 2)               # fully connected, 2 outputs
  assert n4 == 118_298
  assert patch_classifier.patch_feature_sides(65, (4, 4, 3, 3)) == [31, 14, 6, 2]
  model = PatchClassifier(num_classes=2)
  for side in (65, 100):  # independent of the image size
    assert _count(_abstract_params(model, (1, side, side, 1))) == n4


def _reflect(i, n):
  """Mirror index without repeating the edge (numpy's 'reflect'), for overhangs smaller than n."""
  if i < 0:
    return -i
  if i >= n:
    return 2 * (n - 1) - i
  return i


def _numpy_patch(image, b, i, j, p):
  """The p x p patch of image[b] whose index p // 2 is pixel (i, j), mirrored at the borders, by a loop."""
  h, w, _ = image.shape[1:]
  rows = [_reflect(i + d, h) for d in range(-(p // 2), p - p // 2)]
  cols = [_reflect(j + d, w) for d in range(-(p // 2), p - p // 2)]
  return image[b][np.ix_(rows, cols)]


def _anchor(i, stride, n):
  return min(i // stride * stride + (stride - 1) // 2, n - 1)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_dense_output_is_the_classifier_on_each_pixels_patch(stride):
  model = PatchClassifier(num_classes=3, stride=stride, chunk_size=7, **_TINY)
  image = _image((2, 7, 5, 2))
  params = _numpy_params(model, image.shape)
  dense = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, image))
  assert dense.shape == (2, 7, 5, 3) and dense.dtype == np.float32
  # Brute force: every pixel's own patch (its block anchor's, for stride > 1), cut out by a numpy loop.
  pixels = [(b, i, j) for b in range(2) for i in range(7) for j in range(5)]
  patches = np.stack([_numpy_patch(image, b, _anchor(i, stride, 7), _anchor(j, stride, 5), 9)
                      for b, i, j in pixels])
  net = PatchNet(3, (4, 5), (2, 2), 8)
  expected = np.asarray(net.apply({"params": params["net"]}, patches)).reshape(2, 7, 5, 3)
  np.testing.assert_allclose(dense, expected, rtol=1e-5, atol=1e-5)
  if stride > 1:  # constant over each stride x stride block, and not constant overall
    assert np.array_equal(dense[:, :stride, :stride], np.broadcast_to(dense[:, :1, :1], (2, stride, stride, 3)))
    assert not np.allclose(dense[:, 0, 0], dense[:, -1, -1])


def test_output_shapes_for_odd_sizes_and_chunking_invariance():
  image = _image((1, 11, 6, 1))
  base = PatchClassifier(num_classes=2, chunk_size=1, **_TINY)
  params = _numpy_params(base, image.shape)
  outs = []
  for chunk_size in (1, 13, 1000):
    model = base.clone(chunk_size=chunk_size)
    outs.append(np.asarray(jax.jit(lambda p, x, m=model: m.apply({"params": p}, x, train=False))(params, image)))
  assert all(o.shape == (1, 11, 6, 2) for o in outs)
  for o in outs[1:]:
    np.testing.assert_allclose(o, outs[0], rtol=1e-6, atol=1e-6)
  y = jax.eval_shape(lambda p, x: base.clone(stride=4).apply({"params": p}, x, train=False), params, image)
  assert y.shape == (1, 11, 6, 2)


def test_sliding_window_predict_with_a_linear_classifier_and_even_patch():
  # A linear classifier with a fixed matrix: the dense result is a numpy loop over all pixels.
  p, k = 4, 3
  image = _image((2, 5, 6, 2), seed=3)
  weights = np.random.default_rng(4).standard_normal((p * p * 2, k)).astype(np.float32)
  classify = lambda patches: patches.reshape(patches.shape[0], -1) @ weights  # noqa: E731
  dense = sliding_window_predict(classify, jnp.asarray(image), patch_size=p, stride=1, chunk_size=8)
  expected = np.zeros((2, 5, 6, k), np.float32)
  for b in range(2):
    for i in range(5):
      for j in range(6):
        expected[b, i, j] = _numpy_patch(image, b, i, j, p).reshape(-1) @ weights
  np.testing.assert_allclose(dense, expected, rtol=1e-5, atol=1e-5)


def test_gradients_flow_through_the_sliding_window():
  model = PatchClassifier(num_classes=2, chunk_size=16, **_TINY)
  image = _image((1, 6, 6, 1))
  params = _numpy_params(model, image.shape)
  loss = lambda p: model.apply({"params": p}, image, train=False).sum()  # noqa: E731
  grads = jax.jit(jax.grad(loss))(params)
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


def test_patch_classifier_rejects_bad_configurations():
  with pytest.raises(ValueError, match="too small"):
    PatchClassifier(2, patch_size=6, **{k: v for k, v in _TINY.items() if k != "patch_size"}).init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  with pytest.raises(ValueError, match="activation"):
    PatchClassifier(2, activation="sigmoid", **_TINY).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)


# ----------------------------------------------------------------------------------------------------------
# TiedConvDeconv


def test_parse_spec():
  assert parse_spec("C64k5s2-C64k5s2-C64k5s2") == (ConvSpec(64, 5, 2),) * 3
  assert parse_spec("C8k3s1") == (ConvSpec(8, 3, 1),)
  assert parse_spec(" C16k5s2 - C32k3s1 ") == (ConvSpec(16, 5, 2), ConvSpec(32, 3, 1))
  assert parse_spec("C128k7s4-C1k1s1") == (ConvSpec(128, 7, 4), ConvSpec(1, 1, 1))


@pytest.mark.parametrize("spec,token", [
    ("C64k5", "C64k5"), ("C64k5s2-", ""), ("c64k5s2", "c64k5s2"), ("C64k5s2--C64k5s2", ""),
    ("C64 k5 s2", "C64 k5 s2"), ("C64k5s2-P2", "P2"), ("C0k5s2", "C0k5s2"), ("C64k5s2x", "C64k5s2x")])
def test_parse_spec_rejects_bad_tokens_naming_them(spec, token):
  with pytest.raises(ValueError, match=f"bad layer token {token!r}".replace("(", r"\(")):
    parse_spec(spec)


def test_parse_spec_rejects_empty():
  with pytest.raises(ValueError, match="empty layer spec"):
    parse_spec("  ")


def _tied_param_count(in_channels, classes, layers):
  """Encoder kernels + biases, one decoder bias per mirrored layer (2..n), and the transposed classifier."""
  total, cin = 0, in_channels
  for i, (features, k, _) in enumerate(layers):
    total += k * k * cin * features + features
    if i > 0:
      total += cin  # the decoder bias: the mirrored layer outputs this layer's input channels
    cin = features
  c1, k1 = layers[0][0], layers[0][1]
  return total + k1 * k1 * c1 * classes + classes


def test_weight_tying_parameter_tree():
  model = TiedConvDeconv(num_classes=4, spec="C8k5s2-C16k3s2-C16k5s1")
  params = _abstract_params(model, (1, 20, 20, 3))
  assert _count(params) == _tied_param_count(3, 4, [(8, 5, 2), (16, 3, 2), (16, 5, 1)]) == 9_020
  kernels = {path: leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)
             if path[-1].key == "kernel"}
  assert sorted(jax.tree_util.keystr(p) for p in kernels) == [
      "['classifier']['kernel']", "['layer1']['kernel']", "['layer2']['kernel']", "['layer3']['kernel']"]
  # The default network (3 x C64k5s2) on RGB with 11 classes (e.g. Helen face parts).
  default = TiedConvDeconv(num_classes=11)
  counts = {_count(_abstract_params(default, (1, s, s, 3))) for s in (16, 37)}
  assert counts == {_tied_param_count(3, 11, [(64, 5, 2)] * 3)} == {227_531}


def _reference(params, x, specs, decoder_kernels, transpose):
  """The network written out with separate decoder kernels; `transpose(y, kernel, stride, skip)` is the
  reference deconvolution."""
  enc = [x]
  for i, (_, _, stride) in enumerate(specs, start=1):
    p = params[f"layer{i}"]
    enc.append(jax.nn.relu(lax.conv_general_dilated(enc[-1], p["kernel"], (stride, stride), "SAME",
                                                    dimension_numbers=_DN) + p["bias"]))
  y = enc[-1]
  for i in range(len(specs), 1, -1):
    y = jax.nn.relu(transpose(y, decoder_kernels[i], specs[i - 1][2], enc[i - 1])
                    + params[f"layer{i}"]["transpose_bias"] + enc[i - 1])
  cls = params["classifier"]
  return transpose(y, cls["kernel"], specs[0][2], x[..., :cls["kernel"].shape[2]]) + cls["bias"]


def _lax_conv_transpose(y, kernel, stride, like):
  del like
  return lax.conv_transpose(y, kernel, (stride, stride), "SAME", dimension_numbers=_DN, transpose_kernel=True)


def _vjp_transpose(y, kernel, stride, like):
  """The exact adjoint of the 'SAME' convolution at `like`'s shape, from JAX's autodiff."""
  forward = lambda z: lax.conv_general_dilated(z, kernel, (stride, stride), "SAME", dimension_numbers=_DN)  # noqa: E731
  zeros = jnp.zeros(like.shape[:3] + (kernel.shape[2],), y.dtype)
  return jax.vjp(forward, zeros)[1](y)[0]


_SPEC = "C6k5s2-C8k3s2-C8k5s1"
_SPECS = [(6, 5, 2), (8, 3, 2), (8, 5, 1)]


def test_decoder_equals_lax_conv_transpose_with_the_encoder_kernels():
  model = TiedConvDeconv(num_classes=3, spec=_SPEC)
  x = _image((2, 16, 12, 3))  # even sizes: lax.conv_transpose's 'SAME' inverts the forward shapes
  params = _numpy_params(model, x.shape)
  y = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, x)
  tied_kernels = {i: params[f"layer{i}"]["kernel"] for i in (2, 3)}
  expected = _reference(params, x, _SPECS, tied_kernels, _lax_conv_transpose)
  assert y.shape == (2, 16, 12, 3)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
  # The same layers with untied (different) decoder kernels give another output: the comparison can fail.
  other = {i: params[f"layer{i}"]["kernel"][::-1] for i in (2, 3)}
  assert not np.allclose(y, _reference(params, x, _SPECS, other, _lax_conv_transpose), atol=1e-3)


def test_odd_sizes_use_the_exact_adjoint():
  model = TiedConvDeconv(num_classes=3, spec=_SPEC)
  x = _image((1, 13, 7, 3))
  params = _numpy_params(model, x.shape)
  y = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, x)
  tied_kernels = {i: params[f"layer{i}"]["kernel"] for i in (2, 3)}
  expected = jax.jit(lambda p, k, x: _reference(p, x, _SPECS, k, _vjp_transpose))(params, tied_kernels, x)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_conv_same_transpose_is_the_adjoint():
  # <conv(x), y> == <x, conv^T(y)> for odd and even sizes, strides 1-3.
  rng = np.random.default_rng(5)
  for (h, w), k, s in [((9, 7), 5, 2), ((8, 8), 5, 2), ((10, 5), 3, 3), ((5, 4), 3, 1)]:
    x = rng.standard_normal((1, h, w, 2)).astype(np.float32)
    kernel = rng.standard_normal((k, k, 2, 3)).astype(np.float32)
    fx = tied.conv_same(x, kernel, s)
    y = rng.standard_normal(fx.shape).astype(np.float32)
    ty = tied.conv_same_transpose(y, kernel, s, (h, w))
    assert ty.shape == x.shape
    np.testing.assert_allclose(float(jnp.vdot(fx, y)), float(jnp.vdot(x, ty)), rtol=1e-4)


def test_gradient_reaches_the_shared_kernel_from_both_uses():
  model = TiedConvDeconv(num_classes=2, spec=_SPEC)
  x = _image((1, 16, 12, 3))
  params = _numpy_params(model, x.shape)
  target = _image((1, 16, 12, 2), seed=7)
  loss = lambda out: jnp.sum((out - target) ** 2)  # noqa: E731
  grads = jax.jit(jax.grad(lambda p: loss(model.apply({"params": p}, x, train=False))))(params)

  def untied_loss(encoder_kernels, decoder_kernels):
    p = {**params, **{f"layer{i}": {**params[f"layer{i}"], "kernel": encoder_kernels[i]} for i in (2, 3)}}
    return loss(_reference(p, x, _SPECS, decoder_kernels, _lax_conv_transpose))

  kernels = {i: params[f"layer{i}"]["kernel"] for i in (2, 3)}
  g_enc, g_dec = jax.jit(jax.grad(untied_loss, argnums=(0, 1)))(kernels, kernels)
  for i in (2, 3):
    assert float(jnp.abs(g_enc[i]).max()) > 0 and float(jnp.abs(g_dec[i]).max()) > 0
    np.testing.assert_allclose(grads[f"layer{i}"]["kernel"], g_enc[i] + g_dec[i], rtol=1e-3, atol=1e-4)
    assert not np.allclose(grads[f"layer{i}"]["kernel"], g_enc[i], rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 7, 9, 3), (1, 16, 16, 1), (1, 33, 20, 3)])
def test_output_shape_equals_input_shape(shape):
  model = TiedConvDeconv(num_classes=5)
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False)[0],
                       jax.ShapeDtypeStruct(shape, jnp.float32))
  assert out.shape == shape[:3] + (5,) and out.dtype == jnp.float32


def test_bfloat16_compute_float32_logits():
  model = TiedConvDeconv(num_classes=3, spec=_SPEC, dtype=jnp.bfloat16)
  x = _image((1, 9, 10, 3))
  params = _numpy_params(model, x.shape)
  y = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, x)
  assert y.dtype == jnp.float32 and y.shape == (1, 9, 10, 3)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(_abstract_params(model, x.shape)))
