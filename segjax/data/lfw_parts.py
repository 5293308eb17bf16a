"""LFW Part Labels (hair / skin / background), prepared from a manual directory.

The Part Labels database (http://vis-www.cs.umass.edu/lfw/part_labels/) labels
2927 funneled LFW faces. Expected layout, as the official files extract:

  <manual_dir>/lfw_funneled/<Name>/<Name>_<NNNN>.jpg     from lfw-funneled.tgz
  <manual_dir>/parts_lfw_funneled_gt_images/<Name>_<NNNN>.ppm
                                        from parts_lfw_funneled_gt_images.tgz
  <manual_dir>/parts_train.txt, parts_validation.txt, parts_test.txt

Each list line is "<Name> <N>", e.g. "George_W_Bush 10" for
George_W_Bush_0010 (1500 / 500 / 927 lines). A folder one level deeper, as an
archive tool that extracts into a folder named after the archive leaves it
(lfw-funneled/lfw_funneled/), is found too.

The label maps are colour coded, red = hair, green = skin, blue = background
(Kae et al., CVPR 2013, Figure 1). They are decoded by the dominant channel and
stored as class ids 0 = background, 1 = hair, 2 = skin. There is no ignore
label: every pixel belongs to one of the three classes, and a pixel without a
clearly dominant channel is an error naming the file. The JPEG bytes are stored
unchanged.
"""

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from segjax.data import builder
from segjax.data import png
from segjax.data import spec

# Background first so that id 0 means "not the object", as in most datasets.
CLASS_NAMES = ("background", "hair", "skin")
# The dataset's own colours.
PALETTE = ((0, 0, 255), (255, 0, 0), (0, 255, 0))
IGNORE_LABEL = None
NUM_CHANNELS = 3
# Colour channel (R, G, B) -> class id.
CHANNEL_TO_CLASS = (1, 2, 0)
# A label pixel's largest channel must exceed its second largest by this much.
# The official maps hold pure colours; the margin accepts maps that were
# re-encoded with small colour errors but rejects grey, black or mixed pixels.
DOMINANCE_MARGIN = 64
IMAGES_FOLDER = "lfw_funneled"
LABELS_FOLDER = "parts_lfw_funneled_gt_images"
# Folder -> the archive it comes out of.
ARCHIVES = {
    IMAGES_FOLDER: "lfw-funneled.tgz",
    LABELS_FOLDER: "parts_lfw_funneled_gt_images.tgz",
}
# tfds split name -> split list.
SPLIT_LISTS = {
    "train": "parts_train.txt",
    "validation": "parts_validation.txt",
    "test": "parts_test.txt",
}
LAYOUT = (f"{IMAGES_FOLDER}/, {LABELS_FOLDER}/ and "
          f"{', '.join(SPLIT_LISTS.values())}")
MANUAL_DIR_FLAG = "--config.dataset.manual_dir"
_TITLE = "LFW Part Labels"
_FIX = (f"pass {MANUAL_DIR_FLAG}=/path/to/lfw_parts laid out as {LAYOUT} "
        "(extract lfw-funneled.tgz and parts_lfw_funneled_gt_images.tgz into "
        "it; the lists come from vis-www.cs.umass.edu/lfw/part_labels/), or "
        "manual_dir= to segjax.data.datasets.get_builder.")


def find_folder(root: pathlib.Path, name: str) -> pathlib.Path | None:
  """`root/name`, or the same one level deeper; None if absent.

  Args:
    root: the manual directory.
    name: IMAGES_FOLDER or LABELS_FOLDER.

  Returns:
    The folder, or None.
  """
  archive_folder = ARCHIVES[name].removesuffix(".tgz")
  # Deeper first: parts_lfw_funneled_gt_images/ may be the archive's folder
  # with the real one inside.
  for folder in (root / archive_folder / name, root / name / name,
                 root / name):
    if folder.is_dir():
      return folder
  return None


def check_manual_dir(manual_dir) -> pathlib.Path:
  """Checks the manual directory's layout.

  Args:
    manual_dir: directory holding the Part Labels data, or None.

  Returns:
    The directory as a Path.

  Raises:
    ValueError: naming what is missing and how to fix it.
  """
  root = builder.manual_root(manual_dir, _TITLE, _FIX)
  for name, archive in ARCHIVES.items():
    if find_folder(root, name) is None:
      hint = builder.archive_hint(
          root, archive, f"tar xzf {root / archive} -C {root}")
      raise ValueError(
          f"LFW Part Labels manual_dir {root} has no {name}/ folder.{hint} "
          f"{_FIX}")
  for list_name in SPLIT_LISTS.values():
    if not (root / list_name).is_file():
      raise ValueError(
          f"LFW Part Labels manual_dir {root} has no split list {list_name}: "
          f"{_FIX}")
  return root


