"""PNG encoding and image reading shared by the tfds builders.

tfds encodes numpy images through TensorFlow, so the builders hand it PNG or JPEG bytes instead.

Every source image is opened with `open_image`, which decodes it fully before anything is stored: PIL's
`Image.open` only reads the header, so a truncated file opens fine and fails (or, with PIL's
`LOAD_TRUNCATED_IMAGES`, silently turns grey) only when its pixels are read, which for bytes stored as they are
would be at training time.

Every reader then applies the file's EXIF orientation (`upright`, as PIL's `ImageOps.exif_transpose`), and images
become the model's channel count through one function, `to_channels`, shared by preparation and predict.py.
"""

import contextlib
import io
import pathlib
import struct
import warnings
import zlib

import numpy as np
from PIL import Image
from PIL import ImageFile
from PIL import ImageOps

# What PIL's decoders raise for a damaged file, besides OSError ("image file is truncated", "broken data stream"):
# SyntaxError for broken PNG chunks, struct.error / EOFError for short headers, zlib.error for bad deflate data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
_FIX = "re-export it from the original, or remove it"
# The flag that sets Image.MAX_IMAGE_PIXELS while datasets are prepared (pixel_limit, used by datasets.data_source).
PIXELS_FLAG = "--config.dataset.max_image_pixels"
_ORIENTATION = 0x0112  # EXIF Orientation: 1 = as stored, 2..8 = flipped and/or rotated
# 16-bit and float images: no single right reduction to 8 bits, so preparation and predict.py both refuse them.
WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")


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


@contextlib.contextmanager
def pixel_limit(pixels: int | None):
  """PIL's `Image.MAX_IMAGE_PIXELS` set to `pixels` inside the block (None: left as it is).

  The limit is what the user asked for (`--config.dataset.max_image_pixels`), so PIL's warning between once and
  twice the limit is silenced; above twice it PIL still refuses, and `open_image` names the flag.
  """
  if pixels is None:
    yield
    return
  previous = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = int(pixels)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      yield
  finally:
    Image.MAX_IMAGE_PIXELS = previous


def _pixels(path: pathlib.Path) -> str:
  """"WxH = N pixels" from the header, read without PIL's pixel limit."""
  limit = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = None
  try:
    with Image.open(path) as img:
      return f"{img.width}x{img.height} = {img.width * img.height} pixels"
  except Exception:  # pylint: disable=broad-except  # only for the message
    return "larger than the limit"
  finally:
    Image.MAX_IMAGE_PIXELS = limit


