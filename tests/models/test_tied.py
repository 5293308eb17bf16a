"""Tied-weight conv/deconv network: the layer spec grammar, the parameter tree, the decoder against
lax.conv_transpose and the exact adjoint with the encoder's kernels, and gradients through both uses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from segjax.models import tied
from segjax.models.tied import ConvSpec, TiedConvDeconv, parse_spec
from tests.models.common import abstract_variables, count_params, numpy_params, random_image


_DN = ("NHWC", "HWIO", "NHWC")


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
  params = abstract_variables(model, (1, 20, 20, 3))["params"]
  assert count_params(params) == _tied_param_count(3, 4, [(8, 5, 2), (16, 3, 2), (16, 5, 1)]) == 9_020
  kernels = {path: leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)
             if path[-1].key == "kernel"}
  assert sorted(jax.tree_util.keystr(p) for p in kernels) == [
      "['classifier']['kernel']", "['layer1']['kernel']", "['layer2']['kernel']", "['layer3']['kernel']"]
  # The default network (3 x C64k5s2) on RGB with 11 classes (e.g. Helen face parts).
  default = TiedConvDeconv(num_classes=11)
  counts = {count_params(abstract_variables(default, (1, s, s, 3))["params"]) for s in (16, 37)}
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
  x = random_image((2, 16, 12, 3))  # even sizes: lax.conv_transpose's 'SAME' inverts the forward shapes
  params = numpy_params(model, x.shape)
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
  x = random_image((1, 13, 7, 3))
  params = numpy_params(model, x.shape)
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
  x = random_image((1, 16, 12, 3))
  params = numpy_params(model, x.shape)
  target = random_image((1, 16, 12, 2), seed=7)
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
  x = random_image((1, 9, 10, 3))
  params = numpy_params(model, x.shape)
  y = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, x)
  assert y.dtype == jnp.float32 and y.shape == (1, 9, 10, 3)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(abstract_variables(model, x.shape)["params"]))
