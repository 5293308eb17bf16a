"""Helpers of the folder dataset tests: writing images and masks with PIL, preparing, reading back."""

import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from segjax.data import folder

NO_GCS = tfds.download.DownloadConfig(try_download_gcs=False)
# Colour code of the rgb-mask tests (classes red, blue, green).
PALETTE = ((200, 30, 30), (30, 30, 200), (30, 200, 30))


def save(path: pathlib.Path, array, mode=None, palette=None) -> pathlib.Path:
  """Writes `array` with PIL; the format follows the extension."""
  path.parent.mkdir(parents=True, exist_ok=True)
  array = np.asarray(array)
  if mode in ("P", "I;16"):
    img = Image.frombytes(mode, array.shape[1::-1], array.tobytes())
    if mode == "P":
      img.putpalette(palette or [v for i in range(256) for v in (i, 3, 7)])
  else:
    img = Image.fromarray(array)
  img.save(path)
  return path


def pil_array(path, mode=None) -> np.ndarray:
  with Image.open(path) as img:
    return np.asarray(img.convert(mode) if mode else img)


def prepare(params, data_dir, name="custom"):
  builder = folder.make_builder(params, name=name, data_dir=data_dir)
  if not builder.is_prepared():
    builder.download_and_prepare(download_config=NO_GCS)
  return builder


def by_stem(builder, split):
  source = builder.as_data_source(split)
  return {source[i]["filename"].decode(): source[i]
          for i in range(len(source))}


def folder_params(root, **kw):
  kw.setdefault("class_names", ("a", "b", "c", "d"))
  kw.setdefault("split_fractions", (("train", 1.0),))
  return folder.FolderParams(images_dir=root / "images",
                             masks_dir=root / "masks", **kw)


def write_simple(root, stems=("s0", "s1", "s2"), shape=(6, 8), seed=0):
  rng = np.random.default_rng(seed)
  for stem in stems:
    save(root / "images" / f"{stem}.png",
         rng.integers(0, 256, shape + (3,), np.uint8))
    save(root / "masks" / f"{stem}.png",
         rng.integers(0, 4, shape, np.uint8))
  return root


def raises_on_prepare(params, match, data_dir=None):
  data_dir = data_dir or pathlib.Path(params.images_dir).parent / "data"
  with pytest.raises(ValueError, match=match):
    prepare(params, data_dir)


def stored_arrays(builder, split="train"):
  """stem -> (image, label [H, W]) as training reads them."""
  return {s: (np.asarray(e["image"]), np.asarray(e["label"])[..., 0])
          for s, e in by_stem(builder, split).items()}
