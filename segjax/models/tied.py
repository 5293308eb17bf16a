"""Convolution/deconvolution network with tied weights, built from a compact layer spec string.

The lecture's best face-part segmentation network: an encoder of 5x5, 64-channel strided convolutions and a
mirrored decoder whose deconvolutions *reuse the encoder kernels*, used transposed, as in tied-weight
convolutional auto-encoders (Masci, Meier, Ciresan, Schmidhuber, ICANN 2011). Encoder maps are added to the
decoder maps of the same size before the ReLU (symmetric sum skips, as in RED-Net: Mao, Shen, Yang, NIPS 2016).

Spec grammar: layers separated by '-', each `C<features>k<kernel>s<stride>`, e.g. "C64k5s2-C64k5s2-C64k5s2"
(three 5x5 stride-2 convolutions with 64 channels). The decoder is never written: it is the mirror image of the
encoder. The default spec is that three-layer network: the lecture gives 5x5 kernels and 64 channels; the number
of layers is our choice (change `spec` for a deeper encoder).

  encoder  e_0 = image,  e_i = relu(conv(e_{i-1}, W_i, stride s_i, 'SAME') + b_i)              i = 1..n
  decoder  d_n = e_n,    d_{i-1} = relu(conv(d_i, W_i)^T + c_i + e_{i-1})                      i = n..2
  logits   = conv(d_1, V)^T + c_0     (V: [k_1, k_1, K, C_1], kernel and stride of layer 1)

where conv(., W)^T is the transpose (adjoint) of the encoder convolution: with W [k, k, Cin, Cout] it maps a
[B, h, w, Cout] map back to the exact [B, H, W, Cin] shape of that layer's input, so any input size works and
the logits have the input's height and width. The first layer cannot be mirrored with its own kernel (it would
map back to the image's channels), so its place is taken by the classifier, a transposed convolution with the
first layer's geometry and its own weights V. Every decoder layer has its own bias c_i (the decoder map has the
encoder layer's input width, so the encoder bias does not fit).

Parameters: `layer{i}` holds W_i, b_i (and c_i for i >= 2), `classifier` holds V, c_0; there is no other kernel.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from segjax.models.layers import Dtype, check_images

_LAYER = re.compile(r"C(\d+)k(\d+)s(\d+)")
_GRAMMAR = "C<features>k<kernel>s<stride> layers joined by '-', e.g. 'C64k5s2-C64k5s2-C64k5s2'"
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


class ConvSpec(NamedTuple):
  """One encoder layer: `features` output channels, a `kernel` x `kernel` window, stride `stride`."""
  features: int
  kernel: int
  stride: int


def parse_spec(spec: str) -> tuple[ConvSpec, ...]:
  """Parses a layer spec such as "C64k5s2-C64k5s2-C64k5s2".

  Raises:
    ValueError: an empty spec, or a token that is not `C<features>k<kernel>s<stride>` with positive integers;
      the message names the token and its position.
  """
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"empty layer spec {spec!r}: expected {_GRAMMAR}")
  layers = []
  for position, token in enumerate(spec.split("-"), start=1):
    token = token.strip()
    match = _LAYER.fullmatch(token)
    if match is None:
      raise ValueError(f"bad layer token {token!r} (layer {position}) in spec {spec!r}: expected {_GRAMMAR}")
    features, kernel, stride = (int(g) for g in match.groups())
    if min(features, kernel, stride) < 1:
      raise ValueError(f"bad layer token {token!r} (layer {position}) in spec {spec!r}: features, kernel and "
                       f"stride must be >= 1")
    layers.append(ConvSpec(features, kernel, stride))
  return tuple(layers)


def conv_same(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """'SAME'-padded strided convolution: [B, H, W, Cin] with kernel [k, k, Cin, Cout] -> [B, ceil(H/s), ...]."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), "SAME", dimension_numbers=_DIMENSIONS)


