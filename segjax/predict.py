"""Segmenting image files (what predict.py does): read, run a Segmenter (any inference mode, ensembles),
write palette label PNGs, overlays and optionally float16 probabilities streamed to disk."""

from __future__ import annotations

import pathlib
import sys
import warnings
from typing import Sequence

import numpy as np
import tqdm
from PIL import Image

from segjax import inference, viz
from segjax.data import datasets, png
from segjax.ops import conv as conv_lib

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


def list_inputs(path: str | pathlib.Path) -> list[pathlib.Path]:
  """The image files of `path` (a file, or a directory's files with an image suffix, sorted).

  Raises:
    FileNotFoundError: `path` does not exist, or is a directory without images.
  """
  path = pathlib.Path(path)
  if path.is_file():
    return [path]
  if not path.is_dir():
    raise FileNotFoundError(f"--input={path} does not exist (from {pathlib.Path.cwd()}): give an image file or a "
                            "directory of images.")
  files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
  if not files:
    raise FileNotFoundError(f"--input={path} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
  return files


def read_image(path: pathlib.Path, num_channels: int) -> np.ndarray:
  """[H, W, C] uint8 pixels of `path`, checked against the model's channel count.

  Raises:
    ValueError: unreadable, truncated or too large, or with another channel count, naming the file and the fix.
  """
  with png.open_image(path, "input image", "re-export it, or remove it from --input") as img:
    if img.mode == "P":  # palette colours are what the image shows
      img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode not in ("L", "RGB", "RGBA", "LA"):
      raise ValueError(f"input image {path} has PIL mode {img.mode!r} (e.g. 16-bit or CMYK): convert it to 8-bit "
                       f"{'RGB' if num_channels == 3 else 'grayscale (L)'}.")
    array = np.asarray(img)
  array = array[..., None] if array.ndim == 2 else array
  if array.shape[-1] != num_channels:
    kind = {1: "grayscale", 2: "grayscale + alpha", 3: "RGB", 4: "RGBA"}[array.shape[-1]]
    fix = "drop the alpha channel" if array.shape[-1] in (2, 4) else "convert it"
    raise ValueError(f"input image {path} is {kind} ({array.shape[-1]} channels) but the model takes "
                     f"{num_channels}: {fix} (e.g. PIL's img.convert('{'RGB' if num_channels == 3 else 'L'}')).")
  return array


def write_label_png(path: pathlib.Path, labels: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
  """Palette ("P") PNG: pixel value = class id, displayed in `palette`."""
  img = Image.fromarray(labels.astype(np.uint8))  # mode L; putpalette makes it P without touching the values
  flat = [c for colour in palette for c in colour]
  img.putpalette(flat + [0] * (768 - len(flat)))
  img.save(path)


def write_overlay(path: pathlib.Path, image: np.ndarray, labels: np.ndarray, palette, rows: int = 1024) -> None:
  """Prediction over the image, computed in row bands (a full-size float blend of a 16k image is gigabytes)."""
  out = np.empty((*labels.shape, 3), np.uint8)
  for r in range(0, labels.shape[0], rows):
    out[r:r + rows] = viz.overlay(image[r:r + rows], viz.colorize(labels[r:r + rows], palette))
  Image.fromarray(out).save(path)


def run(config, workdir: str, inputs: str, output: str, *, members: Sequence[tuple] = (),
        checkpoint_step: int | None = None, probabilities: bool = False, max_pixels: int = 2**28,
        progress: bool = True) -> list[tuple[pathlib.Path, str]]:
  """What predict.py does. Returns the (file, reason) of every image that failed (those are skipped).

  Raises:
    FileNotFoundError: a missing --input or workdir without checkpoints.
    ValueError: a bad recipe, inference block or member.
  """

  Image.MAX_IMAGE_PIXELS = max_pixels
  warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # up to max_pixels is what was asked for
  files = list_inputs(inputs)
  params = inference.InferenceParams.from_config(config)
  spec = datasets.get_spec(config.dataset)
  if spec.num_classes > 256:
    raise ValueError(f"{spec.name} has {spec.num_classes} classes: a palette PNG holds at most 256.")
  loaded = [inference.load_member(config, workdir, checkpoint_step)]
  for member_config, member_workdir, member_step in members:
    inference.check_same_classes(spec, member_workdir, datasets.get_spec(member_config.dataset))
    loaded.append(inference.load_member(member_config, member_workdir, member_step))
  segmenter = inference.Segmenter(loaded, spec.num_classes, params,
                                  conv_backend=conv_lib.resolve_backend(config.conv_backend, num_devices=1))
  out_dir = pathlib.Path(output)
  out_dir.mkdir(parents=True, exist_ok=True)
  failed = []
  for path in tqdm.tqdm(files, desc="predict", disable=not progress):
    try:
      image = read_image(path, spec.num_channels)
    except ValueError as e:
      tqdm.tqdm.write(f"skipped: {e}", file=sys.stderr)  # above the progress bar, not through it
      failed.append((path, str(e)))
      continue
    probs = None
    if probabilities:
      probs = np.lib.format.open_memmap(out_dir / f"{path.stem}_probs.npy", mode="w+", dtype=np.float16,
                                        shape=(*image.shape[:2], spec.num_classes))
    labels = segmenter.predict_image(image, probs_out=probs)
    if probs is not None:
      probs.flush()
      del probs
    write_label_png(out_dir / f"{path.stem}.png", labels, spec.palette)
    write_overlay(out_dir / f"{path.stem}_overlay.png", image, labels, spec.palette)
  done = len(files) - len(failed)
  print(f"Wrote {done} of {len(files)} images to {out_dir}" + (f"; {len(failed)} failed: "
        + ", ".join(str(p) for p, _ in failed) if failed else ""))
  return failed
