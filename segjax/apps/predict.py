"""Segmenting image files (what predict.py does): read, run a Segmenter (any inference mode, ensembles),
write palette label PNGs, overlays and optionally float16 probabilities streamed to disk."""

from __future__ import annotations

import os
import pathlib
import sys
import warnings
from typing import Sequence

import numpy as np
import tqdm
from PIL import Image

from segjax import experiment, viz
from segjax.evaluation import inference
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
  """[H, W, C] uint8 pixels of `path` as the model sees them, converted exactly as training preparation does.

  `png.to_channels`, shared with the folder dataset: EXIF orientation applied, palette -> colours, CMYK -> RGB,
  alpha dropped, grey <-> RGB.

  Raises:
    ValueError: unreadable, truncated or too large (naming --max_pixels), or 16-bit/float, naming the file and
      the fix.
  """
  with png.open_image(path, "input image", "re-export it, or remove it from --input",
                      pixels_flag="--max_pixels") as img:
    array = png.to_channels(img, num_channels, "input image", path)
  return array[..., None] if array.ndim == 2 else array


def write_label_png(path, labels: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
  """Palette ("P") PNG: pixel value = class id, displayed in `palette`."""
  img = Image.fromarray(labels.astype(np.uint8))  # mode L; putpalette makes it P without touching the values
  flat = [c for colour in palette for c in colour]
  img.putpalette(flat + [0] * (768 - len(flat)))
  img.save(path, format="PNG")


def write_overlay(path, image: np.ndarray, labels: np.ndarray, palette, rows: int = 1024) -> None:
  """Prediction over the image, computed in row bands (a full-size float blend of a 16k image is gigabytes)."""
  out = np.empty((*labels.shape, 3), np.uint8)
  for r in range(0, labels.shape[0], rows):
    out[r:r + rows] = viz.overlay(image[r:r + rows], viz.colorize(labels[r:r + rows], palette))
  Image.fromarray(out).save(path, format="PNG")


PROBS_SUFFIX = "_probs.npy"


def _inode(path: pathlib.Path) -> tuple[int, int] | None:
  try:
    stat = path.stat()
  except OSError:
    return None
  return stat.st_dev, stat.st_ino


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
  try:
    return a.exists() and b.exists() and a.samefile(b)
  except OSError:
    return False


def plan_outputs(files: Sequence[pathlib.Path], out_dir: pathlib.Path, *, probabilities: bool = False,
                 overwrite: bool = False) -> dict[pathlib.Path, dict[str, pathlib.Path]]:
  """input file -> {"labels", "overlay"[, "probs"]: output path}, checked before anything is written.

  Outputs are named by the input's stem (`x.jpg` -> `x.png`, `x_overlay.png`); inputs that share a stem
  (`x.png` and `x.jpg`) are named by their whole file name instead (`x.png.png`, `x.jpg.png`, ...), so no two
  outputs of a run are one file.

  Raises:
    ValueError: an output would be one of the input files (whatever --overwrite says), two outputs would still be
      one file, or outputs exist already and `overwrite` is off; each naming the files and the fix.
  """
  stems: dict[str, int] = {}
  for path in files:
    stems[path.stem] = stems.get(path.stem, 0) + 1
  kinds = {"labels": ".png", "overlay": "_overlay.png", **({"probs": PROBS_SUFFIX} if probabilities else {})}
  plan = {}
  for path in files:
    base = path.stem if stems[path.stem] == 1 else path.name
    plan[path] = {kind: out_dir / f"{base}{suffix}" for kind, suffix in kinds.items()}
  outputs = [out for outs in plan.values() for out in outs.values()]
  resolved = {}
  for out in outputs:
    key = os.path.normcase(os.path.abspath(out))
    if key in resolved:
      raise ValueError(f"predict would write {out} twice (for {resolved[key]} and another input): rename one of "
                       "the inputs.")
    resolved[key] = out
  inputs = {os.path.normcase(os.path.abspath(p)): p for p in files}
  inodes = {_inode(p): p for p in files}
  inodes.pop(None, None)
  for source, outs in plan.items():
    for out in outs.values():
      # By name, or by inode: an output that exists as a symlink or hard link to an input.
      clash = inputs.get(os.path.normcase(os.path.abspath(out))) or inodes.get(_inode(out))
      if clash is not None:
        raise ValueError(f"predict would write {out} (for {source}) over the input image {clash}: give an --output "
                         f"directory apart from the inputs, e.g. --output={out_dir.parent / (out_dir.name + '_pred')}."
                         " Inputs are never overwritten, --overwrite included.")
  if not overwrite:
    existing = [out for out in outputs if out.exists() or out.is_symlink()]
    if existing:
      shown = ", ".join(str(p) for p in existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5
                                                          else "")
      raise ValueError(f"{len(existing)} output file{'s' * (len(existing) != 1)} exist already in {out_dir} "
                       f"({shown}): pass --overwrite to replace them, or give another --output directory.")
  return plan


def check_output_dir(inputs: str, output: str) -> pathlib.Path:
  """--output as a Path, refused when it is a file or the --input directory (semantic and instance predict)."""
  out_dir = pathlib.Path(output)
  if out_dir.exists() and not out_dir.is_dir():
    raise ValueError(f"--output={output} is a file, not a directory: give a directory for the label maps and "
                     "overlays (it is created if missing).")
  input_dir = pathlib.Path(inputs)
  if input_dir.is_dir() and (_same_file(out_dir, input_dir) or os.path.abspath(out_dir) == os.path.abspath(input_dir)):
    # Its label maps and overlays would sit among the photos, one of them over x.png for an input x.jpg, and the
    # next run would take them as inputs.
    raise ValueError(f"--output={output} is the --input directory: give another directory, e.g. "
                     f"--output={input_dir.absolute().parent / (input_dir.absolute().name + '_pred')}.")
  return out_dir


def _open_output(path: pathlib.Path, overwrite: bool):
  """A binary file to write `path` through: created exclusively unless `overwrite`, so a file that appeared after
  the plan was checked is not replaced either."""
  return path.open("wb" if overwrite else "xb")


def run(config, workdir: str, inputs: str, output: str, *, members: Sequence[tuple] = (),
        checkpoint_step: int | None = None, probabilities: bool = False, max_pixels: int = 2**28,
        overwrite: bool = False, progress: bool = True) -> list[tuple[pathlib.Path, str]]:
  """What predict.py does. Returns the (file, reason) of every image that failed (those are skipped).

  Nothing is written before every output path is known to be safe (`plan_outputs`): an input is never
  overwritten, two inputs never write one file, and existing outputs are replaced only with `overwrite`.

  Raises:
    FileNotFoundError: a missing --input or workdir without checkpoints.
    ValueError: a bad recipe, inference block or member; an unsafe --output (see `plan_outputs`).
  """

  Image.MAX_IMAGE_PIXELS = max_pixels
  warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # up to max_pixels is what was asked for
  if config.task in ("instance", "panoptic"):
    raise ValueError(f"predict.run segments with a semantic recipe; a {config.task} recipe's predictions are written "
                     f"by segjax.apps.predict_{config.task}.run (predict.py picks it by config.task).")
  files = list_inputs(inputs)
  out_dir = check_output_dir(inputs, output)
  plan = plan_outputs(files, out_dir, probabilities=probabilities, overwrite=overwrite)
  params = inference.InferenceParams.from_config(config)
  spec = datasets.get_spec(config.dataset)
  if spec.num_classes > 256:
    raise ValueError(f"{spec.name} has {spec.num_classes} classes: a palette PNG holds at most 256.")
  loaded = [experiment.load_member(config, workdir, checkpoint_step)]
  for member_config, member_workdir, member_step in members:
    inference.check_same_classes(spec, member_workdir, datasets.get_spec(member_config.dataset))
    loaded.append(experiment.load_member(member_config, member_workdir, member_step))
  segmenter = inference.Segmenter(loaded, spec.num_classes, params,
                                  conv_backend=conv_lib.resolve_backend(config.conv_backend, num_devices=1))
  out_dir.mkdir(parents=True, exist_ok=True)
  failed, written = [], 0
  for path in tqdm.tqdm(files, desc="predict", disable=not progress):
    outs = plan[path]
    try:
      image = read_image(path, spec.num_channels)
    except ValueError as e:
      tqdm.tqdm.write(f"skipped: {e}", file=sys.stderr)  # above the progress bar, not through it
      failed.append((path, str(e)))
      continue
    try:
      probs = None
      if probabilities:
        _open_output(outs["probs"], overwrite).close()  # claims the name (exclusively unless overwrite)
        probs = np.lib.format.open_memmap(outs["probs"], mode="w+", dtype=np.float16,
                                          shape=(*image.shape[:2], spec.num_classes))
      labels = segmenter.predict_image(image, probs_out=probs)
      if probs is not None:
        probs.flush()
        del probs
      with _open_output(outs["labels"], overwrite) as f:
        write_label_png(f, labels, spec.palette)
      with _open_output(outs["overlay"], overwrite) as f:
        write_overlay(f, image, labels, spec.palette)
    except FileExistsError as e:
      message = f"{e.filename} appeared while predict ran: not replaced (pass --overwrite to replace it)"
      tqdm.tqdm.write(f"skipped: {path}: {message}", file=sys.stderr)
      failed.append((path, message))
      continue
    written += 1
  print(f"Wrote {written} of {len(files)} images to {out_dir}" + (f"; {len(failed)} failed: "
        + ", ".join(str(p) for p, _ in failed) if failed else ""))
  return failed
