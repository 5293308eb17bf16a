"""Dilated front-end and context module of Yu & Koltun, "Multi-Scale Context Aggregation by Dilated
Convolutions", ICLR 2016.

Front-end (Sec. 4; fyu/dilation, network.py `build_frontend_vgg`): VGG16 with pool4 and pool5 removed, every
later convolution dilated by 2 for each removed pooling (conv5_1-conv5_3 by 2, fc6 by 4), fc6 a 7x7
convolution with 4096 channels, fc7 1x1 with 4096, both followed by ReLU and dropout 0.5, and `final`, a 1x1
convolution to the C classes (Gaussian init, std 0.001). Output stride 8. The paper's front-end is unpadded
and runs on reflection-padded inputs (186 pixels a side); here every convolution is SAME-padded instead, so
any input size works without the margin, and pooling rounds up (Caffe), so score i is centred on input pixel
8i + 3.5.

Context module (Sec. 3, Table 1): eight layers on the C-channel score map, 3x3 convolutions with dilations
1, 1, 2, 4, 8, 16, 1 each followed by a pointwise truncation max(., 0) (the table's "Truncation" row), then a
1x1 convolution without truncation. Receptive fields 3, 5, 9, 17, 33, 65, 67, 67. Output channels:

  layer   1    2    3    4    5     6     7     8
  basic   C    C    C    C    C     C     C     C
  large   2C   2C   4C   8C   16C   32C   32C   C

(the fyu/dilation VOC deploy net's large module: 42, 42, 84, 168, 336, 672, 672, 21 for C = 21). Standard
initialisations did not train (Sec. 3), so the module starts as the identity: basic, k^b(t, a) = 1[t = 0]
1[a = b]; large, k^b(t, a) = C / c_{i+1} if t = 0 and floor(a C / c_i) = floor(b C / c_{i+1}), else noise
eps ~ N(0, sigma^2) with sigma << C / c_{i+1} (the paper gives no number; here sigma = `init_noise` * C /
c_{i+1}, default 0.001, which leaves the large module within about 1% (RMS) of the identity at init; 0.01
gives about 12%). Without noise both modules map a nonnegative input to itself. Biases start at 0.
Parameter names follow network.py: `ctx_conv1_1`, `ctx_conv1_2`, `ctx_conv2_1` ... `ctx_conv5_1`, `ctx_fc1`,
`ctx_final`.

`ContextNet` is the front-end followed by the context module (or none), trained jointly here (the paper
trains the front-end first, then the module on its output), with the scores interpolated bilinearly to the
input size.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.models.backbones.vgg import VGG16, VGG16_STAGES, conv_init
from segjax.models.layers import Dtype, check_images, fc_layers, symmetric_padding, upsample_aligned
from segjax.ops.conv import Conv

OUTPUT_STRIDE = 8
# (name, kernel side, dilation, output channels as a multiple of C for the large module), Table 1.
CONTEXT_LAYERS: tuple[tuple[str, int, int, int], ...] = (
    ("ctx_conv1_1", 3, 1, 2), ("ctx_conv1_2", 3, 1, 2), ("ctx_conv2_1", 3, 2, 4), ("ctx_conv3_1", 3, 4, 8),
    ("ctx_conv4_1", 3, 8, 16), ("ctx_conv5_1", 3, 16, 32), ("ctx_fc1", 3, 1, 32), ("ctx_final", 1, 1, 1))


def identity_init(num_classes: int, noise: float = 0.0):
  """The context module's (generalised) identity initialiser for kernels [k, k, c_i, c_{i+1}] (Yu & Koltun, Sec. 3).

  The centre tap maps input channel a to output channel b with weight C / c_{i+1} when
  floor(a C / c_i) == floor(b C / c_{i+1}) (for c_i = c_{i+1} = C: the identity); every other entry is
  N(0, (noise * C / c_{i+1})**2), or exactly 0 when `noise` is 0.

  Args:
    num_classes: C, the channel count of the module's input and output.
    noise: standard deviation of the off-identity entries relative to C / c_{i+1}.
  """
  def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    kh, kw, c_in, c_out = shape
    c = num_classes
    a, b = np.arange(c_in)[:, None], np.arange(c_out)[None, :]
    tied = (a * c // c_in) == (b * c // c_out)
    centre = np.zeros(shape, np.float32)
    centre[kh // 2, kw // 2] = np.where(tied, c / c_out, 0.0)
    kernel = jnp.asarray(centre, dtype)
    if noise:
      eps = jax.random.normal(key, shape, dtype) * (noise * c / c_out)
      kernel = jnp.where(jnp.asarray(centre != 0), kernel, eps)
    return kernel
  return init


class ContextModule(nn.Module):
  """Yu & Koltun's context module: [B, H, W, C] -> [B, H, W, C] (C = num_classes), resolution unchanged.

  Has no dropout or normalisation, so it takes no `train` flag.

  Attributes:
    num_classes: C, input and output channels.
    large: the large module (2C ... 32C channels, 6.8 M parameters for C = 21) instead of the basic one (all C).
    init_noise: relative standard deviation of the large module's off-identity init (ignored by the basic
      module, whose init is the exact identity).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  large: bool = False
  init_noise: float = 0.001
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.num_classes
    if x.shape[-1] != c:
      raise ValueError(f"ContextModule(num_classes={c}) needs a {c}-channel input, got shape {x.shape}")
    x = x.astype(self.dtype)
    noise = self.init_noise if self.large else 0.0
    for i, (name, k, dilation, mult) in enumerate(CONTEXT_LAYERS):
      features = mult * c if self.large else c
      x = Conv(features, (k, k), padding=symmetric_padding(k, dilation), kernel_dilation=dilation,
               kernel_init=identity_init(c, noise), dtype=self.dtype, param_dtype=self.param_dtype,
               name=name)(x)
      if i < len(CONTEXT_LAYERS) - 1:
        x = nn.relu(x)
    return x


