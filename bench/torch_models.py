"""PyTorch twins of segjax's U-Net, SegNet and FCN-8s: the reference side of the throughput benchmark (issue 7).

    from bench import torch_models                    # or `import torch_models` from a bench/ script
    net = torch_models.build("segnet", in_ch=3, num_classes=11)                  # NCHW in, NCHW logits out
    flax_model = segjax.models.build_model("segnet", 11, **torch_models.segjax_kwargs("segnet"))
    torch_models.copy_flax_params(net, flax_variables)                           # then outputs agree

Every network here is the same function as its segjax counterpart, layer for layer: same layer table, padding,
pooling rounding, skip order, BatchNorm settings and bias placement, so a timing comparison compares frameworks,
not architectures. Torch submodules carry the flax module names (`down0.Conv_0`, `encoder.conv1_1`, `fc6`, ...),
which is what lets `copy_flax_params` load a segjax model's variables by name; tests/models/test_torch_reference.py checks
parameter counts and outputs against the flax models.

Conventions that differ between the frameworks and are converted here:
- layout: torch modules take and return NCHW; flax uses NHWC.
- kernels: flax `nn.Conv` kernels are HWIO, torch's OIHW. segjax's `UpConv2x2` (the U-Net up-convolution)
  applies its [2, 2, Cin, Cout] kernel spatially flipped, as Flax's `nn.ConvTranspose` does, while torch's
  `ConvTranspose2d` weight [Cin, Cout, 2, 2] is applied unflipped: the copy flips it.
- BatchNorm: flax momentum 0.9 is torch momentum 0.1; eps 1e-5 on both sides. The forward pass is the same in
  both modes. One difference stays: in training, torch updates `running_var` with the unbiased batch variance,
  flax with the biased one (a factor n / (n - 1), n = pixels x batch), which does not change any forward output.
- the initialisation is torch's default, not segjax's: the benchmark times steps, and the equivalence test copies
  the flax weights over.

This module needs torch only; it imports neither jax nor segjax.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# Layer table of VGG16 (configuration "D"): (channels, 3x3 convolutions) per stage, as segjax.models.backbones.vgg.
VGG16_STAGES: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

# Offsets of FCN-8s's Crop layers (segjax.models.fcn: POOL4_OFFSET, POOL3_OFFSET, OUTPUT_OFFSET[8]).
FCN8S_POOL4_OFFSET = 5
FCN8S_POOL3_OFFSET = 9
FCN8S_OUTPUT_OFFSET = 31

# The segjax constructor keywords (`segjax.models.build_model(name, num_classes, **kwargs)`) of the network that
# `build(name, ...)` reproduces; the benchmark builds both sides from these. Anything not listed is the segjax
# default, and `build` rejects any other keyword so the two sides cannot silently drift apart.
SEGJAX_KWARGS: dict[str, dict[str, Any]] = {
    # segjax UNet: 4 levels, 32 channels at full resolution (7.76 M parameters; segjax's default is the paper's
    # 64), BatchNorm, learned 2x2 up-convolutions, no dropout.
    "unet": {"depth": 4, "base_features": 32, "batch_norm": True, "upsample": "transpose", "dropout_rate": 0.0},
    # segjax SegNet at its defaults: VGG16-BN encoder, index unpooling (29.4 M parameters for 11 classes).
    "segnet": {"base_features": 64, "upsample": "unpool"},
    # segjax FCN8s at its defaults, as in configs/fcn8s_camvid.py: VGG16, fc6/fc7 of 4096, fixed bilinear
    # upsampling, dropout 0.5 (134 M parameters for 21 classes).
    "fcn8s": {"stages": VGG16_STAGES, "fc_features": 4096, "learn_upsampling": False, "dropout_rate": 0.5,
              "pool4_scale": 1.0, "pool3_scale": 1.0},
}

# Keywords `build` translates; a segjax option outside these (e.g. SegNet upsample="bilinear") has no twin here.
_FIXED = {"unet": {"upsample": ("transpose",)}, "segnet": {"upsample": ("unpool",)},
          "fcn8s": {"learn_upsampling": (False,)}}


def _bn(channels: int) -> nn.BatchNorm2d:
  # flax nn.BatchNorm(momentum=0.9, epsilon=1e-5): torch's momentum weighs the new batch, flax's the old average.
  return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


# ---------------------------------------------------------------------------------------------------- U-Net


class UNetConvBlock(nn.Module):
  """segjax.models.layers.ConvBlock: two (3x3 conv -> [BatchNorm] -> ReLU), [B, Cin, H, W] -> [B, features, H, W].

  Submodule names are flax's auto-names (`Conv_0`, `BatchNorm_0`, ...) so weights copy by name.
  """

  def __init__(self, in_ch: int, features: int, batch_norm: bool):
    super().__init__()
    self.batch_norm = batch_norm
    self.Conv_0 = nn.Conv2d(in_ch, features, 3, padding=1, bias=not batch_norm)  # pylint: disable=invalid-name
    self.Conv_1 = nn.Conv2d(features, features, 3, padding=1, bias=not batch_norm)  # pylint: disable=invalid-name
    if batch_norm:
      self.BatchNorm_0 = _bn(features)  # pylint: disable=invalid-name
      self.BatchNorm_1 = _bn(features)  # pylint: disable=invalid-name

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.Conv_0(x)
    if self.batch_norm:
      x = self.BatchNorm_0(x)
    x = F.relu(x)
    x = self.Conv_1(x)
    if self.batch_norm:
      x = self.BatchNorm_1(x)
    return F.relu(x)


class FlaxFlippedConvTranspose2d(nn.ConvTranspose2d):
  """A ConvTranspose2d whose flax counterpart applies its kernel spatially flipped (segjax `UpConv2x2`).

  The forward pass is the plain torch op; the class only tells `copy_flax_params` to flip the kernel.
  """


class UNet(nn.Module):
  """segjax.models.unet.UNet with upsample='transpose': [B, in_ch, H, W] -> logits [B, num_classes, H, W].

  H and W must be divisible by 2**depth. Levels: `down{l}` ConvBlock, 2x2 max pooling; dropout; `bottleneck`;
  then per level (deepest first) a 2x2/2 up-convolution `upconv{l}`, concatenation [skip, upsampled] along the
  channels and an `up{l}` ConvBlock; a 1x1 `classifier` with bias.

  Args:
    in_ch: input channels.
    num_classes: output channels K.
    depth: number of 2x downsamplings (segjax `depth`).
    base: channels at full resolution, doubled per level (segjax `base_features`).
    batch_norm: BatchNorm after every 3x3 convolution, which then has no bias (segjax `batch_norm`).
    dropout_rate: dropout before the bottleneck (segjax `dropout_rate`).
  """

  def __init__(self, in_ch: int, num_classes: int, depth: int = 4, base: int = 32, batch_norm: bool = True,
               dropout_rate: float = 0.0):
    super().__init__()
    self.depth = depth
    widths = [base * 2**level for level in range(depth + 1)]
    channels = in_ch
    for level in range(depth):
      self.add_module(f"down{level}", UNetConvBlock(channels, widths[level], batch_norm))
      channels = widths[level]
    self.dropout = nn.Dropout(dropout_rate)
    self.bottleneck = UNetConvBlock(channels, widths[depth], batch_norm)
    for level in reversed(range(depth)):
      self.add_module(f"upconv{level}", FlaxFlippedConvTranspose2d(widths[level + 1], widths[level], 2, stride=2))
      self.add_module(f"up{level}", UNetConvBlock(2 * widths[level], widths[level], batch_norm))
    self.classifier = nn.Conv2d(widths[0], num_classes, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    d = 2**self.depth
    if x.shape[2] % d or x.shape[3] % d:
      raise ValueError(f"UNet(depth={self.depth}) needs height and width divisible by {d}, got "
                       f"{x.shape[2]}x{x.shape[3]}")
    skips = []
    for level in range(self.depth):
      x = getattr(self, f"down{level}")(x)
      skips.append(x)
      x = F.max_pool2d(x, 2)
    x = self.bottleneck(self.dropout(x))
    for level in reversed(range(self.depth)):
      x = getattr(self, f"upconv{level}")(x)
      x = getattr(self, f"up{level}")(torch.cat([skips[level], x], dim=1))
    return self.classifier(x)


# ---------------------------------------------------------------------------------------------------- SegNet


def scaled_stages(base: int) -> tuple[tuple[int, int], ...]:
  """VGG16's stages with stage 1 `base` channels wide (segjax.models.backbones.vgg.scaled_stages)."""
  if base < 1:
    raise ValueError(f"base must be positive, got {base}")
  return tuple((max(1, c * base // 64), n) for c, n in VGG16_STAGES)


class SegNetEncoder(nn.Module):
  """segjax VGG16ArgmaxEncoder: VGG16-BN's 13 convolutions (`conv{s}_{i}` with bias, `bn{s}_{i}`), each stage
  followed by a ceil-mode 2x2/2 max pooling that also returns its indices."""

  def __init__(self, in_ch: int, stages: tuple[tuple[int, int], ...]):
    super().__init__()
    self.stages = stages
    channels = in_ch
    for s, (width, num_convs) in enumerate(stages, start=1):
      for i in range(1, num_convs + 1):
        self.add_module(f"conv{s}_{i}", nn.Conv2d(channels, width, 3, padding=1))
        self.add_module(f"bn{s}_{i}", _bn(width))
        channels = width

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, tuple[int, int]]]]:
    switches = []
    for s, (_, num_convs) in enumerate(self.stages, start=1):
      for i in range(1, num_convs + 1):
        x = F.relu(getattr(self, f"bn{s}_{i}")(getattr(self, f"conv{s}_{i}")(x)))
      size = (x.shape[2], x.shape[3])
      # Caffe rounds up (an odd 45x60 map pools to 23x30); torch's indices are flat h * W + w per plane, the
      # convention of segjax.ops.max_pool_with_argmax, and both give ties to the first position.
      x, indices = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
      switches.append((indices, size))
    return x, switches


