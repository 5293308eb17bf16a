"""Upsampling for segmentation decoders: fixed interpolation, unpooling and learned upsampling.

The methods are the ones the segmentation literature compares:
- "nearest" and "bilinear" interpolation;
- "bed_of_nails" (each value in the top-left corner of its block, zeros elsewhere: the naive "demaxpool") and
  "unpool" (values back at the argmax positions of the matching max pooling: SegNet, Badrinarayanan et al.,
  2017; DeconvNet, Noh et al., 2015);
- "transpose" and "transpose_bilinear": a learned transposed ("backwards strided") convolution with kernel
  2*factor and stride factor, cropped to exactly factor x the input as in FCN (Long, Shelhamer, Darrell, CVPR
  2015, Sec. 3.3); "transpose_bilinear" starts from FCN's bilinear filter (`upsample_filt` in
  fcn.berkeleyvision.org/surgery.py) so that at initialisation it *is* bilinear interpolation;
- "learned": a per-channel factor x factor unpooling kernel, started at bed-of-nails.

XLA:CPU lowers the gradient of an lhs-dilated (strided transposed) convolution very slowly, so none of these is
written as one: the stride-sized kernels are broadcasts + depth-to-space reshapes, and the 2*factor transposed
convolution is a 2x2 stride-1 convolution to factor**2 output groups followed by depth-to-space (the same map;
tested against `nn.ConvTranspose`).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.ops.pooling import max_unpool

Dtype = Any

METHODS = ("nearest", "bilinear", "transpose", "transpose_bilinear", "bed_of_nails", "unpool", "learned")


def _factor_pair(factor: int | Sequence[int]) -> tuple[int, int]:
  fh, fw = (factor, factor) if isinstance(factor, int) else tuple(int(f) for f in factor)
  if fh < 1 or fw < 1:
    raise ValueError(f"upsampling factor must be a positive int or pair, got {factor}")
  return fh, fw


def _check_nhwc(x: jax.Array, name: str) -> None:
  if x.ndim != 4:
    raise ValueError(f"{name} expects NHWC input [B, H, W, C], got shape {x.shape}")


def upsample_nearest(x: jax.Array, factor: int | Sequence[int]) -> jax.Array:
  """Nearest-neighbour upsampling: every pixel becomes a factor x factor block. [B,H,W,C] -> [B,fH,fW,C]."""
  _check_nhwc(x, "upsample_nearest")
  fh, fw = _factor_pair(factor)
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, fh, w, fw, c)).reshape(b, h * fh, w * fw, c)


def bed_of_nails(x: jax.Array, factor: int | Sequence[int]) -> jax.Array:
  """Each value in the top-left corner of its factor x factor block, zeros elsewhere. [B,H,W,C] -> [B,fH,fW,C].

  The "naive demaxpool": what max unpooling does if every maximum had been in the window's first position.
  """
  _check_nhwc(x, "bed_of_nails")
  fh, fw = _factor_pair(factor)
  b, h, w, c = x.shape
  # A pad, not a scatter: its gradient is a strided slice.
  y = jnp.pad(x[:, :, None, :, None, :], ((0, 0), (0, 0), (0, fh - 1), (0, 0), (0, fw - 1), (0, 0)))
  return y.reshape(b, h * fh, w * fw, c)


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] linear interpolation weights with corners aligned: output i samples i*(n_in-1)/(n_out-1)."""
  m = np.zeros((n_out, n_in), np.float64)
  if n_out == 1 or n_in == 1:
    m[:, 0] = 1.0  # Caffe's Interp layer and PyTorch both sample the first row/column here.
    return m
  src = np.arange(n_out) * (n_in - 1) / (n_out - 1)
  lo = np.minimum(np.floor(src).astype(int), n_in - 2)
  frac = src - lo
  m[np.arange(n_out), lo] = 1.0 - frac
  m[np.arange(n_out), lo + 1] += frac
  return m


