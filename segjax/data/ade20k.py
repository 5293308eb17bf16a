"""ADE20K SceneParsing (ADEChallengeData2016), prepared from a manual directory.

The 150-class benchmark of the MIT Scene Parsing Challenge 2016, as
MMSegmentation, DeepLab and most papers use it. (tfds' catalog
`scene_parse150` is not this: it holds the 100-class instance masks, see
segjax/data/catalog_tables.py.) Expected layout, as ADEChallengeData2016.zip
extracts (CSAILVision/sceneparsing README, "the directory structure"):

  <manual_dir>/ADEChallengeData2016/images/training/ADE_train_00000001.jpg
  <manual_dir>/ADEChallengeData2016/annotations/training/ADE_train_00000001.png
  <manual_dir>/ADEChallengeData2016/images/validation/ADE_val_00000001.jpg
  <manual_dir>/ADEChallengeData2016/annotations/validation/ADE_val_00000001.png

manual_dir may also be ADEChallengeData2016/ itself, or hold it one level
deeper (`unzip ADEChallengeData2016.zip -d ADEChallengeData2016` leaves
ADEChallengeData2016/ADEChallengeData2016/). objectInfo150.txt and
sceneCategories.txt are not read; the unlabelled test images (a separate
release_test.zip) are not a split here.

Splits "train" (training/, 20210 images) and "validation" (validation/,
2000), each in file-name order. The annotations are single-channel maps with
0 = "other objects" (not evaluated) and 1-150 the classes in objectInfo150
order. They are stored reduced, as MMSegmentation's reduce_zero_label does:
0 -> 255 (IGNORE_LABEL), c -> c - 1, so stored id c is CLASS_NAMES[c]. The
JPEG bytes are stored unchanged.
"""

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from segjax.data import builder
from segjax.data import catalog_tables
from segjax.data import png
from segjax.data import spec

CLASS_NAMES = catalog_tables.ADE20K_CLASS_NAMES
PALETTE = catalog_tables.ADE20K_PALETTE
IGNORE_LABEL = 255
NUM_CHANNELS = 3
# The source annotations' "other objects" id, and their largest class id.
SOURCE_OTHER = 0
SOURCE_MAX = len(CLASS_NAMES)
# tfds split name -> folder under images/ and annotations/.
SPLIT_FOLDERS = {"train": "training", "validation": "validation"}
SPLITS = tuple(SPLIT_FOLDERS)
FOLDER = "ADEChallengeData2016"
ARCHIVE = "ADEChallengeData2016.zip"
LAYOUT = (f"{FOLDER}/ with images/{{training,validation}}/*.jpg and "
          "annotations/{training,validation}/*.png")
MANUAL_DIR_FLAG = "--config.dataset.manual_dir"
_TITLE = "ADE20K"
_FIX = (f"pass {MANUAL_DIR_FLAG}=/path/to/ade holding {LAYOUT} (extract "
        f"{ARCHIVE} from http://sceneparsing.csail.mit.edu into it), or "
        "manual_dir= to segjax.data.datasets.get_builder.")

# Source id -> stored id: 0 -> IGNORE_LABEL, c -> c - 1 for c in 1..150.
# Entries above SOURCE_MAX are never used: read_label rejects those ids.
_REDUCE_ZERO_LABEL = np.full(256, IGNORE_LABEL, np.uint8)
_REDUCE_ZERO_LABEL[1:SOURCE_MAX + 1] = np.arange(SOURCE_MAX, dtype=np.uint8)


def find_ade_root(root: pathlib.Path) -> pathlib.Path | None:
  """The ADEChallengeData2016 folder at or below `root`.

  Args:
    root: the manual directory.

  Returns:
    The first of root, root/ADEChallengeData2016 and
    root/ADEChallengeData2016/ADEChallengeData2016 holding an images/ or
    annotations/ folder, or None.
  """
  for ade in (root, root / FOLDER, root / FOLDER / FOLDER):
    if (ade / "images").is_dir() or (ade / "annotations").is_dir():
      return ade
  return None


def check_manual_dir(manual_dir) -> pathlib.Path:
  """Checks the manual directory's layout.

  Args:
    manual_dir: directory holding ADEChallengeData2016/ (or that folder
      itself), or None.

  Returns:
    The ADEChallengeData2016 folder as a Path.

  Raises:
    ValueError: naming what is missing and how to fix it.
  """
  root = builder.manual_root(manual_dir, _TITLE, _FIX)
  ade = find_ade_root(root)
  if ade is None:
    hint = builder.archive_hint(
        root, ARCHIVE, f"unzip {root / ARCHIVE} -d {root}")
    raise ValueError(
        f"ADE20K manual_dir {root} holds no {FOLDER} folder (looked for "
        f"images/ and annotations/ in {root}, {root / FOLDER} and "
        f"{root / FOLDER / FOLDER}).{hint} {_FIX}")
  for kind in ("images", "annotations"):
    for folder in SPLIT_FOLDERS.values():
      if not (ade / kind / folder).is_dir():
        raise ValueError(
            f"ADE20K folder {ade} has no {kind}/{folder}/ folder: {_FIX}")
  return ade


