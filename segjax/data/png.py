"""PNG encoding and image reading shared by the tfds builders.

tfds encodes numpy images through TensorFlow, so the builders hand it PNG or JPEG bytes instead.

Every source image is opened with `open_image`, which decodes it fully before anything is stored: PIL's
`Image.open` only reads the header, so a truncated file opens fine and fails (or, with PIL's
`LOAD_TRUNCATED_IMAGES`, silently turns grey) only when its pixels are read, which for bytes stored as they are
would be at training time.
"""

import contextlib
import io
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image
from PIL import ImageFile

# What PIL's decoders raise for a damaged file, besides OSError ("image file is truncated", "broken data stream"):
# SyntaxError for broken PNG chunks, struct.error / EOFError for short headers, zlib.error for bad deflate data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
_FIX = "re-export it from the original, or remove it"


@contextlib.contextmanager
def _strict_loading():
  # Some libraries (tfds' thumbnail code among them) set LOAD_TRUNCATED_IMAGES = True process-wide, which makes
  # PIL pad a truncated image with grey instead of raising; a dataset must never store such an image.
  previous = ImageFile.LOAD_TRUNCATED_IMAGES
  ImageFile.LOAD_TRUNCATED_IMAGES = False
  try:
    yield
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = previous


def open_image(path: pathlib.Path, what: str = "image", fix: str = _FIX) -> Image.Image:
  """Opens and fully decodes (first frame of) the image at `path`; use it as a context manager.

  Args:
    path: the file.
    what: what the file is, for messages ("image", "mask", "CamVid label").
    fix: what the user should do about a bad file.

  Returns:
    The loaded PIL image.

  Raises:
    ValueError: naming the file, what is wrong with it ("not an image PIL can read", "truncated", "corrupt")
      and `fix`.
  """
  try:
    img = Image.open(path)
  except Image.UnidentifiedImageError:
    size = path.stat().st_size
    raise ValueError(f"{what} {path} ({size} bytes) is not an image PIL can read (empty, another format "
                     f"behind an image extension, or damaged header): {fix}.") from None
  except Image.DecompressionBombError as e:
    raise ValueError(f"{what} {path}: {e} If the image is genuine, raise PIL.Image.MAX_IMAGE_PIXELS; else {fix}."
                     ) from None
  except (PermissionError, FileNotFoundError, IsADirectoryError) as e:
    raise ValueError(f"{what} {path} cannot be read ({e.strerror}): check that it is a file you may read.") from None
  except _DECODE_ERRORS as e:  # a header cut short ("Truncated File Read") or damaged
    problem = "is truncated" if "truncated" in str(e).lower() else "is not an image PIL can read"
    raise ValueError(f"{what} {path} ({path.stat().st_size} bytes) {problem}: PIL cannot read its header "
                     f"({type(e).__name__}: {e}): {fix}.") from None
  try:
    with _strict_loading():
      img.load()
  except _DECODE_ERRORS as e:
    img.close()
    problem = "is truncated" if "truncated" in str(e).lower() else "is corrupt"
    raise ValueError(f"{what} {path} {problem}: PIL reads its {img.format} header ({img.width}x{img.height}) "
                     f"but not its pixels ({type(e).__name__}: {e}): {fix}.") from None
  return img


def encode(array: np.ndarray, compress_level: int = 6) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
  return buf.getvalue()


def read_image(path: pathlib.Path, mode: str) -> tuple[bytes, tuple[int, int]]:
  """PNG bytes of the image at `path` in PIL `mode` ("RGB" or "L") and its (height, width).

  A PNG already in that mode is stored as is; anything else is converted and re-encoded.

  Raises:
    ValueError: the file is not a readable, complete image (see `open_image`).
  """
  with open_image(path) as img:
    if img.format == "PNG" and img.mode == mode:
      return path.read_bytes(), (img.height, img.width)
    array = np.asarray(img.convert(mode))
  return encode(array), array.shape[:2]


def read_jpeg(path: pathlib.Path) -> tuple[bytes, tuple[int, int]]:
  """The image to store for `path` and its (height, width).

  JPEG bytes are kept as they are when they decode to RGB or grey (which the
  decoder repeats to 3 channels); anything else is converted and re-encoded
  losslessly as PNG, which the decoder reads just the same.

  Raises:
    ValueError: the file is not a readable, complete image (see `open_image`).
  """
  with open_image(path) as img:
    if img.format == "JPEG" and img.mode in ("RGB", "L"):
      return path.read_bytes(), (img.height, img.width)
    array = np.asarray(img.convert("RGB"))
  return encode(array), array.shape[:2]