def resize_bilinear(x: jax.Array, size: Sequence[int], align_corners: bool = False) -> jax.Array:
  """Bilinear resize of [B, H, W, C] to [B, size[0], size[1], C] (up or down, no antialiasing).

  Args:
    x: [B, H, W, C] float.
    size: (height, width) of the output.
    align_corners: False: half-pixel centres (`jax.image.resize(..., 'bilinear', antialias=False)`, PyTorch's
      `align_corners=False`, TF2's `tf.image.resize`). True: the corner pixels of input and output coincide
      and output pixel i samples input position i * (H - 1) / (size - 1), the convention of Caffe's Interp layer
      used by DeepLab and PSPNet (PyTorch's `align_corners=True`).

  Returns:
    [B, size[0], size[1], C] with x's dtype.
  """
  _check_nhwc(x, "resize_bilinear")
  b, h, w, c = x.shape
  oh, ow = (int(s) for s in size)
  if not align_corners:
    return jax.image.resize(x, (b, oh, ow, c), method="bilinear", antialias=False)
  # Two small dense interpolation matrices: a matmul per axis, whose gradient is a matmul too.
  mh = jnp.asarray(_align_corners_matrix(h, oh), x.dtype)
  mw = jnp.asarray(_align_corners_matrix(w, ow), x.dtype)
  y = jnp.einsum("oh,bhwc->bowc", mh, x)
  return jnp.einsum("pw,bowc->bopc", mw, y)


def transpose_kernel_size(factor: int) -> int:
  """Kernel side of a factor-x transposed convolution: 2*factor - factor % 2 (Caffe's BilinearFiller docs).

  2*factor for even factors (FCN's 4/2, 16/8, 64/32); 2*factor - 1 for odd ones, whose bilinear filter then has
  a centre tap and stays centred on the half-pixel grid.
  """
  return 2 * factor - factor % 2


def bilinear_kernel(kernel_size: int, channels: int) -> np.ndarray:
  """FCN's bilinear upsampling filter (`upsample_filt`), diagonal over channels: [k, k, channels, channels].

  Used as the initial weight of a transposed convolution with stride `factor` and kernel
  `transpose_kernel_size(factor)`, it reproduces bilinear interpolation; channel c only feeds channel c.
  """
  factor = (kernel_size + 1) // 2
  center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
  og = np.arange(kernel_size, dtype=np.float64)
  filt1d = 1.0 - np.abs(og - center) / factor
  filt = np.outer(filt1d, filt1d)
  kernel = np.zeros((kernel_size, kernel_size, channels, channels), np.float64)
  kernel[:, :, np.arange(channels), np.arange(channels)] = filt[:, :, None]
  return kernel.astype(np.float32)


