"""Mapping the arrays of a pretrained file onto a segjax VGG16 / ResNet backbone: names (torchvision's
`features.N` / `layerK.B.convI`, Keras' `blockS_convI` / `convS_blockB_I_conv` / `res2a_branch2a`) become segjax
parameter paths, and layouts become segjax's (torch's OIHW kernels HWIO, BatchNorm parameters and statistics split
into `params` and `batch_stats`, Keras' ResNet conv biases and BN epsilon folded into the statistics, VGG16's
fc1/fc2 convolutionalised). segjax.weights documents the conventions; segjax.weights.files reads the files.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

RESNET_DEPTHS = {6: 50, 23: 101, 36: 152}  # blocks in layer3 of the bottleneck ResNets
BASIC_RESNET_DEPTHS = {2: 18, 6: 34}  # blocks in layer3 of the basic-block ResNets (ResNet-34 has 6, as ResNet-50)
KERAS_RESNET_BN_EPSILON = 1.001e-5
SEGJAX_BN_EPSILON = 1e-5

Path = tuple[str, ...]


@dataclasses.dataclass
class FileWeights:
  """A file's backbone arrays in segjax's layout, keyed by path relative to the backbone.

  Attributes:
    params: path -> array for the `params` collection (HWIO kernels, BN scale/bias).
    batch_stats: path -> array for the `batch_stats` collection (BN mean/var).
    sources: (collection, *path) -> (the file's key, the array's shape in the file), for error messages.
    ignored: keys of the file that are not part of a backbone (classifier layers, counters).
    architecture: "vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50", "resnet101" or "resnet152", read from
      the keys.
    bgr: the first convolution expects BGR input (Keras / Caffe).
    first_conv: path of the first convolution's kernel.
    extras: VGG16's fully connected fc6/fc7 as convolutions ("fc6"/"fc7" -> kernel [7, 7, 512, 4096] /
      [1, 1, 4096, 4096] and bias), keyed by path beside the backbone (FCN's and DeconvNet's `fc6`, `fc7`).
  """

  params: dict[Path, np.ndarray] = dataclasses.field(default_factory=dict)
  batch_stats: dict[Path, np.ndarray] = dataclasses.field(default_factory=dict)
  sources: dict[Path, tuple[str, tuple[int, ...]]] = dataclasses.field(default_factory=dict)
  ignored: list[str] = dataclasses.field(default_factory=list)
  architecture: str = ""
  bgr: bool = False
  first_conv: Path = ()
  extras: dict[Path, np.ndarray] = dataclasses.field(default_factory=dict)

  def put(self, collection: str, path: Path, array: np.ndarray, key: str, file_shape: tuple[int, ...]) -> None:
    getattr(self, collection)[path] = np.asarray(array, np.float32)
    self.sources[(collection, *path)] = (key, tuple(file_shape))


def resnet_architecture(blocks_in_layer3: int, bottleneck: bool = True) -> str:
  """"resnet18/34" (basic blocks) or "resnet50/101/152" (bottlenecks) from the number of blocks in layer3 (else
  "resnet?(N blocks in layer3)"). The block type is needed: ResNet-34 and ResNet-50 both have 6."""
  depths = RESNET_DEPTHS if bottleneck else BASIC_RESNET_DEPTHS
  return f"resnet{depths.get(blocks_in_layer3, f'?({blocks_in_layer3} blocks in layer3)')}"


# ---------------------------------------------------------------------------------------------- converters

_BN_PARAMS = {"weight": ("params", "scale"), "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
              "running_var": ("batch_stats", "var")}


def _put_torch(out: FileWeights, module: Path, key: str, name: str, value: np.ndarray, conv: bool) -> None:
  if conv:  # weight OIHW -> kernel HWIO; bias
    leaf = "kernel" if name == "weight" else name
    out.put("params", (*module, leaf), value.transpose(2, 3, 1, 0) if value.ndim == 4 else value, key, value.shape)
  elif name in _BN_PARAMS:
    collection, leaf = _BN_PARAMS[name]
    out.put(collection, (*module, leaf), value, key, value.shape)
  else:
    out.ignored.append(key)


def _is_conv(state: dict[str, np.ndarray], module: str) -> bool:
  weight = state.get(f"{module}.weight")
  return weight is not None and weight.ndim == 4


def _torch_vgg(state: dict[str, np.ndarray]) -> FileWeights:
  out = FileWeights()
  bn = any(re.fullmatch(r"features\.\d+\.running_mean", k) for k in state)
  out.architecture = "vgg16_bn" if bn else "vgg16"
  convs = sorted({int(m.group(1)) for k, v in state.items() if (m := re.fullmatch(r"features\.(\d+)\.weight", k))
                  and v.ndim == 4})
  # torchvision's `features` is conv, [bn,] relu per convolution and a pool per stage: a wider gap between two
  # convolutions' indices is a stage boundary.
  names, stage, i = {}, 1, 0
  for j, idx in enumerate(convs):
    if j and idx - convs[j - 1] > (3 if bn else 2):
      stage, i = stage + 1, 0
    i += 1
    names[idx] = f"conv{stage}_{i}"
    if bn:
      names[idx + 1] = f"bn{stage}_{i}"
  fc = {"classifier.0": "fc6", "classifier.3": "fc7"}
  for key, value in state.items():
    m = re.fullmatch(r"features\.(\d+)\.(\w+)", key)
    module, _, name = key.rpartition(".")
    if m and int(m.group(1)) in names and m.group(2) != "num_batches_tracked":
      _put_torch(out, (names[int(m.group(1))],), key, m.group(2), value, _is_conv(state, key.rpartition(".")[0]))
    elif module in fc and name in ("weight", "bias"):
      _put_fc(out, fc[module], name, value.T if name == "weight" else value, channels_last=False)
    elif not key.endswith("num_batches_tracked"):
      out.ignored.append(key)
  out.first_conv = ("conv1_1", "kernel")
  return out


def _torch_resnet(state: dict[str, np.ndarray]) -> FileWeights:
  out = FileWeights()
  # MMSegmentation's ResNetV1c deep stem: stem.{0,3,6} convolutions, stem.{1,4,7} BNs.
  stem = {"stem.0": "conv1", "stem.1": "bn1", "stem.3": "conv2", "stem.4": "bn2", "stem.6": "conv3", "stem.7": "bn3"}
  for key, value in state.items():
    module, _, name = key.rpartition(".")
    if name == "num_batches_tracked":
      continue
    if re.fullmatch(r"(conv|bn)\d", module) or module in stem:
      _put_torch(out, (stem.get(module, module),), key, name, value, _is_conv(state, module))
    elif m := re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.\d)", module):
      _put_torch(out, (f"layer{m.group(1)}_{m.group(2)}", m.group(3).replace(".", "_")), key, name, value,
                 _is_conv(state, module))
    else:
      out.ignored.append(key)
  blocks = len({k.split(".")[1] for k in state if k.startswith("layer3.")})
  # Bottlenecks have a third convolution per block; torchvision's BasicBlock (ResNet-18/34) has two.
  out.architecture = resnet_architecture(blocks, bottleneck="layer1.0.conv3.weight" in state)
  out.first_conv = ("conv1", "kernel")
  return out


def _keras_vgg(layers: dict[str, dict[str, np.ndarray]]) -> FileWeights:
  out = FileWeights(architecture="vgg16", bgr=True, first_conv=("conv1_1", "kernel"))
  for layer, arrays in layers.items():
    m = re.fullmatch(r"block(\d)_conv(\d)", layer)
    for role, value in arrays.items():
      if m:
        out.put("params", (f"conv{m.group(1)}_{m.group(2)}", role), value, f"{layer}/{role}", value.shape)
      elif layer in ("fc1", "fc2"):  # include_top files
        _put_fc(out, {"fc1": "fc6", "fc2": "fc7"}[layer], "weight" if role == "kernel" else role, value,
                channels_last=True)
      else:
        out.ignored.append(f"{layer}/{role}")  # predictions
  return out


def _put_fc(out: FileWeights, name: str, role: str, value: np.ndarray, channels_last: bool) -> None:
  """A fully connected layer of VGG16's classifier as a convolution: `value` is [in, out] (or the bias)."""
  if role == "bias":
    out.extras[(name, "bias")] = np.asarray(value, np.float32)
    return
  fan_in, features = value.shape
  side = 7 if name == "fc6" else 1  # fc6 reads the flattened 7x7 pool5
  channels = fan_in // (side * side)
  if channels * side * side != fan_in:
    raise ValueError(f"VGG16 {name} has {fan_in} inputs, not a {side}x{side} map")
  if channels_last:  # Keras' Flatten of [7, 7, C]: index (h * 7 + w) * C + c
    kernel = value.reshape(side, side, channels, features)
  else:  # torch's flatten of [C, 7, 7]: index c * 49 + h * 7 + w
    kernel = value.reshape(channels, side, side, features).transpose(1, 2, 0, 3)
  out.extras[(name, "kernel")] = np.ascontiguousarray(kernel, np.float32)


