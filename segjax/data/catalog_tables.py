"""The tfds catalog datasets segjax reads: per-dataset class lists, palettes, label maps and splits (`CATALOG`).

Data only; segjax.data.catalog reads these datasets with it (preparing, split names, the lookup table applied to
every example).

Datasets (`CATALOG`):
  oxford_iiit_pet         background / pet; the trimap's border -> 255.
  oxford_iiit_pet_trimap  background / pet / border, nothing ignored.
  cityscapes              gtFine label ids -> the 19 official train ids.
  scene_parse150          the 100 ADE20K object ("thing") classes.
  scene_parse150_ade150   the same pixels, numbered as the 150 ADE20K classes.

tfds' scene_parse150 is not the 150-class semantic benchmark: it stores the
Places Challenge 2017 *instance* masks (annotations_instance.tar), whose red
channel holds one of 100 object categories (0 = no object: every stuff class
such as wall, sky or floor) and whose green channel holds an instance id. So
stuff pixels are unlabelled (255) in both scene_parse150 entries.
"""

import dataclasses
from typing import Mapping

import numpy as np

IGNORE_LABEL = 255

# ---------------------------------------------------------- Oxford-IIIT Pet
# Trimap values, from the dataset's README (annotations/README):
# "Pixel Annotations: 1: Foreground 2: Background 3: Not classified".
# (TensorFlow's segmentation tutorial calls 2 "bordering" and 3 "surrounding":
# that is wrong; 3 is the thin band around the pet.)
PET_TRIMAP_PET, PET_TRIMAP_BACKGROUND, PET_TRIMAP_BORDER = 1, 2, 3
PET_CLASS_NAMES = ("background", "pet")
PET_TRIMAP_CLASS_NAMES = ("background", "pet", "border")
# Display colours: black background, VOC's first class colour for the pet and
# VOC's colour for its unlabelled object borders.
PET_TRIMAP_PALETTE = ((0, 0, 0), (128, 0, 0), (224, 224, 192))
PET_PALETTE = PET_TRIMAP_PALETTE[:2]

# --------------------------------------------------------------- Cityscapes
# (name, id, trainId, colour) of cityscapesScripts' labels table,
# https://github.com/mcordts/cityscapesScripts/blob/master/cityscapesscripts/helpers/labels.py
# 'license plate' (id -1) never appears in label images and is left out.
CITYSCAPES_LABELS = (
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
)
_CITYSCAPES_TRAIN = sorted((t, name, colour)
                           for name, _, t, colour in CITYSCAPES_LABELS
                           if t != 255)
CITYSCAPES_CLASS_NAMES = tuple(name for _, name, _ in _CITYSCAPES_TRAIN)
CITYSCAPES_PALETTE = tuple(colour for _, _, colour in _CITYSCAPES_TRAIN)
CITYSCAPES_ID_TO_TRAIN_ID = {i: t for _, i, t, _ in CITYSCAPES_LABELS
                             if t != 255}
CITYSCAPES_FILES = ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip")

