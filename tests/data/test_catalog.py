"""Tests for segjax.data.catalog: tfds catalog datasets in segjax's format.

The adapters run on tfds' own catalog builders under `tfds.testing.mock_data`
(nothing is downloaded). Converted examples are compared with a numpy remap
written here from the published tables (cityscapesScripts' labels.py, the pet
README's trimap values, the Places Challenge's instanceInfo100_train.txt), not
with the module's lookup tables.
"""

import importlib.util
import pickle
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from segjax.data import catalog

# cityscapesScripts labels.py: label id -> trainId for the 19 evaluated classes.
OFFICIAL_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7,
                      21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
                      28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle")
# MMSegmentation's CityscapesDataset palette (the labels.py colours).
CITYSCAPES_COLOURS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
    (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100),
    (0, 0, 230), (119, 11, 32))
# Places Challenge instancesegmentation/instanceInfo100_train.txt, in order.
INSTANCE_100_NAMES = (
    "bed", "windowpane", "cabinet", "person", "door", "table", "curtain",
    "chair", "car", "painting", "sofa", "shelf", "mirror", "armchair", "seat",
    "fence", "desk", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "box", "column", "signboard", "chest of drawers", "counter", "sink",
    "fireplace", "refrigerator", "stairs", "case", "pool table", "pillow",
    "screen door", "bookcase", "coffee table", "toilet", "flower", "book",
    "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "arcade machine", "bus", "towel", "light",
    "truck", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "apparel", "pole", "bannister",
    "ottoman", "bottle", "van", "ship", "fountain", "washer", "plaything",
    "stool", "barrel", "basket", "bag", "minibike", "oven", "ball", "food",
    "step", "trade name", "microwave", "pot", "animal", "bicycle",
    "dishwasher", "screen", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "plate", "monitor",
    "bulletin board", "radiator", "glass", "clock", "flag")


# ---------------------------------------------------- independent references


def _reference_label(name: str, mask: np.ndarray) -> np.ndarray:
  """Expected uint8 [H, W, 1] label of a raw tfds mask, in plain numpy."""
  if mask.ndim == 3:
    mask = mask[..., 0]  # Single-channel masks, or ADE's red channel.
  ref = np.full(mask.shape, 255, np.uint8)
  if name == "oxford_iiit_pet":  # 1 pet, 2 background, 3 border.
    ref[mask == 2] = 0
    ref[mask == 1] = 1
  elif name == "oxford_iiit_pet_trimap":
    ref[mask == 2], ref[mask == 1], ref[mask == 3] = 0, 1, 2
  elif name == "cityscapes":
    for label_id, train_id in OFFICIAL_TRAIN_IDS.items():
      ref[mask == label_id] = train_id
  elif name == "scene_parse150":  # Instance category k in 1..100 -> k - 1.
    objects = (mask >= 1) & (mask <= 100)
    ref[objects] = mask[objects] - 1
  else:
    raise AssertionError(name)
  return ref[..., None]


def _check_converted(name, raw, got, filename):
  image_key = "image_left" if name == "cityscapes" else "image"
  mask = np.asarray(raw[catalog.CATALOG[name].label_key])
  assert got["label"].dtype == np.uint8
  assert got["label"].shape == mask.shape[:2] + (1,)
  np.testing.assert_array_equal(got["image"], raw[image_key])
  assert got["filename"] == filename
  if name == "scene_parse150_ade150":
    # The 150-class id of every object pixel names the instance category.
    red = mask[..., 0]
    names = np.array(catalog.ADE20K_CLASS_NAMES + ("<ignored>",) * 106)
    objects = (red >= 1) & (red <= 100)
    np.testing.assert_array_equal(
        names[got["label"][..., 0][objects]],
        np.array(INSTANCE_100_NAMES)[red[objects] - 1])
    assert (got["label"][..., 0][~objects] == 255).all()
  else:
    np.testing.assert_array_equal(got["label"], _reference_label(name, mask))