def _keras_resnet_module(layer: str) -> tuple[Path, str] | None:
  """(segjax module path, "conv" or "bn") of a Keras ResNet layer, in tf.keras / Keras 3 names
  (conv2_block1_1_conv) or the Keras 1 / Caffe names (res2a_branch2a, bn2a_branch2a, res4b22_branch1)."""
  if layer in ("conv1_conv", "conv1"):
    return ("conv1",), "conv"
  if layer in ("conv1_bn", "bn_conv1"):
    return ("bn1",), "bn"
  if m := re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", layer):
    stage, block, i, kind = int(m.group(1)) - 1, int(m.group(2)) - 1, int(m.group(3)), m.group(4)
  elif m := re.fullmatch(r"(res|bn)(\d)([a-z])(\d*)_branch(1|2a|2b|2c)", layer):
    stage, kind = int(m.group(2)) - 1, "conv" if m.group(1) == "res" else "bn"
    block = int(m.group(4)) if m.group(4) else ord(m.group(3)) - ord("a")
    i = {"1": 0, "2a": 1, "2b": 2, "2c": 3}[m.group(5)]
  else:
    return None
  name = (f"downsample_{0 if kind == 'conv' else 1}" if i == 0 else f"{kind}{i}")
  return (f"layer{stage}_{block}", name), kind