# ------------------------------------------------------------------ ADE20K
# The 150 SceneParsing classes in objectInfo150 order (first name of each
# entry) and their display colours, as in MMSegmentation's ADE20KDataset,
# https://github.com/open-mmlab/mmsegmentation/blob/main/mmseg/datasets/ade.py
ADE20K_CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed",
    "windowpane", "grass", "cabinet", "sidewalk", "person", "earth", "door",
    "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill",
    "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall",
    "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step",
    "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock",
    "flag",
)
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50),
    (4, 200, 3), (120, 120, 80), (140, 140, 140), (204, 5, 255),
    (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82),
    (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3),
    (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224),
    (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),
    (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153),
    (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0),
    (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255),
    (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255),
    (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0),
    (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255),
    (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255),
    (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255),
    (255, 0, 204), (0, 255, 194), (0, 255, 82), (0, 10, 255),
    (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0),
    (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0),
    (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),
    (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160),
    (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0),
    (255, 0, 235), (245, 0, 255), (255, 0, 122), (255, 245, 0),
    (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204),
    (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194),
    (102, 255, 0), (92, 0, 255),
)
# Instance category k (1..100, the red channel of annotations_instance) is
# ADE20K class INSTANCE_TO_ADE20K[k - 1] (1-based, objectInfo150 order). From
# ade20k_instance_catid_mapping.txt in Mask2Former's datasets/ folder; the
# names agree with the Places Challenge's instanceInfo100_train.txt.
INSTANCE_TO_ADE20K = (
    8, 9, 11, 13, 15, 16, 19, 20, 21, 23, 24, 25, 28, 31, 32, 33, 34, 36, 37,
    38, 39, 40, 42, 43, 44, 45, 46, 48, 50, 51, 54, 56, 57, 58, 59, 63, 65,
    66, 67, 68, 70, 71, 72, 73, 74, 75, 76, 77, 79, 81, 82, 83, 84, 86, 87,
    88, 89, 90, 91, 93, 94, 96, 98, 99, 103, 104, 105, 108, 109, 111, 112,
    113, 116, 117, 119, 120, 121, 122, 124, 125, 126, 127, 128, 130, 131,
    133, 134, 135, 136, 137, 138, 139, 140, 143, 144, 145, 147, 148, 149, 150,
)
SCENE_PARSE_CLASS_NAMES = tuple(ADE20K_CLASS_NAMES[a - 1]
                                for a in INSTANCE_TO_ADE20K)
SCENE_PARSE_PALETTE = tuple(ADE20K_PALETTE[a - 1] for a in INSTANCE_TO_ADE20K)


@dataclasses.dataclass(frozen=True)
class CatalogDataset:
  """A tfds catalog dataset and how to read it as segjax examples.

  Attributes:
    name: segjax name, e.g. "cityscapes".
    tfds_name: tfds builder name with its config, if any.
    class_names: one name per class id.
    palette: display RGB per class id.
    ignore_label: class id meaning "not labelled" (255).
    num_channels: image channels.
    split_map: segjax split name -> tfds split name.
    image_key: tfds feature holding the image.
    label_key: tfds feature holding the mask.
    label_channel: channel of the mask that holds the raw ids.
    filename_key: tfds feature holding the file name or id; None when the
      builder stores none (the filename is then "<split>_<index>").
    id_map: raw mask value -> class id; any other value -> ignore_label.
    needs_manual_dir: whether preparing needs files in a manual dir.
    manual_files: the files the manual dir must hold.
    how_to_prepare: one line on what preparing does.
    split_hint: appended to the error for a split the dataset does not have.
  """
  name: str
  tfds_name: str
  class_names: tuple[str, ...]
  palette: tuple[tuple[int, int, int], ...]
  ignore_label: int
  num_channels: int
  split_map: Mapping[str, str]
  image_key: str
  label_key: str
  label_channel: int
  filename_key: str | None
  id_map: Mapping[int, int]
  needs_manual_dir: bool
  manual_files: tuple[str, ...]
  how_to_prepare: str
  split_hint: str = ""

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def splits(self) -> tuple[str, ...]:
    """The segjax split names this dataset has."""
    return tuple(self.split_map)

  def lookup_table(self) -> np.ndarray:
    """uint8 [256]: raw mask value -> class id (or ignore_label)."""
    table = np.full(256, self.ignore_label, np.uint8)
    for raw, class_id in self.id_map.items():
      table[raw] = class_id
    return table


_PET_SPLITS = {"train": "train", "validation": "test", "test": "test"}
_PET_PREPARE = ("downloads images.tar.gz and annotations.tar.gz (~810 MB) "
                "from the VGG site, extracts them with tf.io.gfile and "
                "re-encodes 12 corrupt JPEGs with tf.image")
_ADE_SPLITS = {"train": "train", "validation": "test"}
_ADE_PREPARE = ("downloads images.tar and annotations_instance.tar (~1 GB) "
                "from the Places Challenge 2017 site and extracts and lists "
                "them with tf.io.gfile")