def list_pairs(ade: pathlib.Path, split: str):
  """(image, annotation) paths of a split, in file-name order.

  Args:
    ade: a checked ADEChallengeData2016 folder.
    split: "train" or "validation".

  Returns:
    A list of (image_path, label_path).

  Raises:
    ValueError: when an image has no annotation or an annotation no image,
      or the split is empty.
  """
  folder = SPLIT_FOLDERS[split]
  images_dir, labels_dir = ade / "images" / folder, ade / "annotations" / folder
  # Zero-padded numbers (ADE_train_00000001): name order is numeric order.
  images = sorted(images_dir.glob("*.jpg"))
  labels = {p.stem for p in labels_dir.glob("*.png")}
  for image in images:
    if image.stem not in labels:
      raise ValueError(
          f"ADE20K image {image} has no annotation "
          f"{labels_dir / (image.stem + '.png')}: every images/{folder}/X.jpg "
          f"needs an annotations/{folder}/X.png; check that {ARCHIVE} is "
          "fully extracted.")
  orphans = sorted(labels - {p.stem for p in images})
  if orphans:
    raise ValueError(
        f"ADE20K annotation {labels_dir / (orphans[0] + '.png')} has no image "
        f"{images_dir / (orphans[0] + '.jpg')} ({len(orphans)} such "
        f"annotations): check that {ARCHIVE} is fully extracted.")
  if not images:
    raise ValueError(
        f"ADE20K split {split!r} is empty: {images_dir} holds no .jpg files. "
        f"{_FIX}")
  return [(image, labels_dir / f"{image.stem}.png") for image in images]


def read_label(path: pathlib.Path) -> tuple[bytes, np.ndarray]:
  """PNG bytes of an annotation reduced to stored ids, and those ids.

  Args:
    path: an annotations/{training,validation}/*.png file.

  Returns:
    (PNG bytes of the reduced single-channel map, uint8 [H, W] reduced ids:
    0-149 the classes, IGNORE_LABEL where the source says "other objects").

  Raises:
    ValueError: for a colour map or an id above 150.
  """
  with png.open_image(path, "ADE20K annotation") as img:
    # The official maps are grey-scale; palette indices would be ids too.
    if img.mode not in ("L", "P"):
      raise ValueError(
          f"ADE20K annotation {path} has mode {img.mode}; expected an 8-bit "
          "single-channel map of ids 0-150 as in ADEChallengeData2016/"
          "annotations/ (the full ADE20K release's colour-coded *_seg.png "
          "maps are a different format).")
    ids = np.asarray(png.upright(img))  # EXIF orientation, as its image's
  counts = np.bincount(ids.ravel(), minlength=256)
  bad = [int(v) for v in np.flatnonzero(counts[SOURCE_MAX + 1:])
         + SOURCE_MAX + 1]
  if bad:
    raise ValueError(
        f"ADE20K annotation {path} contains id {bad[0]} (all unexpected ids: "
        f"{bad[:10]}); ids must be {SOURCE_OTHER} (other objects) or "
        f"1-{SOURCE_MAX} (classes).")
  reduced = _REDUCE_ZERO_LABEL[ids]
  return png.encode(reduced), reduced


class Ade20k(tfds.core.GeneratorBasedBuilder):
  """ADE20K SceneParsing: 150 classes, "other objects" stored as 255."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download {ARCHIVE} (http://sceneparsing.csail.mit.edu, "
      "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip)"
      f" and extract it into the manual dir so that it holds {LAYOUT}.")

  def _info(self) -> tfds.core.DatasetInfo:
    # Records keep the file-name order: record i is the i-th file of the
    # folder.
    return builder.segmentation_info(
        self, num_channels=NUM_CHANNELS, image_format="jpeg",
        description=(
            "ADE20K SceneParsing benchmark (ADEChallengeData2016): 150 "
            "classes, ids 0-149 in objectInfo150 order (source id minus 1); "
            f"{IGNORE_LABEL} = 'other objects' (source id 0, ignore)."),
        homepage="http://sceneparsing.csail.mit.edu",
        citation=(
            "Zhou, Zhao, Puig, Fidler, Barriuso, Torralba, Scene Parsing "
            "through ADE20K Dataset, CVPR 2017."))

  def _split_generators(self, dl_manager):
    ade = check_manual_dir(builder.manual_dir_of(dl_manager, _TITLE, _FIX))
    # Build the pair lists now so layout errors surface before any writing.
    return {split: self._generate_examples(list_pairs(ade, split))
            for split in SPLITS}

  def _generate_examples(self, pairs):
    for key, (image_path, label_path) in enumerate(pairs):
      image, shape = png.read_jpeg(image_path)
      label, ids = read_label(label_path)
      builder.check_same_size(_TITLE, label_path, ids.shape, image_path, shape,
                              what="annotation")
      yield key, {"image": image, "label": label, "filename": image_path.stem}


# The ADE20K SceneParsing benchmark (150 classes) from ADEChallengeData2016.zip; labels stored reduced
# (0 "other" -> 255, c -> c - 1), as MMSegmentation's reduce_zero_label.
SPEC = spec.BuilderSpec(name="ade20k", builder=Ade20k, class_names=CLASS_NAMES, palette=PALETTE,
                        ignore_label=IGNORE_LABEL, num_channels=NUM_CHANNELS, splits=SPLITS,
                        check_manual_dir=check_manual_dir)
