"""segmentation_models_pytorch's (SMP, Iakubovskii, github.com/qubvel-org/segmentation_models.pytorch, v0.6) `Unet` and
`FPN` on a torchvision ResNet-18/34/50 encoder, layer for layer, so SMP's state dicts load (`convert_smp_state_dict`).

Encoder: SMP's ResNet encoder is torchvision's ResNet without avgpool/fc; its features are the stem's output after
the ReLU (1/2, before the max pool) and layer1..layer4 (1/4 .. 1/32). Both decoders need inputs divisible by 32
(SMP's `check_input_shape`).

`SmpUnet` (SMP `Unet`, after Ronneberger et al., MICCAI 2015): starting from layer4, five decoder blocks each
upsample 2x (nearest), concatenate the encoder feature of that size (layer3, layer2, layer1, stem; none for the
last block, which reaches the input size) and apply two 3x3 convolution + BatchNorm + ReLU layers with
`decoder_channels` (256, 128, 64, 32, 16) outputs; a 3x3 convolution (with bias) gives the logits.

`SmpFPN` (SMP `FPN`, after Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019, Sec. 3's semantic
branch): 1x1 convolutions (with bias) bring layer4..layer1 to `pyramid_channels` (256), each level adding the 2x
nearest-upsampled level above (P5..P2). Each Pk goes through k-2 blocks of 3x3 convolution + GroupNorm(32) + ReLU
(`segmentation_channels`, 128) followed by a 2x bilinear upsampling (align_corners=True), and one such block
without upsampling for P2, so all reach 1/4; they are summed (merge "add"), channel dropout 0.2 (Dropout2d) is
applied, a 1x1 convolution gives the logits and a 4x bilinear upsampling (align_corners=True) the input size.

Initialisation is SMP's: decoder convolutions kaiming_uniform (fan_in, ReLU gain), biases 0, the head
xavier_uniform; the encoder torchvision's kaiming_normal (fan_out). Parameter counts equal SMP's (tests).
Parameter names follow SMP's modules: `decoder_blocks_0_conv1` is `decoder.blocks.0.conv1.0` and
`decoder_blocks_0_bn1` its `.1`; `p4_skip_conv` is `decoder.p4.skip_conv`; `seg_blocks_0_1_conv` / `_gn` are
`decoder.seg_blocks.0.block.1.block.0` / `.1`; `segmentation_head` is `segmentation_head.0`.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.models.backbones.resnet import ResNet
from segjax.models.layers import Dtype, batch_norm_partial, check_divisible, check_images, symmetric_padding
from segjax.ops.conv import Conv
from segjax.ops.upsample import resize_bilinear, upsample_nearest

__all__ = ["ENCODER_DEPTHS", "SmpFPN", "SmpUnet", "convert_smp_state_dict"]

ENCODER_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50}
SIZE_DIVISOR = 32  # the encoder's output stride

# SMP's initialize_decoder / initialize_head (segmentation_models_pytorch/base/initialization.py).
decoder_init = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")  # kaiming_uniform_(fan_in, relu)
head_init = nn.initializers.xavier_uniform()


def _encoder(name: str, width: int, dtype: Dtype, param_dtype: Dtype) -> nn.Module:
  if name not in ENCODER_DEPTHS:
    raise ValueError(f"SMP encoder must be one of {sorted(ENCODER_DEPTHS)}, got {name!r}")
  # output_stride 32: SMP's ResNet encoders are undilated by default.
  return ResNet(depth=ENCODER_DEPTHS[name], output_stride=32, stem="standard", stem_width=width, width=width,
                dtype=dtype, param_dtype=param_dtype, name="encoder")


def _check_input(x: jax.Array, name: str) -> None:
  check_images(x, name)
  check_divisible(x, name, SIZE_DIVISOR, " (the ResNet encoder's output stride)")


def _head(num_classes: int, kernel: int, param_dtype: Dtype) -> nn.Module:
  # The head runs in float32 whatever the compute dtype (a few FLOPs per pixel): its bias gradient, a sum over
  # every pixel, accumulates in float32, and the logits are float32 as the registry requires.
  return Conv(num_classes, (kernel, kernel), padding=symmetric_padding(kernel), kernel_init=head_init,
              dtype=jnp.float32, param_dtype=param_dtype, name="segmentation_head")


class SmpUnet(nn.Module):
  """SMP's Unet: [B, H, W, C] (H, W multiples of 32) -> float32 logits [B, H, W, num_classes].

  Attributes:
    num_classes: number of classes.
    encoder: "resnet18", "resnet34" or "resnet50".
    decoder_channels: output channels of the five decoder blocks (SMP's default (256, 128, 64, 32, 16)).
    encoder_width: channels of the encoder's stem and layer1 3x3 convolutions (64; smaller only for tests).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  encoder: str = "resnet34"
  decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
  encoder_width: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  size_divisor = SIZE_DIVISOR

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    _check_input(x, "SmpUnet")
    if len(self.decoder_channels) != 5:
      raise ValueError(f"SmpUnet needs 5 decoder_channels (one per encoder stage), got {self.decoder_channels}")
    features = _encoder(self.encoder, self.encoder_width, self.dtype, self.param_dtype)(x, train=train)
    conv = functools.partial(Conv, padding=symmetric_padding(3), use_bias=False, kernel_init=decoder_init,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    norm = batch_norm_partial(self.dtype, self.param_dtype, train=train)
    y = features["layer4"]
    skips = (features["layer3"], features["layer2"], features["layer1"], features["stem"], None)
    for i, (channels, skip) in enumerate(zip(self.decoder_channels, skips)):
      # SMP interpolates to the next feature's size; with inputs divisible by 32 that is exactly 2x.
      y = upsample_nearest(y, 2)
      if skip is not None:
        y = jnp.concatenate([y, skip.astype(y.dtype)], axis=-1)
      for j in (1, 2):
        y = conv(channels, (3, 3), name=f"decoder_blocks_{i}_conv{j}")(y)
        y = norm(name=f"decoder_blocks_{i}_bn{j}", activation="relu")(y)
    return _head(self.num_classes, 3, self.param_dtype)(y)


class SmpFPN(nn.Module):
  """SMP's FPN: [B, H, W, C] (H, W multiples of 32) -> float32 logits [B, H, W, num_classes].

  Attributes:
    num_classes: number of classes.
    encoder: "resnet18", "resnet34" or "resnet50".
    pyramid_channels: channels of P5..P2 (256).
    segmentation_channels: channels of the segmentation blocks (128; a multiple of `gn_groups`).
    gn_groups: GroupNorm groups (32, SMP's fixed value).
    dropout_rate: channel dropout after the merge (0.2, Dropout2d).
    encoder_width: channels of the encoder's stem and layer1 3x3 convolutions (64; smaller only for tests).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  encoder: str = "resnet34"
  pyramid_channels: int = 256
  segmentation_channels: int = 128
  gn_groups: int = 32
  dropout_rate: float = 0.2
  encoder_width: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  size_divisor = SIZE_DIVISOR

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    _check_input(x, "SmpFPN")
    if self.segmentation_channels % self.gn_groups:
      raise ValueError(f"SmpFPN segmentation_channels={self.segmentation_channels} must be a multiple of "
                       f"gn_groups={self.gn_groups}")
    size = x.shape[1:3]
    features = _encoder(self.encoder, self.encoder_width, self.dtype, self.param_dtype)(x, train=train)
    conv1x1 = functools.partial(Conv, kernel_size=(1, 1), padding="VALID", kernel_init=decoder_init,
                                dtype=self.dtype, param_dtype=self.param_dtype)
    p = conv1x1(self.pyramid_channels, name="p5")(features["layer4"])
    pyramid = [p]
    for level, c in ((4, "layer3"), (3, "layer2"), (2, "layer1")):
      p = upsample_nearest(p, 2) + conv1x1(self.pyramid_channels, name=f"p{level}_skip_conv")(features[c])
      pyramid.append(p)

    merged = 0.0
    for i, (p, n_up) in enumerate(zip(pyramid, (3, 2, 1, 0))):
      y = p
      for j in range(max(n_up, 1)):
        y = Conv(self.segmentation_channels, (3, 3), padding=symmetric_padding(3), use_bias=False,
                 kernel_init=decoder_init, dtype=self.dtype, param_dtype=self.param_dtype,
                 name=f"seg_blocks_{i}_{j}_conv")(y)
        y = nn.GroupNorm(num_groups=self.gn_groups, epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                         name=f"seg_blocks_{i}_{j}_gn")(y)
        y = nn.relu(y)
        if n_up:
          y = resize_bilinear(y, (2 * y.shape[1], 2 * y.shape[2]), align_corners=True)
      merged = merged + y
    y = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(merged)
    logits = _head(self.num_classes, 1, self.param_dtype)(y)
    # SMP's head upsamples 4x (bilinear, align_corners=True) to the input size.
    return resize_bilinear(logits, size, align_corners=True)


# ---------------------------------------------------------------------------------------------- SMP weights

_DECODER_KEYS = (  # (SMP module regex, segjax module name template, "conv" / "bn" / "gn")
    (r"decoder\.blocks\.(\d)\.conv(\d)\.0", "decoder_blocks_{0}_conv{1}", "conv"),
    (r"decoder\.blocks\.(\d)\.conv(\d)\.1", "decoder_blocks_{0}_bn{1}", "bn"),
    (r"decoder\.p5", "p5", "conv"),
    (r"decoder\.p(\d)\.skip_conv", "p{0}_skip_conv", "conv"),
    (r"decoder\.seg_blocks\.(\d)\.block\.(\d)\.block\.0", "seg_blocks_{0}_{1}_conv", "conv"),
    (r"decoder\.seg_blocks\.(\d)\.block\.(\d)\.block\.1", "seg_blocks_{0}_{1}_gn", "gn"),
    (r"segmentation_head\.0", "segmentation_head", "conv"),
)
_NORM_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
                "running_var": ("batch_stats", "var")}


def convert_smp_state_dict(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(params, batch_stats) of `SmpUnet` / `SmpFPN` from an SMP `Unet` / `FPN` state dict (numpy or torch arrays).

  The encoder goes through segjax.weights' torchvision ResNet mapping; decoder and head by the names in the
  module docstring. Torch kernels OIHW become HWIO.

  Raises:
    ValueError: a key that is neither an encoder's nor a known decoder / head key.
  """
  from segjax.weights.mapping import from_torch  # pylint: disable=import-outside-toplevel

  state = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state.items()}
  encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
  weights = from_torch(encoder, "SMP encoder")
  params: dict[str, Any] = {"encoder": {}}
  stats: dict[str, Any] = {"encoder": {}}

  def put(tree, path, value):
    for key in path[:-1]:
      tree = tree.setdefault(key, {})
    tree[path[-1]] = value

  for path, value in weights.params.items():
    put(params["encoder"], path, value)
  for path, value in weights.batch_stats.items():
    put(stats["encoder"], path, value)
  for key, value in state.items():
    if key.startswith("encoder.") or key.endswith("num_batches_tracked"):
      continue
    module, _, leaf = key.rpartition(".")
    for pattern, template, kind in _DECODER_KEYS:
      if m := re.fullmatch(pattern, module):
        name = template.format(*m.groups())
        break
    else:
      raise ValueError(f"SMP state dict key {key!r} is not part of a Unet / FPN with a ResNet encoder")
    if kind == "conv":
      put(params, (name, "kernel" if leaf == "weight" else leaf),
          value.transpose(2, 3, 1, 0) if value.ndim == 4 else value)
    else:
      collection, new_leaf = _NORM_LEAVES[leaf]
      put(params if collection == "params" else stats, (name, new_leaf), value)
  return params, stats
