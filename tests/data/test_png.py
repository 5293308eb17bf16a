"""Tests for segjax.data.png: EXIF orientation, channel conversion, the pixel limit.

References: PIL's own `ImageOps.exif_transpose` and numpy flips/rotations of the raw pixels.
"""

import io
import pathlib

import numpy as np
from PIL import Image
from PIL import ImageOps
import pytest

from segjax.data import png

# Orientation -> what it does to the stored (raw) pixels, written with numpy (EXIF 2.3, table of Orientation).
NUMPY_ORIENT = {
    2: lambda x: x[:, ::-1],  # mirrored horizontally
    3: lambda x: x[::-1, ::-1],  # rotated 180
    4: lambda x: x[::-1],  # mirrored vertically
    5: lambda x: np.swapaxes(x, 0, 1),  # transposed
    6: lambda x: np.rot90(x, -1),  # rotated 90 clockwise
    7: lambda x: np.swapaxes(x, 0, 1)[::-1, ::-1],  # transverse
    8: lambda x: np.rot90(x, 1),  # rotated 90 counter-clockwise
}


def save_oriented(path: pathlib.Path, array, orientation: int, **kw) -> pathlib.Path:
  """Writes `array` (the raw, stored pixels) with an EXIF Orientation tag; the format follows the suffix."""
  path.parent.mkdir(parents=True, exist_ok=True)
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(np.asarray(array)).save(path, exif=exif, **kw)
  return path


def _decode(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img)


def _raw(path) -> np.ndarray:
  """PIL's decode of the stored pixels (PIL's decoders ignore EXIF)."""
  with Image.open(path) as img:
    return np.asarray(img)


def _pil_upright(path, mode) -> np.ndarray:
  with Image.open(path) as img:
    return np.asarray(ImageOps.exif_transpose(img).convert(mode))


@pytest.mark.parametrize("orientation", range(2, 9))
def test_read_image_and_read_jpeg_apply_the_exif_orientation(tmp_path, orientation):
  rng = np.random.default_rng(orientation)
  raw = rng.integers(0, 256, (6, 10, 3), np.uint8)  # not square: a rotation changes the shape
  src_png = save_oriented(tmp_path / "a.png", raw, orientation)
  src_jpg = save_oriented(tmp_path / "a.jpg", raw, orientation, quality=95)
  want = NUMPY_ORIENT[orientation](raw)
  np.testing.assert_array_equal(_pil_upright(src_png, "RGB"), want)  # the reference agrees with PIL

  data, shape = png.read_image(src_png, "RGB")  # camvid: PNG in the stored mode, once kept as it was
  assert data != src_png.read_bytes() and shape == want.shape[:2]
  np.testing.assert_array_equal(_decode(data), want)
  data, shape = png.read_image(src_png, "L")  # isbi2012
  np.testing.assert_array_equal(_decode(data), _pil_upright(src_png, "L"))
  assert shape == want.shape[:2]

  data, shape = png.read_jpeg(src_jpg)  # voc2012, ade20k, lfw_parts: a JPEG, once kept as it was
  assert data != src_jpg.read_bytes() and shape == want.shape[:2]
  np.testing.assert_array_equal(_decode(data), NUMPY_ORIENT[orientation](_raw(src_jpg)))


def test_orientation_1_and_none_keep_the_bytes(tmp_path):
  raw = np.random.default_rng(0).integers(0, 256, (6, 10, 3), np.uint8)
  for path in (save_oriented(tmp_path / "one.jpg", raw, 1), tmp_path / "none.jpg"):
    if not path.exists():
      Image.fromarray(raw).save(path)
    assert png.read_jpeg(path) == (path.read_bytes(), (6, 10))


@pytest.mark.parametrize("mode, channels", [
    ("CMYK", 3), ("RGBA", 3), ("LA", 3), ("P", 3), ("PA", 3), ("L", 3), ("RGB", 1), ("RGBA", 1), ("1", 3)])
def test_to_channels_matches_pil(tmp_path, mode, channels):
  rng = np.random.default_rng(0)
  img = Image.fromarray(rng.integers(0, 256, (5, 7, 4), np.uint8), "RGBA").convert(mode)
  if mode == "P":
    img.info["transparency"] = 3
  target = "RGB" if channels == 3 else "L"
  # Reference: alpha dropped by hand, PIL's conversion of the colours.
  ref = img.convert("RGBA").convert("RGB") if mode in ("RGBA", "LA", "PA", "P") else img.convert("RGB")
  if mode in ("L", "LA", "1"):
    ref = np.repeat(np.asarray(img.convert("L"))[..., None], 3, -1)
  else:
    ref = np.asarray(ref.convert(target))
  np.testing.assert_array_equal(png.to_channels(img, channels, "image", tmp_path), ref)


def test_to_channels_refuses_16bit(tmp_path):
  img = Image.frombytes("I;16", (4, 3), np.arange(12, dtype="<u2").tobytes())
  with pytest.raises(ValueError, match=r"image .*x\.png has mode I;16 \(16-bit or float\).*save it as 8-bit RGB"):
    png.to_channels(img, 3, "image", tmp_path / "x.png")


def test_pixel_limit_names_the_flag(tmp_path):
  path = tmp_path / "big.png"
  Image.fromarray(np.zeros((40, 50), np.uint8)).save(path)
  with png.pixel_limit(900):  # PIL refuses above twice the limit: 2000 > 1800
    with pytest.raises(ValueError, match=r"big\.png is 50x40 = 2000 pixels, above the limit of 900 pixels.*"
                       r"--config\.dataset\.max_image_pixels=N"):
      png.open_image(path)
    with pytest.raises(ValueError, match=r"raise the limit with --max_pixels=N"):
      png.open_image(path, "input image", pixels_flag="--max_pixels")
  with png.pixel_limit(1000), png.open_image(path) as img:  # warned, not refused, and the warning is silenced
    assert img.size == (50, 40)
  assert Image.MAX_IMAGE_PIXELS not in (900, 1000)  # restored


@pytest.mark.parametrize("orientation", [3, 6])
def test_builders_turn_their_labels_upright(tmp_path, orientation):
  from segjax.data import ade20k, camvid, isbi2012, voc2012
  rng = np.random.default_rng(orientation)
  ids = rng.integers(0, 11, (6, 10), np.uint8)
  path = save_oriented(tmp_path / "label.png", ids, orientation)
  want = NUMPY_ORIENT[orientation](ids)
  for read in (camvid._read_label, voc2012.read_label):  # pylint: disable=protected-access
    data, got = read(path)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_decode(data), want)  # not the tagged bytes kept as they were
  data, got = ade20k.read_label(path)
  np.testing.assert_array_equal(got, ade20k._REDUCE_ZERO_LABEL[want])  # pylint: disable=protected-access
  path = save_oriented(tmp_path / "membrane.png", np.where(ids > 5, 255, 0).astype(np.uint8), orientation)
  np.testing.assert_array_equal(isbi2012.read_label(path), NUMPY_ORIENT[orientation](ids > 5))