class SegNet(nn.Module):
  """segjax.models.segnet.SegNet (upsample='unpool'): [B, in_ch, H, W] (any H, W) -> logits [B, K, H, W].

  The decoder mirrors the encoder: per stage (deepest first) a max unpooling to the recorded pre-pooling size,
  then `conv{s}_{i}_D` + `conv{s}_{i}_D_bn` + ReLU for i = n..1, where the last convolution of a stage maps back
  to the previous stage's width, and `conv1_1_D` is the classifier (no BatchNorm, no ReLU).

  Args:
    in_ch: input channels.
    num_classes: K.
    base: first-stage channels; all widths scale with it (segjax `base_features`; 64 is the published net).
  """

  def __init__(self, in_ch: int, num_classes: int, base: int = 64):
    super().__init__()
    self.stages = scaled_stages(base)
    self.encoder = SegNetEncoder(in_ch, self.stages)
    for s in reversed(range(1, 6)):
      width, num_convs = self.stages[s - 1]
      for i in reversed(range(1, num_convs + 1)):
        if s == 1 and i == 1:
          self.conv1_1_D = nn.Conv2d(width, num_classes, 3, padding=1)  # pylint: disable=invalid-name
          break
        features = width if i > 1 else self.stages[s - 2][0]
        self.add_module(f"conv{s}_{i}_D", nn.Conv2d(width, features, 3, padding=1))
        self.add_module(f"conv{s}_{i}_D_bn", _bn(features))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x, switches = self.encoder(x)
    for s in reversed(range(1, 6)):
      indices, size = switches[s - 1]
      x = F.max_unpool2d(x, indices, 2, 2, output_size=size)
      for i in reversed(range(1, self.stages[s - 1][1] + 1)):
        if s == 1 and i == 1:
          return self.conv1_1_D(x)
        x = F.relu(getattr(self, f"conv{s}_{i}_D_bn")(getattr(self, f"conv{s}_{i}_D")(x)))
    raise AssertionError("unreachable: stage 1 ends with the classifier")