def _keras_resnet(layers: dict[str, dict[str, np.ndarray]]) -> FileWeights:
  out = FileWeights(bgr=True, first_conv=("conv1", "kernel"))
  convs, bns = {}, {}
  for layer, arrays in layers.items():
    found = _keras_resnet_module(layer)
    if found is None:
      out.ignored.extend(f"{layer}/{role}" for role in arrays)
    else:
      (convs if found[1] == "conv" else bns)[found[0]] = (layer, arrays)
  # The BN after conv `convK` is `bnK`; after the shortcut's downsample_0, downsample_1.
  bn_of = lambda p: (*p[:-1], "downsample_1" if p[-1] == "downsample_0" else p[-1].replace("conv", "bn"))
  biases = {}
  for path, (layer, arrays) in convs.items():
    out.put("params", (*path, "kernel"), arrays["kernel"], f"{layer}/kernel", arrays["kernel"].shape)
    biases[bn_of(path)] = (layer, arrays.get("bias"))
  for path, (layer, arrays) in bns.items():
    channels = arrays["moving_mean"].shape
    _, bias = biases.get(path, (None, None))
    bias = np.zeros(channels) if bias is None else bias.astype(np.float64)
    # Fold the convolution's bias and Keras' epsilon into the statistics (segjax.weights docstring); float64 so that
    # the 1e-8 epsilon difference is not lost in rounding before the final cast.
    mean = arrays["moving_mean"].astype(np.float64) - bias
    var = arrays["moving_variance"].astype(np.float64) + KERAS_RESNET_BN_EPSILON - SEGJAX_BN_EPSILON
    out.put("params", (*path, "scale"), arrays.get("gamma", np.ones(channels)), f"{layer}/gamma", channels)
    out.put("params", (*path, "bias"), arrays.get("beta", np.zeros(channels)), f"{layer}/beta", channels)
    out.put("batch_stats", (*path, "mean"), mean, f"{layer}/moving_mean", channels)
    out.put("batch_stats", (*path, "var"), var, f"{layer}/moving_variance", channels)
  unpaired = sorted("/".join(p) for p in set(biases) - set(bns))
  if unpaired:
    raise ValueError(f"Keras ResNet weights: convolutions without their BatchNorm layer ({unpaired}); the file "
                     f"is not a keras.applications ResNet50/101")
  blocks = len({p[0] for p in convs if p[0].startswith("layer3_")})
  out.architecture = resnet_architecture(blocks)
  return out


def from_keras(layers: dict[str, dict[str, np.ndarray]], path: str) -> FileWeights:
  """A Keras file's layers (segjax.weights.files.read_keras_h5) as a VGG16 or ResNet backbone's arrays."""
  if any(re.fullmatch(r"block\d_conv\d", n) for n in layers):
    return _keras_vgg(layers)
  if any(_keras_resnet_module(n) for n in layers):
    return _keras_resnet(layers)
  raise ValueError(f"{path}: neither a Keras VGG16 (block1_conv1 ...) nor a ResNet (conv2_block1_1_conv ... or "
                   f"res2a_branch2a ...) weight file; its layers: {list(layers)[:8]}")


def from_torch(state: dict[str, np.ndarray], path: str) -> FileWeights:
  """A torchvision state dict (segjax.weights.files.read_torch) as a VGG16 or ResNet backbone's arrays."""
  if any(re.fullmatch(r"features\.\d+\.weight", k) for k in state):
    return _torch_vgg(state)
  if any(k.startswith("layer1.0.") for k in state):
    return _torch_resnet(state)
  raise ValueError(f"{path}: neither a torchvision VGG16 (features.N.weight) nor a ResNet (layer1.0.conv1.weight) "
                   f"state dict; its first keys: {list(state)[:8]}")
