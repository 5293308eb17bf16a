"""Tests for segjax.data.panoptic.coco: a tiny COCO panoptic split written here (segment-id PNGs from known arrays),
prepared and read back without TensorFlow, and every bad input refused before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segjax.data.panoptic import coco
from segjax.data.panoptic import features
from segjax.data.panoptic import registry
from tests.conftest import read_image

H, W = 16, 24
CATEGORIES = [{"id": 7, "name": "road", "isthing": 0, "color": [128, 64, 128]},
              {"id": 1, "name": "person", "isthing": 1},
              {"id": 3, "name": "car", "isthing": 1},
              {"id": 5, "name": "sky", "isthing": 0}]


def id_maps():
  """{image id: (int [H, W] segment ids, segments_info)}: ids using every colour channel, a crowd, void pixels, and
  image 2 with stuff only."""
  a = np.zeros((H, W), np.int64)
  a[:6] = 70000  # sky (B channel)
  a[6:] = 7  # road
  a[8:14, 2:8] = 3  # a person
  a[9:15, 12:22] = 300  # a crowd of cars (G channel)
  a[0:2, 20:24] = 0  # void
  infos_a = [{"id": 3, "category_id": 1, "iscrowd": 0}, {"id": 300, "category_id": 3, "iscrowd": 1},
             {"id": 70000, "category_id": 5, "iscrowd": 0}, {"id": 7, "category_id": 7, "iscrowd": 0}]
  b = np.zeros((H, W), np.int64)
  b[:10] = 1
  b[10:] = 2
  b[15, :] = 0
  infos_b = [{"id": 1, "category_id": 5, "iscrowd": 0}, {"id": 2, "category_id": 7, "iscrowd": 0}]
  c = np.full((H, W), 9, np.int64)
  c[2:5, 3:9], c[10:13, 3:9], c[4:12, 15:20] = 10, 11, 12
  infos_c = [{"id": 10, "category_id": 1, "iscrowd": 0}, {"id": 11, "category_id": 1, "iscrowd": 0},
             {"id": 12, "category_id": 3, "iscrowd": 0}, {"id": 9, "category_id": 7, "iscrowd": 0}]
  return {1: (a, infos_a), 2: (b, infos_b), 3: (c, infos_c)}


def write_split(root, split="train", maps=None, images=None, annotations=None, categories=None):
  """Images (a JPEG and PNGs), their PNG maps and a panoptic JSON under root; returns the splits entry."""
  rng = np.random.default_rng(0)
  maps = id_maps() if maps is None else maps
  images_dir, png_dir = root / f"images_{split}", root / f"panoptic_{split}"
  images_dir.mkdir(parents=True, exist_ok=True)
  png_dir.mkdir(parents=True, exist_ok=True)
  images = images if images is not None else [
      {"id": iid, "file_name": f"img{iid}.{'jpg' if iid == 1 else 'png'}", "height": H, "width": W} for iid in maps]
  for img in images:
    Image.fromarray(rng.integers(0, 256, (H, W, 3), np.uint8)).save(images_dir / img["file_name"])
  for iid, (ids, _) in maps.items():
    Image.fromarray(features.id2rgb(ids)).save(png_dir / f"img{iid}.png")
  if annotations is None:
    # JSON areas deliberately wrong: the builder counts them from the PNG.
    annotations = [{"image_id": iid, "file_name": f"img{iid}.png",
                    "segments_info": [{**s, "area": 999, "bbox": [0, 0, 1, 1]} for s in infos]}
                   for iid, (_, infos) in maps.items()]
  path = root / f"panoptic_{split}.json"
  path.write_text(json.dumps({"images": images, "annotations": annotations,
                              "categories": CATEGORIES if categories is None else categories}))
  return (images_dir, path, png_dir)


def test_prepared_examples_match_the_written_maps(tmp_path):
  train = write_split(tmp_path / "src")
  kw = dict(splits={"train": train}, data_dir=tmp_path / "tfds")
  spec = registry.get_spec("coco_panoptic", **kw)
  assert [(c.id, c.name, c.isthing) for c in spec.categories] == [
      (1, "person", True), (3, "car", True), (5, "sky", False), (7, "road", False)]
  assert dict(spec.max_objects) == {"train": 3}  # image 3's three things (image 1: a person and a crowd)
  source = registry.data_source("coco_panoptic", "train", **kw)
  maps = id_maps()
  assert [int(source[i]["image_id"]) for i in range(len(source))] == [1, 2, 3]
  isthing = {c["id"]: bool(c["isthing"]) for c in CATEGORIES}
  for i in range(len(source)):
    ex = features.decode(source[i])
    ids, infos = maps[ex.image_id]
    np.testing.assert_array_equal(ex.panoptic, ids)
    expected = [{"id": s["id"], "category_id": s["category_id"], "isthing": isthing[s["category_id"]],
                 "iscrowd": bool(s["iscrowd"]), "area": int((ids == s["id"]).sum())} for s in infos]
    assert ex.segments == expected
    assert ex.filename == f"img{ex.image_id}"
    reference = read_image(train[0] / f"img{ex.image_id}.{'jpg' if ex.image_id == 1 else 'png'}")
    if ex.image_id == 1:  # the JPEG's own bytes: decoders may round differently by a level
      assert np.abs(ex.image.astype(int) - reference).max() <= 2
    else:
      np.testing.assert_array_equal(ex.image, reference)
  jpeg = source[0]["image"]
  assert jpeg.shape == (H, W, 3)
  # Prepared once; an edited PNG prepares afresh.
  assert registry.make_builder("coco_panoptic", **kw).is_prepared()
  Image.fromarray(features.id2rgb(maps[2][0])).save(train[2] / "img1.png")
  assert not registry.make_builder("coco_panoptic", **kw).is_prepared()


def test_coco2017_layout_from_manual_dir(tmp_path):
  root = tmp_path / "coco"
  (root / "annotations").mkdir(parents=True)
  images_dir, path, png_dir = write_split(tmp_path / "src", split="val")
  images_dir.rename(root / "val2017")
  path.rename(root / "annotations" / "panoptic_val2017.json")
  png_dir.rename(root / "annotations" / "panoptic_val2017")
  # `name` is also the registry functions' first parameter, so a custom name goes through coco.make_builder.
  builder = coco.make_builder(data_dir=tmp_path / "tfds", manual_dir=root, name="mine")
  builder.download_and_prepare()
  spec = registry.spec_of(builder, "coco_panoptic")
  assert spec.splits == ("validation",) and spec.tfds_name.startswith("segjax_coco_panoptic/mine-")
  assert len(registry.data_source("coco_panoptic", "validation", data_dir=tmp_path / "tfds", manual_dir=root)) == 3
  with pytest.raises(ValueError, match="neither annotations/panoptic_train2017.json"):
    registry.make_builder("coco_panoptic", manual_dir=tmp_path)
  with pytest.raises(ValueError, match="needs its files"):
    registry.make_builder("coco_panoptic")
  with pytest.raises(ValueError, match="panoptic PNG folder .*nowhere does not exist"):
    registry.make_builder("coco_panoptic", splits={"train": (root / "val2017", root / "annotations" /
                                                             "panoptic_val2017.json", tmp_path / "nowhere")})


def _bad_png_size(root, split):
  maps = id_maps()
  Image.fromarray(features.id2rgb(np.pad(maps[2][0], ((0, 1), (0, 0))))).save(root / f"panoptic_{split}" / "img2.png")


def _unlisted_id(root, split):
  ids = id_maps()[2][0].copy()
  ids[0, 0] = 42
  Image.fromarray(features.id2rgb(ids)).save(root / f"panoptic_{split}" / "img2.png")


def _edit(fn):
  def edit(root, split):
    path = root / f"panoptic_{split}.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
  return edit


def _set(key, value, image=0, segment=0):
  return _edit(lambda d: d["annotations"][image]["segments_info"][segment].__setitem__(key, value))


BAD = [
    (lambda root, split: (root / f"panoptic_{split}" / "img2.png").unlink(),
     r"image 2 \(img2.png\): its PNG .*img2.png does not exist: put it in"),
    (_bad_png_size, r"image 2 \(img2.png\): its PNG .*img2.png is 17x24 \(height x width\) but its image .*img2.png "
     r"is 16x24: the map must cover the image pixel for pixel"),
    (_unlisted_id, r"image 2 \(img2.png\), PNG .*img2.png: the map holds segment ids \[42\] that segments_info does "
     r"not list; list them or set those pixels to 0"),
    (_edit(lambda d: d["annotations"][1]["segments_info"].append({"id": 77, "category_id": 5, "iscrowd": 0})),
     r"image 2 \(img2.png\), PNG .*: segment 77 \(category 5\) has no pixels in the map; remove it"),
    (_set("category_id", 4), r"image 1 \(img1.jpg\), PNG .*: segment 3 has category_id 4, not among the categories "
     r"\[1, 3, 5, 7\]; add the category or fix the segment"),
    (_edit(lambda d: d["annotations"][0].__setitem__("image_id", 99)),
     r"annotations\[0\] names image id 99, which the file's images list does not hold: add the image"),
    (lambda root, split: (root / f"images_{split}" / "img3.png").unlink(),
     r"image 3's file .*img3.png does not exist: put it in"),
    (_set("iscrowd", 1, segment=2), r"segment 70000 of stuff category 5 \(sky\) has iscrowd 1.*set iscrowd to 0"),
    (_edit(lambda d: d["annotations"].pop()), r"image 3 \(img3.png\) has no annotation: add its annotation"),
]


@pytest.mark.parametrize("edit,message", BAD, ids=[m[:24] for _, m in BAD])
def test_bad_inputs_name_file_id_and_fix_and_prepare_nothing(tmp_path, edit, message):
  train = write_split(tmp_path / "src")
  edit(tmp_path / "src", "train")
  builder = registry.make_builder("coco_panoptic", splits={"train": train}, data_dir=tmp_path / "tfds")
  with pytest.raises(ValueError, match=message) as e:
    builder.download_and_prepare()
  assert str(train[1]) in str(e.value) and "nothing was prepared" in str(e.value).lower()
  assert not builder.is_prepared()
  assert not list((tmp_path / "tfds").rglob("*.array_record*"))  # nothing written


def test_every_problem_of_every_split_in_one_error(tmp_path):
  train = write_split(tmp_path / "src")
  val = write_split(tmp_path / "src", split="val", categories=CATEGORIES[:3])
  (tmp_path / "src" / "panoptic_train" / "img2.png").unlink()
  with pytest.raises(ValueError) as e:
    registry.get_builder("coco_panoptic", splits={"train": train, "validation": val}, data_dir=tmp_path / "tfds")
  msg = str(e.value)
  assert msg.startswith("COCO panoptic data: 4 problems, nothing was prepared"), msg
  assert "img2.png does not exist" in msg
  assert msg.count("has category_id 5, not among the categories [1, 3, 7]") == 2  # val's images 1 and 2 (sky)
  assert "list different categories" in msg and "every split must list the same categories" in msg
  assert not list((tmp_path / "tfds").rglob("*.array_record*"))


def test_bad_json_and_non_rgb_png(tmp_path):
  train = write_split(tmp_path / "src")
  Image.fromarray(id_maps()[2][0].astype(np.uint8)).save(train[2] / "img2.png")  # grey
  with pytest.raises(ValueError, match=r"panoptic PNG .*img2.png is PIL mode L, not RGB"):
    registry.get_builder("coco_panoptic", splits={"train": train}, data_dir=tmp_path / "tfds")
  train[1].write_text("{not json")
  with pytest.raises(ValueError, match="is not valid JSON"):
    registry.get_builder("coco_panoptic", splits={"train": train}, data_dir=tmp_path / "tfds")
  with pytest.raises(ValueError, match="dataset name 'a b'"):
    coco.make_builder(splits={"train": train}, name="a b")