def conv_same_transpose(y: jax.Array, kernel: jax.Array, stride: int, out_hw: Sequence[int]) -> jax.Array:
  """The transpose (adjoint) of `conv_same(., kernel, stride)` for inputs of height and width `out_hw`.

  Maps y [B, ceil(H/s), ceil(W/s), Cout] to [B, H, W, Cin] with the same kernel [k, k, Cin, Cout]: the input is
  dilated by the stride, padded so that every output pixel sees exactly the input pixels whose forward window
  covered it, and correlated with the spatially flipped, channel-swapped kernel. For even H, W this equals
  `lax.conv_transpose(y, kernel, (s, s), 'SAME', transpose_kernel=True)` (tested); unlike it, odd sizes map
  back to the exact forward input size.
  """
  pads = []
  for axis, size in enumerate(out_hw):
    k, n = kernel.shape[axis], y.shape[1 + axis]
    if n != -(-size // stride):
      raise ValueError(f"a stride-{stride} 'SAME' convolution of size {size} gives {-(-size // stride)}, not {n}")
    # Forward 'SAME' padding before the input (lax.padtype_to_pads), then the padding that inverts it.
    forward_lo = max((n - 1) * stride + k - size, 0) // 2
    lo = k - 1 - forward_lo
    hi = size + k - 1 - ((n - 1) * stride + 1) - lo
    pads.append((lo, hi))
  flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
  return lax.conv_general_dilated(y, flipped, (1, 1), pads, lhs_dilation=(stride, stride),
                                  dimension_numbers=_DIMENSIONS)


class TiedConvLayer(nn.Module):
  """A strided convolution whose kernel is also used, transposed, by its mirrored decoder layer.

  Attributes:
    spec: features, kernel size and stride.
    in_features: input channels (the kernel is [k, k, in_features, features]).
    decoder: whether the layer is mirrored in the decoder (adds the decoder bias `transpose_bias`).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  spec: ConvSpec
  in_features: int
  decoder: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    k = self.spec.kernel
    self.kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, self.in_features, self.spec.features),
                             self.param_dtype)
    self.bias = self.param("bias", nn.initializers.zeros, (self.spec.features,), self.param_dtype)
    if self.decoder:
      self.transpose_bias = self.param("transpose_bias", nn.initializers.zeros, (self.in_features,),
                                       self.param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Encoder use: [B, H, W, in_features] -> [B, ceil(H/s), ceil(W/s), features] (before the ReLU)."""
    x, kernel, bias = nn.dtypes.promote_dtype(x, self.kernel, self.bias, dtype=self.dtype)
    return conv_same(x, kernel, self.spec.stride) + bias

  def transpose(self, y: jax.Array, out_hw: Sequence[int]) -> jax.Array:
    """Decoder use: [B, h, w, features] -> [B, *out_hw, in_features] with the same kernel (before the ReLU)."""
    y, kernel, bias = nn.dtypes.promote_dtype(y, self.kernel, self.transpose_bias, dtype=self.dtype)
    return conv_same_transpose(y, kernel, self.spec.stride, out_hw) + bias


class TransposedClassifier(nn.Module):
  """Transposed convolution to class scores with the first layer's geometry: [B, h, w, C] -> [B, *out_hw, K].

  Attributes:
    num_classes: K.
    spec: kernel size and stride of the encoder's first layer.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  spec: ConvSpec
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, y: jax.Array, out_hw: Sequence[int]) -> jax.Array:
    k = self.spec.kernel
    # Stored in the orientation of the forward convolution it transposes ([k, k, K, C]), like the tied kernels.
    kernel = self.param("kernel", nn.initializers.lecun_normal(in_axis=(0, 1, 3), out_axis=2),
                        (k, k, self.num_classes, y.shape[-1]), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,), self.param_dtype)
    y, kernel, bias = nn.dtypes.promote_dtype(y, kernel, bias, dtype=self.dtype)
    return conv_same_transpose(y, kernel, self.spec.stride, out_hw) + bias


class TiedConvDeconv(nn.Module):
  """Tied-weight conv/deconv segmentation network: [B, H, W, C] -> logits [B, H, W, K] float32, any H, W.

  Attributes:
    num_classes: K.
    spec: encoder layers, `C<features>k<kernel>s<stride>` joined by '-' (module docstring); the decoder mirrors
      them with the same kernels.
    dtype: compute dtype; parameters stay `param_dtype`.
    param_dtype: parameter dtype.
  """

  num_classes: int
  spec: str = "C64k5s2-C64k5s2-C64k5s2"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train  # no BatchNorm or dropout
    check_images(x, "TiedConvDeconv")
    specs = parse_spec(self.spec)
    x = x.astype(self.dtype)
    layers, encoded = [], [x]
    for i, spec in enumerate(specs, start=1):
      layer = TiedConvLayer(spec, encoded[-1].shape[-1], decoder=i > 1, dtype=self.dtype,
                            param_dtype=self.param_dtype, name=f"layer{i}")
      layers.append(layer)
      encoded.append(nn.relu(layer(encoded[-1])))
    y = encoded[-1]
    for i in range(len(specs), 1, -1):
      skip = encoded[i - 1]
      y = nn.relu(layers[i - 1].transpose(y, skip.shape[1:3]) + skip)
    logits = TransposedClassifier(self.num_classes, specs[0], dtype=self.dtype, param_dtype=self.param_dtype,
                                  name="classifier")(y, x.shape[1:3])
    return logits.astype(jnp.float32)
