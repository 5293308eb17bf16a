"""PASCAL VOC 2012 segmentation, prepared from a manual directory.

tfds' catalog `voc` holds the detection annotations only; this builder reads
the segmentation ones. Expected layout, as VOCtrainval_11-May-2012.tar
extracts (manual_dir may also be VOCdevkit/ or VOC2012/ itself):

  <manual_dir>/VOCdevkit/VOC2012/JPEGImages/<name>.jpg
  <manual_dir>/VOCdevkit/VOC2012/SegmentationClass/<name>.png
  <manual_dir>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt

Splits "train" (1464 images) and "validation" (val.txt, 1449). When the SBD
augmented labels are there too, a "train_aug" split (10582 images) is added:

  VOC2012/SegmentationClassAug/<name>.png
  VOC2012/ImageSets/Segmentation/train_aug.txt or trainaug.txt
  (or VOC2012/train_aug.txt)

as DeepLab's SegmentationClassAug.zip, mmsegmentation's voc_aug.py and
DeepLabV3Plus-Pytorch lay them out. List lines are names ("2007_000032") or
DeepLab's "/JPEGImages/<name>.jpg /SegmentationClassAug/<name>.png" pairs;
only the name is used. The split set is fixed when the dataset is prepared: to
add train_aug later, delete the prepared copy and prepare again.

Labels are the palette indices of the "P" mode PNGs (or the values of
grey-scale ones): 0 = background, 1-20 the VOC classes, 255 = void (object
borders and difficult regions, IGNORE_LABEL), kept in the data as is. The JPEG
bytes are stored unchanged.
"""

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from segjax.data import builder
from segjax.data import png
from segjax.data import spec

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus",
    "car", "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
    "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# The VOC devkit's colour map (VOCdevkit/VOCcode/VOClabelcolormap.m): the bits
# of the class id, three at a time, fill R, G and B from the top bit down.
PALETTE = (
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128),
    (128, 0, 128), (0, 128, 128), (128, 128, 128), (64, 0, 0), (192, 0, 0),
    (64, 128, 0), (192, 128, 0), (64, 0, 128), (192, 0, 128), (64, 128, 128),
    (192, 128, 128), (0, 64, 0), (128, 64, 0), (0, 192, 0), (128, 192, 0),
    (0, 64, 128),
)
# The same map's colour for id 255 (void); not a class, so not in PALETTE.
VOID_COLOUR = (224, 224, 192)
IGNORE_LABEL = 255
NUM_CHANNELS = 3
# tfds split name -> list under ImageSets/Segmentation/.
SPLIT_LISTS = {"train": "train.txt", "validation": "val.txt"}
REQUIRED_SPLITS = tuple(SPLIT_LISTS)
AUG_SPLIT = "train_aug"
AUG_FOLDER = "SegmentationClassAug"
# Where the train_aug list is looked for, relative to VOC2012/, in this order.
AUG_LISTS = ("ImageSets/Segmentation/train_aug.txt",
             "ImageSets/Segmentation/trainaug.txt", "train_aug.txt")
ARCHIVE = "VOCtrainval_11-May-2012.tar"
LAYOUT = ("VOCdevkit/VOC2012/ with JPEGImages/, SegmentationClass/ and "
          "ImageSets/Segmentation/{train,val}.txt")
MANUAL_DIR_FLAG = "--config.dataset.manual_dir"
_TITLE = "PASCAL VOC 2012"
_FIX = (f"pass {MANUAL_DIR_FLAG}=/path/to/voc holding {LAYOUT} (extract "
        f"{ARCHIVE} into it), or manual_dir= to "
        "segjax.data.datasets.get_builder.")


def find_voc_root(root: pathlib.Path) -> pathlib.Path | None:
  """The VOC2012 folder: `root` itself, root/VOC2012 or root/VOCdevkit/VOC2012.

  Args:
    root: the manual directory.

  Returns:
    The first candidate with a JPEGImages/, SegmentationClass/ or ImageSets/
    folder, or None.
  """
  for voc in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
    if any((voc / sub).is_dir()
           for sub in ("JPEGImages", "SegmentationClass", "ImageSets")):
      return voc
  return None


def find_aug_list(voc: pathlib.Path) -> pathlib.Path | None:
  """The train_aug list under a VOC2012 folder, or None."""
  for name in AUG_LISTS:
    if (voc / name).is_file():
      return voc / name
  return None


