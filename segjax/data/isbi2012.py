"""ISBI 2012 EM membrane segmentation, prepared from a manual directory.

Expected layout (as in the U-Net repository's copy of the challenge data):

  <manual_dir>/train/image/N.png  grayscale images, N = 0, 1, ...
  <manual_dir>/train/label/N.png  label maps: 0 = membrane, 255 = cell
  <manual_dir>/test/N.png         grayscale images without labels

Labels are remapped at prepare time to class ids 0 (membrane) and 1 (cell).
The unlabelled test images get a label map filled with IGNORE_LABEL so they are
valid examples that add no pixels to losses or metrics.
"""

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from segjax.data import builder
from segjax.data import png
from segjax.data import spec

CLASS_NAMES = ("membrane", "cell")
# Same look as the source label maps: dark membranes, bright cells.
PALETTE = ((0, 0, 0), (255, 255, 255))
IGNORE_LABEL = 255
# Source label value -> class id.
SOURCE_TO_CLASS = {0: 0, 255: 1}
LAYOUT = "train/image/N.png, train/label/N.png and test/N.png"
MANUAL_DIR_FLAG = "--config.dataset.manual_dir"
_TITLE = "ISBI 2012"

_FIX = (f"pass {MANUAL_DIR_FLAG}=/path/to/isbi2012-membrane laid out as "
        f"{LAYOUT} (or manual_dir= to segjax.data.datasets.get_builder).")


def _numeric_key(path: pathlib.Path):
  # Files are named 0.png .. 29.png: sort 2 before 10.
  return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


def _pngs(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(folder.glob("*.png"), key=_numeric_key)


def check_manual_dir(manual_dir) -> pathlib.Path:
  """Checks the manual directory's layout.

  Args:
    manual_dir: directory holding the ISBI 2012 data, or None.

  Returns:
    The directory as a Path.

  Raises:
    ValueError: naming what is missing and how to fix it.
  """
  root = builder.manual_root(manual_dir, _TITLE, _FIX)
  for sub in ("train/image", "train/label", "test"):
    folder = root / sub
    if not folder.is_dir():
      raise ValueError(
          f"ISBI 2012 manual_dir {root} has no {sub}/ folder: {_FIX}")
    if not _pngs(folder):
      raise ValueError(
          f"ISBI 2012 folder {folder} holds no .png files: {_FIX}")
  images = {p.name for p in _pngs(root / "train/image")}
  labels = {p.name for p in _pngs(root / "train/label")}
  if images != labels:
    unpaired = sorted(images ^ labels)[:5]
    raise ValueError(
        f"ISBI 2012 manual_dir {root}: train/image and train/label do not "
        f"pair up (e.g. {unpaired} is in only one of them); every "
        "train/image/N.png needs a train/label/N.png.")
  return root


def read_label(path) -> np.ndarray:
  """Reads a source label map and maps it to class ids.

  Args:
    path: a train/label/N.png file.

  Returns:
    uint8 [H, W] class ids (0 = membrane, 1 = cell).

  Raises:
    ValueError: if a value other than 0 or 255 occurs.
  """
  with png.open_image(path, "ISBI 2012 label") as img:
    source = np.asarray(png.upright(img))  # EXIF orientation, as its image's
  if source.ndim != 2:
    raise ValueError(
        f"ISBI 2012 label {path} has shape {source.shape}; expected a "
        "single-channel 8-bit image.")
  values = np.unique(source)
  bad = [int(v) for v in values if int(v) not in SOURCE_TO_CLASS]
  if bad:
    raise ValueError(
        f"ISBI 2012 label {path} contains value {bad[0]} (all unexpected "
        f"values: {bad[:10]}); expected only 0 (membrane) and 255 (cell).")
  lut = np.zeros(256, np.uint8)
  for value, cls in SOURCE_TO_CLASS.items():
    lut[value] = cls
  return lut[source]


class Isbi2012Membrane(tfds.core.GeneratorBasedBuilder):
  """ISBI 2012 EM membranes: 30 labelled train, 30 unlabelled test images."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place the ISBI 2012 challenge data (e.g. from the U-Net repository's "
      f"data/membrane folder) in the manual dir laid out as {LAYOUT}.")

  def _info(self) -> tfds.core.DatasetInfo:
    # Records keep the numeric file order: record i is N.png with N = i.
    return builder.segmentation_info(
        self, num_channels=1, image_format="png",
        description=(
            "ISBI 2012 EM segmentation challenge (serial-section TEM of the "
            "Drosophila ventral nerve cord). Labels: 0 = membrane, 1 = cell; "
            f"the unlabelled test split has labels filled with {IGNORE_LABEL} "
            "(ignore)."),
        homepage="https://imagej.net/events/isbi-2012-segmentation-challenge",
        citation=(
            "Arganda-Carreras et al., Crowdsourcing the creation of image "
            "segmentation algorithms for connectomics, Frontiers in "
            "Neuroanatomy 2015."))

  def _split_generators(self, dl_manager):
    root = check_manual_dir(builder.manual_dir_of(dl_manager, _TITLE, _FIX))
    return {
        "train": self._generate_examples(root / "train/image", labelled=True),
        "test": self._generate_examples(root / "test", labelled=False),
    }

  def _generate_examples(self, folder: pathlib.Path, labelled: bool):
    for key, path in enumerate(_pngs(folder)):
      image, shape = png.read_image(path, "L")
      if labelled:
        label_path = folder.parent / "label" / path.name
        label = read_label(label_path)
        builder.check_same_size(_TITLE, label_path, label.shape, path, shape)
      else:
        label = np.full(shape, IGNORE_LABEL, np.uint8)
      yield key, {"image": image, "label": png.encode(label), "filename": path.stem}


SPEC = spec.BuilderSpec(name="isbi2012", builder=Isbi2012Membrane, class_names=CLASS_NAMES, palette=PALETTE,
                        ignore_label=IGNORE_LABEL, num_channels=1, splits=("train", "test"),
                        check_manual_dir=check_manual_dir)