# ---------------------------------------------------------------------------------------------------- FCN-8s


class VGG16Backbone(nn.Module):
  """segjax VGG16 as FCN uses it: no BatchNorm, conv1_1 padded by 100, ceil-mode 2x2/2 pooling after each stage.

  Returns the dict {"pool3", "pool4", "pool5"} (the only maps FCN-8s reads).
  """

  def __init__(self, in_ch: int, stages: tuple[tuple[int, int], ...], conv1_padding: int = 100):
    super().__init__()
    self.stages = stages
    channels = in_ch
    for s, (width, num_convs) in enumerate(stages, start=1):
      for i in range(1, num_convs + 1):
        pad = conv1_padding if (s, i) == (1, 1) else 1
        self.add_module(f"conv{s}_{i}", nn.Conv2d(channels, width, 3, padding=pad))
        channels = width

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for s, (_, num_convs) in enumerate(self.stages, start=1):
      for i in range(1, num_convs + 1):
        x = F.relu(getattr(self, f"conv{s}_{i}")(x))
      x = F.max_pool2d(x, 2, 2, ceil_mode=True)
      out[f"pool{s}"] = x
    return out


def bilinear_filter(stride: int) -> np.ndarray:
  """FCN's 2*stride-sided bilinear filter (segjax.models.fcn.bilinear_filter_1d, outer product), float32."""
  t = np.arange(2 * stride, dtype=np.float64)
  g = 1.0 - np.abs(t - (stride - 0.5)) / stride
  return np.outer(g, g).astype(np.float32)