def check_manual_dir(manual_dir) -> pathlib.Path:
  """Checks the manual directory's layout.

  Args:
    manual_dir: directory holding VOCdevkit/VOC2012 (or VOCdevkit/ or
      VOC2012/ itself), or None.

  Returns:
    The VOC2012 folder as a Path.

  Raises:
    ValueError: naming what is missing and how to fix it.
  """
  root = builder.manual_root(manual_dir, _TITLE, _FIX)
  voc = find_voc_root(root)
  if voc is None:
    hint = builder.archive_hint(
        root, ARCHIVE, f"tar xf {root / ARCHIVE} -C {root}")
    raise ValueError(
        f"PASCAL VOC 2012 manual_dir {root} holds no VOC2012 folder (looked "
        f"at {root}, {root / 'VOC2012'} and {root / 'VOCdevkit/VOC2012'})."
        f"{hint} {_FIX}")
  for folder in ("JPEGImages", "SegmentationClass"):
    if not (voc / folder).is_dir():
      raise ValueError(
          f"PASCAL VOC 2012 folder {voc} has no {folder}/ folder: {_FIX}")
  for list_name in SPLIT_LISTS.values():
    if not (voc / "ImageSets/Segmentation" / list_name).is_file():
      raise ValueError(
          f"PASCAL VOC 2012 folder {voc} has no "
          f"ImageSets/Segmentation/{list_name}: {_FIX}")
  # Half an augmented set is more likely a mistake than a choice, and the
  # split set cannot change once prepared: say so now.
  has_folder, aug_list = (voc / AUG_FOLDER).is_dir(), find_aug_list(voc)
  if has_folder and aug_list is None:
    raise ValueError(
        f"PASCAL VOC 2012 folder {voc} has {AUG_FOLDER}/ but no train_aug "
        f"list (looked for {', '.join(AUG_LISTS)}): add the 10582-name list "
        f"to get a {AUG_SPLIT!r} split, or move {AUG_FOLDER}/ away.")
  if aug_list is not None and not has_folder:
    raise ValueError(
        f"PASCAL VOC 2012 folder {voc} has the train_aug list {aug_list} but "
        f"no {AUG_FOLDER}/ folder: add the SBD labels as {AUG_FOLDER}/ or "
        "move the list away.")
  return voc


def available_splits(voc: pathlib.Path) -> list[str]:
  """The splits a checked VOC2012 folder provides."""
  extra = [AUG_SPLIT] if find_aug_list(voc) is not None else []
  return list(REQUIRED_SPLITS) + extra


def _names(list_path: pathlib.Path):
  """(line number, line, name) of each non-empty line of a split list."""
  for line_no, line in enumerate(list_path.read_text().splitlines(), 1):
    parts = line.split()
    if not parts:
      continue
    if len(parts) > 2:
      raise ValueError(
          f"PASCAL VOC 2012 split list {list_path}, line {line_no}: expected "
          f"'<name>' or '<image path> <label path>', got {line!r}.")
    # "/JPEGImages/2007_000032.jpg" (DeepLab lists) or "2007_000032".
    name = pathlib.PurePosixPath(parts[0]).name
    if name.lower().endswith(".jpg"):
      name = name[:-len(".jpg")]
    yield line_no, line, name


def list_examples(voc: pathlib.Path, split: str):
  """(image, label) paths of a split, in split-list order.

  Args:
    voc: a checked VOC2012 folder.
    split: "train", "validation" or "train_aug".

  Returns:
    A list of (image_path, label_path).

  Raises:
    ValueError: for a malformed line or a listed name without image or label.
  """
  if split == AUG_SPLIT:
    list_path = find_aug_list(voc)
  else:
    list_path = voc / "ImageSets/Segmentation" / SPLIT_LISTS[split]
  pairs = []
  for line_no, line, name in _names(list_path):
    image = voc / "JPEGImages" / f"{name}.jpg"
    label = voc / "SegmentationClass" / f"{name}.png"
    if split == AUG_SPLIT and not label.is_file():
      # The official VOC label wins where there is one: mmsegmentation's
      # SegmentationClassAug holds SBD's version for VOC train images (and it
      # trains on SegmentationClass for those); DeepLab's zip copies the VOC
      # labels over SBD's. Either way VOC's own label is the one used.
      label = voc / AUG_FOLDER / f"{name}.png"
    for path in (image, label):
      if not path.is_file():
        raise ValueError(
            f"PASCAL VOC 2012 split list {list_path}, line {line_no} "
            f"({line.strip()!r}), names {path}, which does not exist.")
    pairs.append((image, label))
  if not pairs:
    raise ValueError(f"PASCAL VOC 2012 split list {list_path} is empty.")
  return pairs