# ------------------------------------------------------------- fixtures


@pytest.fixture
def tf_ok(monkeypatch):
  """Lets get_builder reach tfds' (mocked) download_and_prepare."""
  monkeypatch.setattr(catalog, "_tensorflow_available", lambda: True)


@pytest.fixture
def cityscapes_manual_dir(tmp_path):
  root = tmp_path / "cityscapes_manual"
  root.mkdir()
  for name in catalog.CITYSCAPES_FILES:
    with zipfile.ZipFile(root / name, "w") as z:
      z.writestr("README", "placeholder")
  return root


class _FakeSource:
  """Stands in for tfds' ArrayRecord data source: a list of raw examples."""

  def __init__(self, examples):
    self.examples = examples

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, index):
    return self.examples[index]


def _fake_examples(builder, label_key, count=3):
  """Raw examples whose masks hold every value 0..255, in the real layout."""
  feature = builder.info.features[label_key]
  channels = feature.shape[-1]  # 3 for scene_parse150's RGB annotation.
  examples = []
  for i in range(count):
    rng = np.random.default_rng(i)
    h, w = 16, 20 + i
    ids = rng.permutation(np.concatenate(
        [np.arange(256), rng.integers(0, 256, h * w - 256)])).astype(np.uint8)
    mask = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    mask[..., 0] = ids.reshape(h, w)
    example = {label_key: mask,
               "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
               "image_left": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
               "file_name": f"Pet_{i}.jpg".encode(),
               "image_id": f"aachen_{i:06d}_000019"}
    examples.append(example)
  return examples


_FILENAMES = {
    "oxford_iiit_pet": lambda split, i: f"Pet_{i}",
    "oxford_iiit_pet_trimap": lambda split, i: f"Pet_{i}",
    "cityscapes": lambda split, i: f"aachen_{i:06d}_000019",
    "scene_parse150": lambda split, i: f"{split}_{i:06d}",
    "scene_parse150_ade150": lambda split, i: f"{split}_{i:06d}",
}


# ------------------------------------------------------------------ tables


def test_entries_are_consistent():
  assert set(catalog.CATALOG) == {
      "oxford_iiit_pet", "oxford_iiit_pet_trimap", "cityscapes",
      "scene_parse150", "scene_parse150_ade150"}
  for name, ds in catalog.CATALOG.items():
    assert catalog.get_dataset(name) is ds and ds.name == name
    assert len(ds.palette) == ds.num_classes
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c)
               for c in ds.palette)
    assert ds.ignore_label == 255 and ds.num_channels == 3
    table = ds.lookup_table()
    assert table.shape == (256,) and table.dtype == np.uint8
    used = set(np.unique(table)) - {255}
    assert used == set(range(ds.num_classes)) or name.endswith("ade150")
    assert set(ds.splits) <= {"train", "validation", "test"}
    assert ds.needs_manual_dir == (name == "cityscapes")
  with pytest.raises(ValueError, match="cityscapes.*oxford_iiit_pet"):
    catalog.get_dataset("ade20k")


