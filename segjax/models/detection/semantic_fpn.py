"""The semantic segmentation branch of Panoptic FPN (Kirillov, Girshick, He, Dollar, "Panoptic Feature Pyramid
Networks", CVPR 2019, Sec. 3.2 and Fig. 3) as Detectron2 builds it (`SemSegFPNHead`,
detectron2/modeling/meta_arch/semantic_seg.py), with its defaults.

Why: it turns the FPN the Mask R-CNN of segjax.models.detection already computes into dense per-pixel logits at
small cost, the "stuff" half of panoptic segmentation (or, alone, a light semantic segmentation decoder).

Structure: each pyramid level P_k (stride 2**k) gets its own "scale head" that brings it to the common stride 4:
P2 a single [3x3 conv (conv_dims) + GroupNorm(32) + ReLU]; P_k for k > 2 (k - 2) repetitions of [3x3 conv +
GroupNorm + ReLU + 2x bilinear upsampling (align_corners=False)]. The four 1/4-scale maps are summed, a 1x1
convolution with bias (the "predictor") gives `num_classes` logits, and these are upsampled x common_stride
(bilinear, align_corners=False) to the image. As in Detectron2's Conv2d with a norm, the convolutions before
GroupNorm carry no bias (norm="" gives them one). Initialisation is Detectron2's `c2_msra_fill`: He normal with
fan_out (untruncated, as torch's kaiming_normal_), zero biases.

Inputs are the NHWC levels segjax's FPN returns, named as torchvision's: "0".."3" (P2..P5, strides 4..32); "pool"
(P6) is not used, as in Detectron2 (in_features p2..p5). In Panoptic FPN the classes are the stuff classes plus
one "things" class (index 0 in Detectron2's panoptic setup); here that is the caller's `num_classes`.

`semantic_loss` is Detectron2's `SemSegFPNHead.losses`: the mean cross-entropy over the pixels whose label is not
`ignore_label` (the caller applies the loss weight, 0.5 in Panoptic FPN). Where every pixel is ignored it is 0 with
a zero gradient (torch's cross_entropy would give NaN).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.models.detection.fpn import LEVELS
from segjax.models.layers import Dtype, symmetric_padding
from segjax.ops.conv import Conv
from segjax.ops.upsample import resize_bilinear

IN_FEATURES = LEVELS[:4]  # P2..P5 of segjax's FPN
FEATURE_STRIDES = (4, 8, 16, 32)
NORMS = ("GN", "")

def c2_msra_fill(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
  """Detectron2's weight_init.c2_msra_fill: kaiming_normal_(mode="fan_out", nonlinearity="relu") of an HWIO kernel.

  std sqrt(2 / fan_out), fan_out = kh * kw * out_channels, untruncated (Flax's variance_scaling truncates).
  """
  fan_out = int(np.prod(shape[:-2])) * int(shape[-1])
  return (jax.random.normal(key, shape, jnp.float32) * np.sqrt(2.0 / fan_out)).astype(dtype)


def head_length(stride: int, common_stride: int) -> int:
  """Number of [conv + norm + ReLU (+ 2x upsampling)] blocks of a level: max(1, log2(stride / common_stride))."""
  return max(1, int(np.log2(stride) - np.log2(common_stride)))


class SemSegFPNHead(nn.Module):
  """Detectron2's SemSegFPNHead: {"0": P2, .., "3": P5} ([B, H/s, W/s, C] each) -> [B, H, W, num_classes] logits.

  Attributes:
    num_classes: output classes (in Panoptic FPN: stuff classes + 1 "things" class).
    conv_dims: channels of the scale heads (Detectron2's SEM_SEG_HEAD.CONVS_DIM, 128).
    common_stride: the stride all levels are brought to, and the factor of the final upsampling (4).
    norm: "GN" (GroupNorm, Detectron2's default) or "" (no norm; the convolutions then have a bias).
    num_groups: GroupNorm groups (32, as Detectron2's get_norm("GN")); must divide conv_dims.
    in_features: the input levels, finest first.
    feature_strides: their strides.
    dtype: computation dtype; param_dtype: the parameters'.
  """

  num_classes: int
  conv_dims: int = 128
  common_stride: int = 4
  norm: str = "GN"
  num_groups: int = 32
  in_features: tuple[str, ...] = IN_FEATURES
  feature_strides: tuple[int, ...] = FEATURE_STRIDES
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    if self.norm not in NORMS:
      raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
    if self.norm == "GN" and self.conv_dims % self.num_groups:
      raise ValueError(f"num_groups={self.num_groups} must divide conv_dims={self.conv_dims}")
    if len(self.in_features) != len(self.feature_strides):
      raise ValueError(f"{len(self.in_features)} in_features but {len(self.feature_strides)} feature_strides")

  def _block(self, x: jax.Array, level: int, k: int) -> jax.Array:
    """One [3x3 conv + norm + ReLU] of scale head `level` (Detectron2's scale_heads[level][k])."""
    with_norm = self.norm == "GN"
    x = Conv(self.conv_dims, (3, 3), padding=symmetric_padding(3), use_bias=not with_norm, kernel_init=c2_msra_fill,
             dtype=self.dtype, param_dtype=self.param_dtype, name=f"scale_heads_{level}_{k}")(x)
    if with_norm:
      # torch.nn.GroupNorm's epsilon; the two-pass variance, as torch computes it.
      x = nn.GroupNorm(self.num_groups, epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f"scale_heads_{level}_{k}_norm")(x)
    return nn.relu(x)

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array]) -> jax.Array:
    """Logits at common_stride x the P2 size: [B, common_stride * h2, common_stride * w2, num_classes]."""
    missing = [f for f in self.in_features if f not in features]
    if missing:
      raise ValueError(f"features lack levels {missing}; got {sorted(features)}")
    y = None
    for level, (name, stride) in enumerate(zip(self.in_features, self.feature_strides)):
      x = features[name]
      if x.ndim != 4:
        raise ValueError(f"level {name!r} must be NHWC [B, H, W, C], got shape {x.shape}")
      x = x.astype(self.dtype)
      for k in range(head_length(stride, self.common_stride)):
        x = self._block(x, level, k)
        if stride != self.common_stride:  # Detectron2: nn.Upsample(scale_factor=2, "bilinear", align_corners=False)
          x = resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]))
      if y is not None and x.shape != y.shape:
        raise ValueError(f"level {name!r} reaches shape {x.shape} at stride {self.common_stride}, but the finer levels "
                         f"{y.shape}: the image size must be a multiple of the coarsest stride")
      y = x if y is None else y + x
    y = Conv(self.num_classes, (1, 1), kernel_init=c2_msra_fill, dtype=self.dtype, param_dtype=self.param_dtype,
             name="predictor")(y)
    s = self.common_stride
    return resize_bilinear(y, (s * y.shape[1], s * y.shape[2]))


def semantic_loss(logits: jax.Array, labels: jax.Array, ignore_label: int = 255) -> jax.Array:
  """Mean softmax cross-entropy over the pixels whose label is not `ignore_label` (Detectron2's loss_sem_seg).

  Args:
    logits: [B, H, W, K] (any float dtype; the loss is computed in float32).
    labels: [B, H, W] integer class indices in [0, K) or `ignore_label`.
    ignore_label: the label of the pixels left out (Detectron2's SEM_SEG_HEAD.IGNORE_VALUE, 255).

  Returns:
    A float32 scalar; 0 with a zero gradient when every pixel is ignored.
  """
  if logits.ndim != 4 or labels.shape != logits.shape[:3]:
    raise ValueError(f"logits must be [B, H, W, K] and labels [B, H, W], got {logits.shape} and {labels.shape}")
  logits = logits.astype(jnp.float32)
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0).astype(jnp.int32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
  total = jnp.sum(jnp.where(valid, nll, 0.0))
  count = jnp.sum(valid)
  return total / jnp.maximum(count, 1).astype(jnp.float32)
