"""PNG encoding and image reading shared by the tfds builders.

tfds encodes numpy images through TensorFlow, so the builders hand it PNG or JPEG bytes instead.
"""

import io
import pathlib

import numpy as np
from PIL import Image


def encode(array: np.ndarray, compress_level: int = 6) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
  return buf.getvalue()


def read_image(path: pathlib.Path, mode: str) -> tuple[bytes, tuple[int, int]]:
  """PNG bytes of the image at `path` in PIL `mode` ("RGB" or "L") and its (height, width).

  A PNG already in that mode is stored as is; anything else is converted and re-encoded.
  """
  with Image.open(path) as img:
    if img.format == "PNG" and img.mode == mode:
      return path.read_bytes(), (img.height, img.width)
    array = np.asarray(img.convert(mode))
  return encode(array), array.shape[:2]


def read_jpeg(path: pathlib.Path) -> tuple[bytes, tuple[int, int]]:
  """The image to store for `path` and its (height, width).

  JPEG bytes are kept as they are when they decode to RGB or grey (which the
  decoder repeats to 3 channels); anything else is converted and re-encoded
  losslessly as PNG, which the decoder reads just the same.
  """
  with Image.open(path) as img:
    if img.format == "JPEG" and img.mode in ("RGB", "L"):
      return path.read_bytes(), (img.height, img.width)
    array = np.asarray(img.convert("RGB"))
  return encode(array), array.shape[:2]