def test_cityscapes_table_is_the_official_one():
  ds = catalog.get_dataset("cityscapes")
  assert ds.tfds_name == "cityscapes/semantic_segmentation"
  assert ds.class_names == CITYSCAPES_NAMES
  assert ds.palette == CITYSCAPES_COLOURS
  table = ds.lookup_table()
  for raw in range(256):
    assert table[raw] == OFFICIAL_TRAIN_IDS.get(raw, 255), raw
  assert [raw for raw in range(256) if table[raw] != 255] == [
      7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def test_pet_tables():
  assert catalog.get_dataset("oxford_iiit_pet").class_names == (
      "background", "pet")
  assert catalog.get_dataset("oxford_iiit_pet_trimap").class_names == (
      "background", "pet", "border")
  table = catalog.get_dataset("oxford_iiit_pet").lookup_table()
  assert (table[1], table[2], table[3], table[0]) == (1, 0, 255, 255)


def test_ade_tables():
  assert len(catalog.ADE20K_CLASS_NAMES) == len(catalog.ADE20K_PALETTE) == 150
  assert len(set(catalog.ADE20K_CLASS_NAMES)) == 150
  assert catalog.ADE20K_CLASS_NAMES[:3] == ("wall", "building", "sky")
  assert catalog.ADE20K_CLASS_NAMES[-1] == "flag"
  assert catalog.ADE20K_PALETTE[0] == (120, 120, 120)
  assert catalog.ADE20K_PALETTE[-1] == (92, 0, 255)
  # The instance -> ADE mapping lands every category on its own name.
  assert catalog.get_dataset("scene_parse150").class_names == (
      INSTANCE_100_NAMES)
  assert len(set(catalog.INSTANCE_TO_ADE20K)) == 100


def test_split_translation():
  pet = catalog.get_dataset("oxford_iiit_pet")
  assert catalog.tfds_split(pet, "train") == "train"
  assert catalog.tfds_split(pet, "validation[:10%]+train[5:]") == (
      "test[:10%]+train[5:]")
  city = catalog.get_dataset("cityscapes")
  assert catalog.tfds_split(city, "validation[:10]") == "validation[:10]"
  ade = catalog.get_dataset("scene_parse150")
  assert catalog.tfds_split(ade, "validation") == "test"
  with pytest.raises(ValueError, match=r"'test'.*\['train', 'validation'\]"
                     r".*ADE20K's validation set"):
    catalog.tfds_split(ade, "test")
  with pytest.raises(ValueError, match="'val' .*available splits"):
    catalog.tfds_split(city, "train+val")


# ------------------------------------------------ conversion, mocked tfds


@pytest.mark.parametrize("name", sorted(catalog.CATALOG))
def test_every_raw_value_is_converted(name, tf_ok, cityscapes_manual_dir):
  ds = catalog.get_dataset(name)
  requests = []

  def as_data_source(builder, split, **kwargs):
    del kwargs
    requests.append((builder.info.full_name, split))
    return _FakeSource(_fake_examples(builder, ds.label_key))

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=as_data_source):
    source = catalog.data_source(name, "validation[:3]",
                                 manual_dir=cityscapes_manual_dir)
  want_split = "test[:3]" if name != "cityscapes" else "validation[:3]"
  assert [s for _, s in requests] == [want_split]
  assert requests[0][0].startswith(ds.tfds_name + "/")
  assert len(source) == 3
  raws = _fake_examples(
      tfds.builder(ds.tfds_name, data_dir="/nonexistent"), ds.label_key)
  for i, raw in enumerate(raws):
    # The fake masks hold all 256 values: the whole table is exercised.
    assert len(np.unique(raw[ds.label_key][..., 0])) == 256
    _check_converted(name, raw, source[i],
                     _FILENAMES[name]("validation[:3]", i))
  batch = source.__getitems__([2, 0])
  np.testing.assert_array_equal(batch[0]["label"], source[2]["label"])
  assert source[-1]["filename"] == source[2]["filename"]
  # grain workers receive the source pickled.
  clone = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(clone[1]["label"], source[1]["label"])


@pytest.mark.parametrize("name", ["oxford_iiit_pet", "cityscapes",
                                  "scene_parse150"])