class FixedBilinearUpscore(nn.Module):
  """FCN's fixed "Deconvolution" (kernel 2*stride, stride `stride`, no padding, no bias, `lr_mult: 0`):
  [B, K, H, W] -> [B, K, (H + 1) * stride, (W + 1) * stride].

  The filter is bilinear and diagonal over classes, so it is a depthwise (groups=K) transposed convolution with
  a constant buffer: no parameters, as segjax's `Upscore(learnable=False)`.
  """

  def __init__(self, channels: int, stride: int):
    super().__init__()
    self.stride = stride
    self.channels = channels
    kernel = torch.from_numpy(bilinear_filter(stride))
    self.register_buffer("weight", kernel.expand(channels, 1, 2 * stride, 2 * stride).clone(), persistent=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.conv_transpose2d(x, self.weight, stride=self.stride, groups=self.channels)


def _crop(x: torch.Tensor, offset: int, height: int, width: int) -> torch.Tensor:
  if x.shape[2] < offset + height or x.shape[3] < offset + width:
    raise ValueError(f"cannot crop {height}x{width} at offset {offset} from a {x.shape[2]}x{x.shape[3]} map")
  return x[:, :, offset:offset + height, offset:offset + width]


class FCN8s(nn.Module):
  """segjax.models.fcn.FCN8s with fixed bilinear upsampling: [B, in_ch, H, W] (any H, W) -> [B, K, H, W].

  VGG16 (`backbone.conv{s}_{i}`), fc6 (7x7 unpadded) and fc7 (1x1), each with ReLU and dropout, `score_fr`;
  upsample 2x and add `score_pool4` of pool4 cropped at 5; upsample 2x and add `score_pool3` of pool3 cropped at
  9; upsample 8x and crop at 31 to the input size (the reference Caffe geometry).

  Args:
    in_ch: input channels.
    num_classes: K.
    stages: VGG16's layer table (segjax `stages`; narrower only for tests).
    fc_features: channels of fc6 and fc7 (segjax `fc_features`, 4096).
    dropout_rate: dropout after fc6 and fc7 (segjax `dropout_rate`).
    pool4_scale: factor on pool4 before `score_pool4` (segjax `pool4_scale`).
    pool3_scale: factor on pool3 before `score_pool3` (segjax `pool3_scale`).
  """

  def __init__(self, in_ch: int, num_classes: int, stages: tuple[tuple[int, int], ...] = VGG16_STAGES,
               fc_features: int = 4096, dropout_rate: float = 0.5, pool4_scale: float = 1.0,
               pool3_scale: float = 1.0):
    super().__init__()
    stages = tuple(tuple(int(v) for v in stage) for stage in stages)
    if len(stages) != 5:
      raise ValueError(f"FCN8s needs 5 VGG stages (it reads pool3, pool4 and pool5), got stages={stages}")
    self.pool4_scale, self.pool3_scale = pool4_scale, pool3_scale
    self.backbone = VGG16Backbone(in_ch, stages)
    self.fc6 = nn.Conv2d(stages[4][0], fc_features, 7)
    self.fc7 = nn.Conv2d(fc_features, fc_features, 1)
    self.dropout = nn.Dropout(dropout_rate)
    self.score_fr = nn.Conv2d(fc_features, num_classes, 1)
    self.score_pool4 = nn.Conv2d(stages[3][0], num_classes, 1)
    self.score_pool3 = nn.Conv2d(stages[2][0], num_classes, 1)
    self.upscore2 = FixedBilinearUpscore(num_classes, 2)
    self.upscore_pool4 = FixedBilinearUpscore(num_classes, 2)
    self.upscore8 = FixedBilinearUpscore(num_classes, 8)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[2], x.shape[3]
    feats = self.backbone(x)
    y = self.dropout(F.relu(self.fc6(feats["pool5"])))
    y = self.dropout(F.relu(self.fc7(y)))
    up = self.upscore2(self.score_fr(y))
    pool4 = self.score_pool4(feats["pool4"] * self.pool4_scale)
    up = self.upscore_pool4(up + _crop(pool4, FCN8S_POOL4_OFFSET, up.shape[2], up.shape[3]))
    pool3 = self.score_pool3(feats["pool3"] * self.pool3_scale)
    fuse = up + _crop(pool3, FCN8S_POOL3_OFFSET, up.shape[2], up.shape[3])
    return _crop(self.upscore8(fuse), FCN8S_OUTPUT_OFFSET, h, w)


# ---------------------------------------------------------------------------------------------------- building


def segjax_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
  """The segjax constructor keywords of `build(name, ..., **overrides)`'s network.

  Use as `segjax.models.build_model(name, num_classes, **segjax_kwargs(name, **overrides))`.

  Raises:
    ValueError: unknown name, a keyword the twin does not have, or a value it cannot reproduce.
  """
  if name not in SEGJAX_KWARGS:
    raise ValueError(f"bench/torch_models.py has no PyTorch twin of {name!r}; choose one of {sorted(SEGJAX_KWARGS)}")
  unknown = sorted(set(overrides) - set(SEGJAX_KWARGS[name]))
  if unknown:
    raise ValueError(f"torch_models.build({name!r}) does not translate the segjax option(s) {unknown}; it knows "
                     f"{sorted(SEGJAX_KWARGS[name])}")
  kwargs = {**SEGJAX_KWARGS[name], **overrides}
  for key, allowed in _FIXED[name].items():
    if kwargs[key] not in allowed:
      raise ValueError(f"torch_models.build({name!r}) only reproduces {key} in {allowed}, got {kwargs[key]!r}")
  return kwargs


def build(name: str, in_ch: int, num_classes: int, **overrides: Any) -> nn.Module:
  """The PyTorch twin of segjax model `name` in {"unet", "segnet", "fcn8s"}, built as `SEGJAX_KWARGS[name]`.

  Args:
    name: registry name shared with `segjax.models.MODELS`.
    in_ch: input channels.
    num_classes: output channels.
    **overrides: segjax constructor keywords replacing those of `SEGJAX_KWARGS[name]` (tests use narrow
      widths); `segjax_kwargs(name, **overrides)` gives the matching segjax keywords.

  Returns:
    A torch module in training mode (call `.eval()` for inference), NCHW in and out.
  """
  kw = segjax_kwargs(name, **overrides)
  if name == "unet":
    return UNet(in_ch, num_classes, depth=kw["depth"], base=kw["base_features"], batch_norm=kw["batch_norm"],
                dropout_rate=kw["dropout_rate"])
  if name == "segnet":
    return SegNet(in_ch, num_classes, base=kw["base_features"])
  return FCN8s(in_ch, num_classes, stages=kw["stages"], fc_features=kw["fc_features"],
               dropout_rate=kw["dropout_rate"], pool4_scale=kw["pool4_scale"], pool3_scale=kw["pool3_scale"])


# ---------------------------------------------------------------------------------------------------- weights


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = np.asarray(value, np.float32)
  return flat


def _torch_value(module: nn.Module, leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  """(torch attribute, value in torch layout) for flax leaf `leaf` of the layer twinned by `module`."""
  if isinstance(module, nn.BatchNorm2d):
    return {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[leaf], value
  if leaf == "bias":
    return "bias", value
  if isinstance(module, FlaxFlippedConvTranspose2d):
    return "weight", value[::-1, ::-1].transpose(2, 3, 0, 1)  # HWIO, flipped -> torch's [Cin, Cout, kh, kw]
  if isinstance(module, nn.Conv2d):
    return "weight", value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  raise TypeError(f"no flax -> torch conversion for {type(module).__name__}")


def copy_flax_params(module: nn.Module, variables: Mapping[str, Any]) -> None:
  """Loads a segjax model's flax variables (`params` and `batch_stats`) into its torch twin, in place.

  Each flax module path (`down0/Conv_0`, `encoder/bn1_1`, ...) names the torch submodule of the same dotted
  path. Kernels go from HWIO to OIHW (the U-Net up-convolution is flipped, see the module docstring), BatchNorm
  `scale`/`bias`/`mean`/`var` become `weight`/`bias`/`running_mean`/`running_var`.

  Raises:
    ValueError: a flax variable without a torch counterpart, a shape mismatch, or a torch parameter or
      BatchNorm statistic left without a value, naming each.
  """
  flat = {}
  for collection in ("params", "batch_stats"):
    flat.update(_flatten(variables.get(collection, {})))
  extra = sorted(set(variables) - {"params", "batch_stats"})
  if extra:
    raise ValueError(f"copy_flax_params takes the collections 'params' and 'batch_stats', got also {extra}")
  submodules = dict(module.named_modules())
  assigned = set()
  with torch.no_grad():
    for path, value in flat.items():
      dotted = ".".join(path[:-1])
      if dotted not in submodules:
        raise ValueError(f"flax variable {'/'.join(path)} has no torch submodule {dotted!r} in "
                         f"{type(module).__name__}: the two networks differ")
      target = submodules[dotted]
      attr, converted = _torch_value(target, path[-1], value)
      tensor = getattr(target, attr)
      if tensor is None or tuple(tensor.shape) != converted.shape:
        raise ValueError(f"flax variable {'/'.join(path)} {value.shape} -> torch {dotted}.{attr} needs "
                         f"{None if tensor is None else tuple(tensor.shape)}, got {converted.shape}")
      tensor.copy_(torch.from_numpy(np.array(converted, np.float32)))  # a writable, contiguous copy
      assigned.add(f"{dotted}.{attr}")
  expected = {n for n, _ in module.named_parameters()}
  expected |= {n for n, _ in module.named_buffers() if n.endswith(("running_mean", "running_var"))}
  missing = sorted(expected - assigned)
  if missing:
    raise ValueError(f"copy_flax_params left torch tensors without a flax value: {missing[:8]}"
                     f"{' ...' if len(missing) > 8 else ''}")