class ContextNet(nn.Module):
  """Yu & Koltun's dilated VGG16 front-end + context module: any [B, H, W, C] -> float32 [B, H, W, K].

  Attributes:
    num_classes: K.
    context: "basic" or "large" context module on the front-end's scores, or "none" (the front-end alone).
    dropout_rate: dropout after fc6 and fc7 (0.5).
    fc_features: channels of fc6 and fc7 (4096); smaller only for tests.
    init_noise: see `ContextModule`.
    stages: VGG16's layer table (`VGG16_STAGES`); narrower only for tests.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  context: str = "basic"
  dropout_rate: float = 0.5
  fc_features: int = 4096
  init_noise: float = 0.001
  stages: tuple[tuple[int, int], ...] = VGG16_STAGES
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    check_images(x, "ContextNet")
    if self.context not in ("basic", "large", "none"):
      raise ValueError(f"ContextNet.context must be 'basic', 'large' or 'none', got {self.context!r}")
    _, h, w, _ = x.shape
    feats = VGG16(stages=self.stages, dilations=(1, 1, 1, 1, 2), pool_strides=(2, 2, 2, 0, 0), ceil_mode=True,
                  dtype=self.dtype, param_dtype=self.param_dtype, name="backbone")(x, train=train)
    y = fc_layers(feats["conv5"], (("fc6", 7, 4), ("fc7", 1, 1)), self.fc_features, train=train,
                  dropout_rate=self.dropout_rate, kernel_init=conv_init, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    scores = Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.normal(0.001), dtype=self.dtype,
                  param_dtype=self.param_dtype, name="final")(y)
    if self.context != "none":
      scores = ContextModule(self.num_classes, large=self.context == "large", init_noise=self.init_noise,
                             dtype=self.dtype, param_dtype=self.param_dtype, name="context")(scores)
    return upsample_aligned(scores, (h, w), OUTPUT_STRIDE, centre=(OUTPUT_STRIDE - 1) / 2).astype(jnp.float32)