def test_tfds_mock_examples(name, tf_ok, cityscapes_manual_dir):
  # tfds' own mocked ArrayRecordDataSource: random masks over 0..255.
  ds = catalog.get_dataset(name)
  with tfds.testing.mock_data(num_examples=2,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    raw_source = tfds.builder(ds.tfds_name).as_data_source(split="train")
    source = catalog.data_source(name, "train[:2]",
                                 manual_dir=cityscapes_manual_dir)
    assert len(source) == len(raw_source) == 2
    for i in range(2):
      raw, got = raw_source[i], source[i]
      mask = np.asarray(raw[ds.label_key])
      assert mask.shape[-1] == (3 if name == "scene_parse150" else 1)
      # Not vacuous: many distinct raw ids, some ignored and, where the
      # random mask is large or dense in valid ids, some mapped. (A pet mask
      # of ~100 random bytes seldom holds 1 or 2: the fake-source test above
      # covers every value.)
      assert len(np.unique(mask[..., 0])) >= 20
      assert (got["label"] == 255).any()
      if name != "oxford_iiit_pet":
        assert (got["label"] != 255).any()
      filename = {"oxford_iiit_pet": lambda: raw["file_name"],
                  "cityscapes": lambda: raw["image_id"],
                  "scene_parse150": lambda: f"train[:2]_{i:06d}"}[name]()
      if name == "oxford_iiit_pet":
        assert "." not in got["filename"]
        filename = filename.rsplit(".", 1)[0]
      _check_converted(name, raw, got, filename)


def test_non_uint8_mask_is_rejected():
  ds = catalog.get_dataset("oxford_iiit_pet")
  source = catalog.CatalogSource(
      _FakeSource([{"image": np.zeros((2, 2, 3), np.uint8),
                    "segmentation_mask": np.ones((2, 2, 1), np.int32),
                    "file_name": "x.jpg"}]), ds, "train")
  with pytest.raises(ValueError, match=r"oxford_iiit_pet example x .*int32"):
    source[0]


# ----------------------------------------------------------- preparation


def test_cityscapes_manual_dir_errors(tmp_path):
  data_dir = tmp_path / "data"
  with pytest.raises(ValueError, match=(
      r"leftImg8bit_trainvaltest\.zip, gtFine_trainvaltest\.zip.*"
      r"--config\.dataset\.manual_dir")):
    catalog.data_source("cityscapes", "train", data_dir=data_dir)
  with pytest.raises(ValueError, match="does not exist"):
    catalog.data_source("cityscapes", "train", data_dir=data_dir,
                        manual_dir=tmp_path / "absent")
  partial = tmp_path / "partial"
  partial.mkdir()
  (partial / "leftImg8bit_trainvaltest.zip").write_bytes(b"")
  with pytest.raises(ValueError,
                     match=r"has no gtFine_trainvaltest\.zip: download"):
    catalog.data_source("cityscapes", "train", data_dir=data_dir,
                        manual_dir=partial)


def test_missing_tensorflow_is_reported_before_any_download(
    tmp_path, monkeypatch):
  monkeypatch.setattr(catalog, "_tensorflow_available", lambda: False)
  data_dir = tmp_path / "data"
  with pytest.raises(ImportError) as info:
    catalog.data_source("oxford_iiit_pet", "train", data_dir=data_dir)
  message = str(info.value)
  assert "pip install 'segjax[tf]'" in message
  assert "tfds build oxford_iiit_pet --file_format=array_record" in message
  assert "--config.dataset.data_dir" in message
  assert not (data_dir / "downloads").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="TensorFlow is installed: tfds would prepare")
def test_real_cityscapes_prepare_fails_on_tensorflow_with_the_fix(
    tmp_path, tf_ok, cityscapes_manual_dir):
  # tfds' real builder runs (not mocked) and reaches its tf.io.gfile call.
  with pytest.raises(ImportError) as info:
    catalog.get_builder("cityscapes", data_dir=tmp_path / "data",
                        manual_dir=cityscapes_manual_dir)
  assert isinstance(info.value.__cause__, ModuleNotFoundError)
  message = str(info.value)
  assert "pip install 'segjax[tf]'" in message
  assert ("tfds build cityscapes --config=semantic_segmentation "
          "--file_format=array_record --data_dir=DATA_DIR --manual_dir=DIR"
          in message)
  assert not tfds.builder("cityscapes/semantic_segmentation",
                          data_dir=tmp_path / "data").is_prepared()