def read_label(path: pathlib.Path) -> tuple[bytes, np.ndarray]:
  """PNG bytes of a label map and its ids.

  Args:
    path: a SegmentationClass/ or SegmentationClassAug/ PNG.

  Returns:
    (PNG bytes of the single-channel id map, uint8 [H, W] ids).

  Raises:
    ValueError: for a colour (RGB) map or an id that is neither 0-20 nor 255.
  """
  with png.open_image(path, "PASCAL VOC 2012 label") as img:
    # Palette indices are the ids; the RGB colours are only for display.
    if img.mode not in ("P", "L"):
      raise ValueError(
          f"PASCAL VOC 2012 label {path} has mode {img.mode}; expected a "
          "palette ('P') PNG as in SegmentationClass/, or a grey-scale ('L') "
          "map of class ids. A colour-converted copy lost the ids: use the "
          "original file.")
    # An EXIF orientation is applied, as to its image (png.read_jpeg).
    as_is = img.format == "PNG" and img.mode == "L" and not png.oriented(img)
    ids = np.asarray(png.upright(img))
  counts = np.bincount(ids.ravel(), minlength=256)
  bad = [int(v) for v in np.flatnonzero(counts[len(CLASS_NAMES):IGNORE_LABEL])
         + len(CLASS_NAMES)]
  if bad:
    raise ValueError(
        f"PASCAL VOC 2012 label {path} contains id {bad[0]} (all unexpected "
        f"ids: {bad[:10]}); ids must be 0-{len(CLASS_NAMES) - 1} (classes) or "
        f"{IGNORE_LABEL} (void).")
  # Palette PNGs are re-encoded as plain id maps: OpenCV, which tfds prefers
  # for decoding when installed, would turn a palette back into colours.
  return (path.read_bytes() if as_is else png.encode(ids)), ids


class Voc2012Segmentation(tfds.core.GeneratorBasedBuilder):
  """PASCAL VOC 2012 segmentation: 20 classes + background, 255 = void."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Extract {ARCHIVE} (host.robots.ox.ac.uk/pascal/VOC/voc2012/) into the "
      f"manual dir so that it holds {LAYOUT}. Optionally add the SBD "
      f"augmented labels as VOC2012/{AUG_FOLDER}/ with a train_aug.txt list "
      "for a 'train_aug' split.")

  def _info(self) -> tfds.core.DatasetInfo:
    # Records keep the split-list order: record i is line i of the list.
    return builder.segmentation_info(
        self, num_channels=NUM_CHANNELS, image_format="jpeg",
        description=(
            "PASCAL VOC 2012 semantic segmentation: 0 = background, 1-20 the "
            f"VOC classes, {IGNORE_LABEL} = void (ignore)."),
        homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
        citation=(
            "Everingham, Van Gool, Williams, Winn, Zisserman, The PASCAL "
            "Visual Object Classes (VOC) Challenge, IJCV 2010. Augmented "
            "labels: Hariharan et al., Semantic Contours from Inverse "
            "Detectors, ICCV 2011."))

  def _split_generators(self, dl_manager):
    voc = check_manual_dir(builder.manual_dir_of(dl_manager, _TITLE, _FIX))
    # Build the pair lists now so layout errors surface before any writing.
    return {split: self._generate_examples(list_examples(voc, split))
            for split in available_splits(voc)}

  def _generate_examples(self, pairs):
    for key, (image_path, label_path) in enumerate(pairs):
      image, shape = png.read_jpeg(image_path)
      label, ids = read_label(label_path)
      builder.check_same_size(_TITLE, label_path, ids.shape, image_path, shape)
      yield key, {"image": image, "label": label, "filename": image_path.stem}


SPEC = spec.BuilderSpec(
    name="voc2012", builder=Voc2012Segmentation, class_names=CLASS_NAMES, palette=PALETTE,
    ignore_label=IGNORE_LABEL, num_channels=NUM_CHANNELS, splits=REQUIRED_SPLITS, check_manual_dir=check_manual_dir,
    # A "train_aug" split (SBD-augmented, 10582 images) exists too when the manual dir had it at prepare time.
    split_hints={AUG_SPLIT: (f" VOC 2012 has a {AUG_SPLIT} split only when the manual_dir held {AUG_FOLDER}/ and "
                             "its list at prepare time: add them, delete the prepared copy under data_dir and "
                             "prepare again.")})