def list_pairs(root: pathlib.Path, split: str):
  """(image, label) paths of a split, in split-list order.

  Args:
    root: a checked manual directory.
    split: "train", "validation" or "test".

  Returns:
    A list of (image_path, label_path).

  Raises:
    ValueError: for a malformed line or a listed face without image or label.
  """
  images = find_folder(root, IMAGES_FOLDER)
  labels = find_folder(root, LABELS_FOLDER)
  list_path = root / SPLIT_LISTS[split]
  pairs = []
  for line_no, line in enumerate(list_path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    parts = line.split()
    if len(parts) != 2 or not parts[1].isdigit():
      raise ValueError(
          f"LFW Part Labels split list {list_path}, line {line_no}: expected "
          f"'<Person_Name> <image number>', got {line!r}.")
    person, number = parts
    stem = f"{person}_{int(number):04d}"
    pair = (images / person / f"{stem}.jpg", labels / f"{stem}.ppm")
    for path in pair:
      if not path.is_file():
        raise ValueError(
            f"LFW Part Labels split list {list_path}, line {line_no} "
            f"({line.strip()!r}), names {path}, which does not exist: check "
            "that both archives are fully extracted.")
    pairs.append(pair)
  if not pairs:
    raise ValueError(f"LFW Part Labels split list {list_path} is empty.")
  return pairs


def decode_label(rgb: np.ndarray, path) -> np.ndarray:
  """Class ids of a colour-coded label map.

  Args:
    rgb: uint8 [H, W, 3] label colours.
    path: the file they come from, for error messages.

  Returns:
    uint8 [H, W] class ids (0 = background, 1 = hair, 2 = skin).

  Raises:
    ValueError: if a pixel has no clearly dominant channel.
  """
  ranked = np.sort(rgb.astype(np.int16), axis=-1)
  unclear = ranked[..., 2] - ranked[..., 1] < DOMINANCE_MARGIN
  if unclear.any():
    row, col = (int(i) for i in np.argwhere(unclear)[0])
    raise ValueError(
        f"LFW Part Labels label {path} has {int(unclear.sum())} pixels "
        f"without a dominant colour channel, e.g. RGB "
        f"{tuple(int(v) for v in rgb[row, col])} at row {row}, column {col}; "
        "expected red (hair), green (skin) or blue (background).")
  return np.asarray(CHANNEL_TO_CLASS, np.uint8)[np.argmax(rgb, axis=-1)]


class LfwParts(tfds.core.GeneratorBasedBuilder):
  """LFW Part Labels: 2927 funneled faces labelled hair / skin / background."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "From http://vis-www.cs.umass.edu/lfw/part_labels/ get "
      "lfw-funneled.tgz, parts_lfw_funneled_gt_images.tgz and the three "
      "parts_*.txt lists; extract both archives into the manual dir so that "
      f"it holds {LAYOUT}.")

  def _info(self) -> tfds.core.DatasetInfo:
    # Records keep the split-list order: record i is line i of
    # parts_<split>.txt.
    return builder.segmentation_info(
        self, num_channels=NUM_CHANNELS, image_format="jpeg",
        description=(
            "LFW Part Labels: 250x250 funneled LFW faces, labels 0 = "
            "background, 1 = hair, 2 = skin; no ignore label."),
        homepage="http://vis-www.cs.umass.edu/lfw/part_labels/",
        citation=(
            "Kae, Sohn, Lee, Learned-Miller, Augmenting CRFs with Boltzmann "
            "Machine Shape Priors for Image Labeling, CVPR 2013."))

  def _split_generators(self, dl_manager):
    root = check_manual_dir(builder.manual_dir_of(dl_manager, _TITLE, _FIX))
    # Build the pair lists now so layout errors surface before any writing.
    return {split: self._generate_examples(list_pairs(root, split))
            for split in SPLIT_LISTS}

  def _generate_examples(self, pairs):
    for key, (image_path, label_path) in enumerate(pairs):
      image, shape = png.read_jpeg(image_path)
      with png.open_image(label_path, "LFW parts label") as img:
        colours = np.asarray(png.upright(img).convert("RGB"))
      builder.check_same_size(
          _TITLE, label_path, colours.shape[:2], image_path, shape)
      label = decode_label(colours, label_path)
      yield key, {"image": image, "label": png.encode(label),
                  "filename": image_path.stem}


SPEC = spec.BuilderSpec(name="lfw_parts", builder=LfwParts, class_names=CLASS_NAMES, palette=PALETTE,
                        ignore_label=IGNORE_LABEL, num_channels=NUM_CHANNELS, splits=tuple(SPLIT_LISTS),
                        check_manual_dir=check_manual_dir)