# No validation split exists: "validation" reads the official test split (3669 images), the set pet
# segmentation results are reported on.
_PET = CatalogDataset(
    name="oxford_iiit_pet",
    tfds_name="oxford_iiit_pet",
    class_names=PET_CLASS_NAMES,
    palette=PET_PALETTE,
    ignore_label=IGNORE_LABEL,
    num_channels=3,
    split_map=_PET_SPLITS,
    image_key="image",
    label_key="segmentation_mask",
    label_channel=0,
    filename_key="file_name",
    id_map={PET_TRIMAP_BACKGROUND: 0, PET_TRIMAP_PET: 1},
    needs_manual_dir=False,
    manual_files=(),
    how_to_prepare=_PET_PREPARE,
)
# ADE's 2000 validation images are tfds' "test" split; ADE's test images have no labels and are not in tfds.
_SCENE_PARSE = CatalogDataset(
    name="scene_parse150",
    tfds_name="scene_parse150",
    class_names=SCENE_PARSE_CLASS_NAMES,
    palette=SCENE_PARSE_PALETTE,
    ignore_label=IGNORE_LABEL,
    num_channels=3,
    split_map=_ADE_SPLITS,
    image_key="image",
    label_key="annotation",
    label_channel=0,  # Red: category; green: instance id.
    filename_key=None,
    id_map={k: k - 1 for k in range(1, len(INSTANCE_TO_ADE20K) + 1)},
    needs_manual_dir=False,
    manual_files=(),
    how_to_prepare=_ADE_PREPARE,
    split_hint=(" tfds' scene_parse150 'test' split is ADE20K's validation set: ask for 'validation'. ADE20K's "
                "test images have no public labels."),
)

CATALOG: dict[str, CatalogDataset] = {
    "oxford_iiit_pet": _PET,
    "oxford_iiit_pet_trimap": dataclasses.replace(
        _PET, name="oxford_iiit_pet_trimap", class_names=PET_TRIMAP_CLASS_NAMES, palette=PET_TRIMAP_PALETTE,
        id_map={PET_TRIMAP_BACKGROUND: 0, PET_TRIMAP_PET: 1, PET_TRIMAP_BORDER: 2}),
    # The test split's label maps are placeholders: they only mark the ego
    # vehicle and the image border (ids 1-3, see cityscapesScripts issue #57),
    # so every test pixel is 255. Test scores come from the benchmark server.
    "cityscapes": CatalogDataset(
        name="cityscapes",
        tfds_name="cityscapes/semantic_segmentation",
        class_names=CITYSCAPES_CLASS_NAMES,
        palette=CITYSCAPES_PALETTE,
        ignore_label=IGNORE_LABEL,
        num_channels=3,
        split_map={"train": "train", "validation": "validation",
                   "test": "test"},
        image_key="image_left",
        label_key="segmentation_label",
        label_channel=0,
        filename_key="image_id",
        id_map=CITYSCAPES_ID_TO_TRAIN_ID,
        needs_manual_dir=True,
        manual_files=CITYSCAPES_FILES,
        how_to_prepare=("extracts " + " and ".join(CITYSCAPES_FILES)
                        + " (~11 GB) from the manual dir and lists them with "
                        "tf.io.gfile"),
    ),
    "scene_parse150": _SCENE_PARSE,
    # Ids of the 150-class ADE20K head (objectInfo150 order minus 1), so a
    # model trained on ADEChallengeData2016 can be scored on the 100 object
    # classes; the 50 stuff classes never occur.
    "scene_parse150_ade150": dataclasses.replace(
        _SCENE_PARSE, name="scene_parse150_ade150", class_names=ADE20K_CLASS_NAMES, palette=ADE20K_PALETTE,
        id_map={k: a - 1 for k, a in enumerate(INSTANCE_TO_ADE20K, 1)}),
}