def open_image(path: pathlib.Path, what: str = "image", fix: str = _FIX,
               pixels_flag: str = PIXELS_FLAG) -> Image.Image:
  """Opens and fully decodes (first frame of) the image at `path`; use it as a context manager.

  The EXIF orientation is not applied here: see `upright`.

  Args:
    path: the file.
    what: what the file is, for messages ("image", "mask", "CamVid label").
    fix: what the user should do about a bad file.
    pixels_flag: the flag that raises PIL's pixel limit, named when an image is above it.

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
  except Image.DecompressionBombError:
    raise ValueError(f"{what} {path} is {_pixels(path)}, above the limit of {Image.MAX_IMAGE_PIXELS} pixels "
                     f"(PIL refuses images over twice its limit as possible decompression bombs): if the image is "
                     f"genuine, raise the limit with {pixels_flag}=N (N >= half its pixels); else {fix}.") from None
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


def orientation(img: Image.Image) -> int:
  """The EXIF Orientation of a loaded image (1 when it has none or PIL cannot parse its EXIF)."""
  try:
    return int(img.getexif().get(_ORIENTATION, 1))
  except Exception:  # pylint: disable=broad-except  # damaged EXIF: PIL's own transpose would fail the same way
    return 1


def oriented(img: Image.Image) -> bool:
  """Whether `upright` changes the image (EXIF Orientation 2..8)."""
  return orientation(img) in range(2, 9)


def upright(img: Image.Image) -> Image.Image:
  """The image as it is meant to be seen: PIL's `ImageOps.exif_transpose` where the orientation is 2..8.

  Phone cameras store the sensor's pixels and an EXIF Orientation tag. The image (not a copy) when there is
  nothing to do, so a large image is not copied.
  """
  return ImageOps.exif_transpose(img) if oriented(img) else img


def to_channels(img: Image.Image, num_channels: int, what: str, path: pathlib.Path) -> np.ndarray:
  """The pixels a model with `num_channels` (1 or 3) channels sees: uint8 [H, W] or [H, W, 3].

  `np.asarray(channels_image(...))`, see there.
  """
  return np.asarray(channels_image(img, num_channels, what, path))


def channels_image(img: Image.Image, num_channels: int, what: str, path: pathlib.Path) -> Image.Image:
  """The image a model with `num_channels` (1 or 3) channels sees, in PIL mode "L" or "RGB".

  What training preparation stores and predict.py reads: the EXIF orientation applied (`upright`), palette
  images as their colours, CMYK through PIL's conversion to RGB, alpha dropped, grey repeated to RGB or RGB
  reduced to grey with PIL's ITU-R 601-2 luma.

  Args:
    img: a loaded image (`open_image`).
    num_channels: 1 (grey) or 3 (RGB).
    what: what the file is, for messages ("Folder dataset: image", "input image").
    path: the file, for messages.

  Raises:
    ValueError: a 16-bit or float image, or a mode PIL cannot convert to RGB, naming the file and the fix.
  """
  target = {1: "L", 3: "RGB"}[num_channels]
  if img.mode in WIDE_MODES:
    raise ValueError(f"{what} {path} has mode {img.mode} (16-bit or float); reducing it to 8 bits needs a scaling "
                     f"only you can choose: save it as 8-bit {target} first.")
  img = upright(img)
  if img.mode not in ("L", "RGB"):
    # Through RGB: palette -> its colours, CMYK -> RGB, RGBA/LA -> alpha dropped (RGB -> L is then exact on grey).
    try:
      img = img.convert("RGB")
    except ValueError as e:
      raise ValueError(f"{what} {path} has mode {img.mode}, which PIL cannot convert to RGB ({e}): save it as "
                       f"8-bit {target}.") from None
  return img if img.mode == target else img.convert(target)


def encode(array: np.ndarray | Image.Image, compress_level: int = 6) -> bytes:
  """PNG bytes of a uint8 array or a PIL image (saved as it is: no numpy copy of a large image)."""
  img = array if isinstance(array, Image.Image) else Image.fromarray(array)
  buf = io.BytesIO()
  # No tRNS or ICC profile copied from the source's info: only the pixels.
  img.save(buf, format="PNG", compress_level=compress_level, transparency=None, icc_profile=None)
  return buf.getvalue()


def read_image(path: pathlib.Path, mode: str) -> tuple[bytes, tuple[int, int]]:
  """PNG bytes of the image at `path` in PIL `mode` ("RGB" or "L") and its (height, width).

  A PNG already in that mode and without an EXIF orientation is stored as is; anything else is turned upright,
  converted and re-encoded.

  Raises:
    ValueError: the file is not a readable, complete image (see `open_image`).
  """
  with open_image(path) as img:
    if img.format == "PNG" and img.mode == mode and not oriented(img):
      shape = (img.height, img.width)
      img.close()  # frees the decoded pixels (only the check that the file is whole) before the bytes are read
      return path.read_bytes(), shape
    array = np.asarray(upright(img).convert(mode))
  return encode(array), array.shape[:2]


def read_jpeg(path: pathlib.Path) -> tuple[bytes, tuple[int, int]]:
  """The image to store for `path` and its (height, width).

  JPEG bytes are kept as they are when they decode to RGB or grey (which the
  decoder repeats to 3 channels) and carry no EXIF orientation (decoders
  disagree on applying it: PIL does not, OpenCV does); anything else is turned
  upright, converted and re-encoded losslessly as PNG, which the decoder reads
  just the same.

  Raises:
    ValueError: the file is not a readable, complete image (see `open_image`).
  """
  with open_image(path) as img:
    if img.format == "JPEG" and img.mode in ("RGB", "L") and not oriented(img):
      shape = (img.height, img.width)
      img.close()  # frees the decoded pixels before the bytes are read
      return path.read_bytes(), shape
    array = np.asarray(upright(img).convert("RGB"))
  return encode(array), array.shape[:2]