def transposed_conv(x: jax.Array, kernel: jax.Array, factor: int) -> jax.Array:
  """Stride-`factor` transposed convolution cropped to exactly factor x the input: [B,H,W,Ci] -> [B,fH,fW,Co].

  `kernel` [k, k, Ci, Co], k <= 2*factor, in the scatter convention of Caffe's Deconvolution and PyTorch's
  ConvTranspose2d: input pixel i adds x[i] * kernel[t] to output position i*factor + t. The full output,
  (H - 1)*factor + k long, is cropped by factor // 2 at the top/left (Caffe's pad = ceil((factor - 1) / 2)),
  which keeps a bilinear kernel on the half-pixel grid.

  Written without an lhs-dilated convolution: output block q (factor pixels) only receives input pixels q and
  q - 1, so it is a 2x2 stride-1 convolution to factor*factor*Co channels followed by depth-to-space.
  """
  f = factor
  k = kernel.shape[0]
  if kernel.shape[1] != k or k > 2 * f:
    raise ValueError(f"transposed_conv needs a square kernel of side <= 2*factor={2 * f}, got {kernel.shape}")
  b, h, w, _ = x.shape
  co = kernel.shape[-1]
  kernel = jnp.pad(kernel, ((0, 2 * f - k), (0, 2 * f - k), (0, 0), (0, 0)))
  # kernel[a*f + r, b*f + s] -> taps (a, b) of a 2x2 conv producing sub-pixel (r, s). The conv correlates, so tap
  # (0, 0) of the 2x2 window over the padded input is input pixel q - 1, which uses kernel row f + r: flip a, b.
  k2 = kernel.reshape(2, f, 2, f, -1, co)[::-1, :, ::-1]
  k2 = k2.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, -1, f * f * co)
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = jax.lax.conv_general_dilated(xp, k2, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = y.reshape(b, h + 1, w + 1, f, f, co).transpose(0, 1, 3, 2, 4, 5).reshape(b, (h + 1) * f, (w + 1) * f, co)
  c = f // 2
  return y[:, c:c + h * f, c:c + w * f, :]


def _spatial_shape(output_shape: Sequence[int]) -> tuple[int, int]:
  output_shape = tuple(int(s) for s in output_shape)
  if len(output_shape) == 4:
    output_shape = output_shape[1:3]
  if len(output_shape) != 2:
    raise ValueError(f"output_shape must be (H, W) or (B, H, W, C), got {output_shape}")
  return output_shape


class Upsample(nn.Module):
  """Upsamples [B, H, W, C] by `factor` with one of `METHODS`: [B, factor*H, factor*W, C or features].

  Attributes:
    method: "nearest", "bilinear" (half-pixel), "transpose" (learned transposed convolution, kernel
      `transpose_kernel_size(factor)` = 2*factor for even factors, stride factor, with bias, LeCun-normal
      init), "transpose_bilinear" (the same without bias, initialised to `bilinear_kernel` as FCN's
      upsampling layers are, so it starts as bilinear interpolation away from the border), "bed_of_nails",
      "unpool" (needs `indices` from `max_pool_with_argmax`), "learned" (per-channel factor x factor kernel,
      initialised to bed-of-nails, no bias).
    factor: integer upsampling factor.
    features: output channels for "transpose"; 0 keeps the input's channel count. The other methods cannot
      change the channel count (0 or C).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  method: str
  factor: int = 2
  features: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, indices: jax.Array | None = None,
               output_shape: Sequence[int] | None = None) -> jax.Array:
    """Upsamples x.

    Args:
      x: [B, H, W, C].
      indices: flat argmax positions from `max_pool_with_argmax`; required for "unpool", rejected otherwise.
      output_shape: (H', W') or a full NHWC shape. "unpool" writes into a map of this size (default factor x
        the input, pass the pre-pooling size after a ceil_mode pool of an odd-sized map); "bilinear" resizes to
        it; the other methods crop their factor x output to it (it must not be larger).

    Returns:
      [B, H', W', C'] in `dtype`.
    """
    _check_nhwc(x, f"Upsample({self.method!r})")
    if self.method not in METHODS:
      raise ValueError(f"Upsample.method must be one of {METHODS}, got {self.method!r}")
    if not isinstance(self.factor, int) or self.factor < 1:
      raise ValueError(f"Upsample.factor must be a positive int, got {self.factor!r}")
    if (indices is None) != (self.method != "unpool"):
      raise ValueError("Upsample: indices are required by method 'unpool' and only by it, "
                       f"got method={self.method!r} with indices={'none' if indices is None else 'given'}")
    b, h, w, c = x.shape
    f = self.factor
    out_hw = (f * h, f * w) if output_shape is None else _spatial_shape(output_shape)
    if self.features not in (0, c) and self.method != "transpose":
      raise ValueError(f"Upsample({self.method!r}) keeps the channel count ({c}); features={self.features} is "
                       "only available with method 'transpose'")
    x = x.astype(self.dtype)

    if self.method == "unpool":
      return max_unpool(x, indices, out_hw)
    if self.method == "bilinear":
      return resize_bilinear(x, out_hw)
    if self.method == "nearest":
      y = upsample_nearest(x, f)
    elif self.method == "bed_of_nails":
      y = bed_of_nails(x, f)
    elif self.method == "learned":
      kernel = self.param("kernel", _bed_of_nails_init, (f, f, c), self.param_dtype)
      kernel = kernel.astype(self.dtype)
      # Non-overlapping blocks: out[i*f + r, j*f + s, c] = x[i, j, c] * kernel[r, s, c], a broadcast.
      y = (x[:, :, None, :, None, :] * kernel[None, None, :, None, :, :]).reshape(b, f * h, f * w, c)
    else:
      k = transpose_kernel_size(f)
      features = self.features or c
      if self.method == "transpose":
        kernel = self.param("kernel", nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3),
                            (k, k, c, features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
      else:
        kernel = self.param("kernel", lambda _, shape, dtype: jnp.asarray(bilinear_kernel(k, c), dtype),
                            (k, k, c, c), self.param_dtype)
        bias = None
      y = transposed_conv(x, kernel.astype(self.dtype), f)
      if bias is not None:
        y = y + bias.astype(self.dtype)
    if out_hw[0] > y.shape[1] or out_hw[1] > y.shape[2]:
      raise ValueError(f"Upsample({self.method!r}, factor={f}) makes {y.shape[1]}x{y.shape[2]} from {h}x{w}; "
                       f"it cannot produce the larger output_shape {out_hw}")
    return y[:, :out_hw[0], :out_hw[1], :]


def _bed_of_nails_init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
  del key  # deterministic
  return jnp.zeros(shape, dtype).at[0, 0].set(1)
