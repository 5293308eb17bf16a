"""Reading pretrained weight files: Keras `.h5` in the keras-applications layout, torch state dicts (`.pth`/`.pt`/
`.bin` through torch) and `.safetensors` (through safetensors.numpy, no torch needed).

`read_weights` gives a file's backbone arrays in segjax's layout (a segjax.weights.mapping.FileWeights); the raw
readers give the file's own names and layouts.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from segjax.weights.mapping import FileWeights, from_keras, from_torch


def read_weights(path: str, fmt: str) -> FileWeights:
  """Reads a weight file (`fmt`: "keras_h5" or "torch") into segjax's layout, the architecture from its keys."""
  if fmt == "keras_h5":
    return from_keras(read_keras_h5(path), path)
  return from_torch(read_torch(path), path)


def _text(x) -> str:
  return x.decode("utf8") if isinstance(x, bytes) else str(x)


# Weight-name suffixes of Keras 1 (`block1_conv1_W_1:0`), tf.keras (`block1_conv1/kernel:0`) and Keras 3 files.
_KERAS_ROLES = {"kernel": "kernel", "W": "kernel", "bias": "bias", "b": "bias", "gamma": "gamma", "beta": "beta",
                "moving_mean": "moving_mean", "running_mean": "moving_mean", "moving_variance": "moving_variance",
                "running_std": "moving_variance"}
_KERAS_ORDER = {2: ("kernel", "bias"), 1: ("kernel",), 4: ("gamma", "beta", "moving_mean", "moving_variance")}


def _keras_role(weight_name: str) -> str | None:
  name = re.sub(r":\d+$", "", weight_name).split("/")[-1]
  name = re.sub(r"_\d+$", "", name)  # Keras 1 appends a uid: block1_conv1_W_1
  for suffix in sorted(_KERAS_ROLES, key=len, reverse=True):
    if name == suffix or name.endswith("_" + suffix):
      return _KERAS_ROLES[suffix]
  return None


def _keras_roles(path: str, layer: str, names: list[str]) -> list[str]:
  """The role of each of a layer's weights: by name suffix, else by their order (kernel, bias / gamma, beta, ...)."""
  roles = [_keras_role(n) for n in names]
  if None not in roles and len(set(roles)) == len(roles):
    return roles
  if len(names) not in _KERAS_ORDER:
    raise ValueError(f"{path}: layer {layer!r} has weights {names} that are neither named kernel/bias/"
                     f"gamma/beta/moving_mean/moving_variance nor in a known order")
  return list(_KERAS_ORDER[len(names)])


def read_keras_h5(path: str) -> dict[str, dict[str, np.ndarray]]:
  """Layer name -> {"kernel"|"bias"|"gamma"|"beta"|"moving_mean"|"moving_variance": array} of a Keras weight file
  in the keras-applications (legacy h5) layout: a root attribute `layer_names`, one group per layer with an
  attribute `weight_names`. Full-model files (`model.save("x.h5")`) keep that layout under `model_weights`.
  Weights are identified by their name's suffix, else by their order (kernel, bias / gamma, beta, mean, var)."""
  try:
    import h5py  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"Reading the Keras weight file {path} needs h5py: pip install h5py") from e
  layers = {}
  with h5py.File(path, "r") as f:
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in root.attrs:
      raise ValueError(f"{path}: not a Keras weight file in the keras-applications (legacy h5) layout (no "
                       f"'layer_names' attribute); Keras 3 `.weights.h5` files are not supported: save with "
                       f"keras.src.legacy.saving.legacy_h5_format.save_weights_to_hdf5_group, or use the "
                       f"keras-applications download (docs/weights.md)")
    for layer in map(_text, root.attrs["layer_names"]):
      group = root[layer]
      names = [_text(n) for n in group.attrs.get("weight_names", [])]
      if names:
        roles = _keras_roles(path, layer, names)
        layers[layer] = {role: np.asarray(group[name]) for role, name in zip(roles, names)}
  return layers


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"Reading {path} needs safetensors: pip install safetensors") from e
  return dict(load_file(path))


def _read_torch_pickle(path: str) -> dict[str, np.ndarray]:
  """`torch.load(weights_only=True)` of a state dict, unwrapped from {"state_dict": ...} / {"model": ...}."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"Reading the PyTorch file {path} needs torch: pip install torch (or convert the file to "
                      f".safetensors, which needs only the safetensors package)") from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  (torch raises several kinds for a pickled object)
    raise ValueError(f"{path}: torch.load(weights_only=True) could not read it as a state dict ({e}); save "
                     f"`model.state_dict()` rather than the model object") from e
  if not isinstance(state, Mapping):
    raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict; save `model.state_dict()`")
  for key in ("state_dict", "model"):
    if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
      state = state[key]
  return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()
          if hasattr(v, "detach")}


def read_torch(path: str) -> dict[str, np.ndarray]:
  """A state dict as numpy arrays: `.safetensors` through safetensors.numpy (no torch needed), anything else with
  `torch.load(weights_only=True)`. A wrapping {"state_dict": ...} / {"model": ...} is unwrapped and a `module.` or
  `backbone.` key prefix (DataParallel, MMSegmentation) removed."""
  state = _read_safetensors(path) if path.endswith(".safetensors") else _read_torch_pickle(path)
  out = {}
  for key, value in state.items():
    for prefix in ("module.", "backbone."):
      if key.startswith(prefix):
        key = key[len(prefix):]
    out[key] = np.asarray(value)
  return out
