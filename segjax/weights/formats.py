"""What a recipe's `config.init_from` may say, and the input normalisation the weights expect: needs no file, so
eval and predict derive the normalisation from the config alone."""

from __future__ import annotations

import os

import numpy as np

FORMATS = ("auto", "keras_h5", "torch")
ARCHITECTURES = ("auto", "vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50", "resnet101")
_EXTENSIONS = {".h5": "keras_h5", ".hdf5": "keras_h5", ".pth": "torch", ".pt": "torch", ".bin": "torch",
               ".safetensors": "torch"}

# "caffe" preprocessing of keras.applications.{vgg16,resnet}.preprocess_input (BGR means), in RGB order.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
IMAGENET_MEAN = tuple(255.0 * m for m in (0.485, 0.456, 0.406))  # torchvision's ImageNet statistics
IMAGENET_STD = tuple(255.0 * s for s in (0.229, 0.224, 0.225))


def resolve_format(path: str | None, fmt: str) -> str:
  """`fmt`, or for "auto" the format named by `path`'s extension (.h5/.hdf5: keras_h5; .pth/.pt/.bin/.safetensors:
  torch)."""
  if fmt != "auto":
    return fmt
  ext = os.path.splitext(str(path))[1].lower()
  if ext not in _EXTENSIONS:
    raise ValueError(f"config.init_from.path={path!r}: cannot tell the format from the extension {ext!r} (known: "
                     f"{sorted(_EXTENSIONS)}); set config.init_from.format to 'keras_h5' or 'torch'")
  return _EXTENSIONS[ext]


def input_normalization(format: str, architecture: str = "auto",  # pylint: disable=redefined-builtin
                        num_channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) in 0..255 units, RGB order, of the input the pretrained weights expect after `load_into`.

  Args:
    format: "keras_h5" (Keras VGG16 / ResNet50 / ResNet101: Caffe's mean subtraction, std 1) or "torch"
      (torchvision's ImageNet mean and std).
    architecture: one of ARCHITECTURES; only checked (Keras has no VGG16-BN).
    num_channels: 1 for grayscale datasets: the mean of the 3 channels' values (see segjax.weights' docstring).
  """
  if architecture not in ARCHITECTURES:
    raise ValueError(f"config.init_from.architecture={architecture!r}: choose one of {ARCHITECTURES}")
  if format == "keras_h5":
    if architecture == "vgg16_bn":
      raise ValueError("config.init_from.architecture='vgg16_bn': Keras has no VGG16-BN; use a torchvision "
                       "vgg16_bn .pth (format 'torch') or architecture 'vgg16'")
    mean, std = CAFFE_MEAN_RGB, (1.0, 1.0, 1.0)
  elif format == "torch":
    mean, std = IMAGENET_MEAN, IMAGENET_STD
  else:
    raise ValueError(f"config.init_from.format={format!r}: choose 'keras_h5' or 'torch' (or 'auto' with a "
                     f"known extension)")
  if num_channels == 1:
    return (float(np.mean(mean)),), (float(np.mean(std)),)
  return tuple(mean), tuple(std)


def check_config(config) -> None:
  """Checks `config.init_from` (called by segjax.config.validate); the file itself is read only by `load_into`."""
  block = config.init_from
  if block.format not in FORMATS:
    raise ValueError(f"config.init_from.format={block.format!r}: choose one of {FORMATS}")
  if block.architecture not in ARCHITECTURES:
    raise ValueError(f"config.init_from.architecture={block.architecture!r}: choose one of {ARCHITECTURES}")
  if not isinstance(block.target, str) or not block.target:
    raise ValueError(f"config.init_from.target={block.target!r}: give 'auto' or a parameter path such as "
                     f"'backbone'")
  if block.path is None:
    return
  fmt = resolve_format(block.path, block.format)
  input_normalization(fmt, block.architecture)  # raises for Keras + vgg16_bn
