"""Tests for segjax.data.instance.coco: a tiny COCO JSON written here, read back against pycocotools' own COCO."""

from __future__ import annotations

import copy
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO
from PIL import Image

from segjax.data.instance import coco
from segjax.data.instance import registry
from tests.conftest import as_str
from tests.conftest import read_image
from tests.data.instance.common import loop_box


def uncompressed_rle(mask):
  """COCO's uncompressed RLE: run lengths of the column-major mask, starting with a run of zeros."""
  flat = mask.T.reshape(-1)
  counts, value, run = [], 0, 0
  for v in flat:
    if v == value:
      run += 1
    else:
      counts.append(run)
      value, run = v, 1
  counts.append(run)
  return {"size": list(mask.shape), "counts": counts}


def write_coco(root, annotations=None, images=None, split="train"):
  """Images 1 (20x30), 2 (16x16, no objects), 3 (24x20) and an instances JSON with every segmentation kind."""
  rng = np.random.default_rng(0)
  (root / "images").mkdir(parents=True, exist_ok=True)
  images = images if images is not None else [
      {"id": 1, "file_name": "a.png", "height": 20, "width": 30},
      {"id": 2, "file_name": "b.png", "height": 16, "width": 16},
      {"id": 3, "file_name": "c.png", "height": 24, "width": 20}]
  for img in images:
    path = root / "images" / img["file_name"]
    if not path.exists():
      Image.fromarray(rng.integers(0, 256, (img["height"], img["width"], 3), np.uint8)).save(path)
  blob = np.zeros((24, 20), np.uint8)
  blob[3:9, 4:15] = 1
  blob[12:20, 6:9] = 1
  crowd = np.zeros((20, 30), np.uint8)
  crowd[10:18, 18:29] = 1
  rle = mask_utils.encode(np.asfortranarray(blob))
  rle["counts"] = rle["counts"].decode()
  if annotations is None:
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 7, "iscrowd": 0, "bbox": [2, 1, 10, 9],
         "segmentation": [[2, 1, 12, 1, 7, 10]]},  # triangle
        {"id": 11, "image_id": 1, "category_id": 3, "iscrowd": 0, "bbox": [1, 12, 14.5, 7],
         "segmentation": [[1, 12, 6, 12, 6, 17], [10, 13, 15.5, 13, 15.5, 19, 10, 19]]},  # two parts
        {"id": 12, "image_id": 1, "category_id": 5, "iscrowd": 1, "bbox": [18, 10, 11, 8],
         "segmentation": uncompressed_rle(crowd)},
        {"id": 13, "image_id": 3, "category_id": 3, "iscrowd": 0, "bbox": [4, 3, 11, 17], "segmentation": rle}]
  data = {"images": images, "annotations": annotations,
          "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 5, "name": "bird"}]}
  path = root / f"instances_{split}.json"
  path.write_text(json.dumps(data))
  return root / "images", path


def test_prepared_examples_match_pycocotools(tmp_path):
  images_dir, ann = write_coco(tmp_path / "src")
  kw = dict(splits={"train": (images_dir, ann)}, data_dir=tmp_path / "tfds")
  spec = registry.get_spec("coco", **kw)
  # Contiguous ids in ascending category id order; the COCO ids kept for writing results.
  assert spec.class_names == ("background", "cat", "bird", "dog") and spec.category_ids == (0, 3, 5, 7)
  assert dict(spec.max_objects) == {"train": 3}
  source = registry.data_source("coco", "train", **kw)
  reference = COCO(str(ann))
  assert [int(source[i]["image_id"]) for i in range(len(source))] == [1, 2, 3]
  for i in range(len(source)):
    got = source[i]
    iid = int(got["image_id"])
    info = reference.imgs[iid]
    assert as_str(got["filename"]) == info["file_name"][:-4]
    np.testing.assert_array_equal(got["image"], read_image(images_dir / info["file_name"]))
    anns = reference.imgToAnns[iid]
    assert len(got["objects"]["mask"]) == len(anns)
    for j, a in enumerate(anns):
      np.testing.assert_array_equal(got["objects"]["mask"][j][..., 0], reference.annToMask(a))
      np.testing.assert_array_equal(coco.ann_to_mask(a["segmentation"], info["height"], info["width"]),
                                    reference.annToMask(a))
      assert spec.category_ids[int(got["objects"]["label"][j])] == a["category_id"]
      x, y, w, h = a["bbox"]
      np.testing.assert_allclose(got["objects"]["bbox"][j], [x, y, x + w, y + h])
      assert bool(got["objects"]["is_crowd"][j]) == bool(a["iscrowd"])
  assert reference.annToMask(reference.anns[12]).sum() == 88  # the uncompressed crowd RLE decodes to its mask
  # Prepared once: a second call reuses the copy (same config name); an edited JSON prepares afresh.
  assert registry.make_builder("coco", **kw).is_prepared()
  write_coco(tmp_path / "src", annotations=[])
  assert not registry.make_builder("coco", **kw).is_prepared()


def test_degenerate_bbox_falls_back_to_the_mask_box(tmp_path):
  # A zero-width bbox would give the box regression log(0); the mask (checked to have pixels) gives the box.
  images_dir, ann = write_coco(tmp_path / "src", annotations=[
      {"id": 1, "image_id": 1, "category_id": 3, "bbox": [4, 2, 0, 5], "segmentation": [[2, 1, 12, 1, 7, 10]]}])
  source = registry.data_source("coco", "train", splits={"train": (images_dir, ann)}, data_dir=tmp_path / "tfds")
  mask = source[0]["objects"]["mask"][0][..., 0]
  assert source[0]["objects"]["bbox"][0].tolist() == loop_box(mask)


def test_coco2017_layout_from_manual_dir(tmp_path):
  root = tmp_path / "coco"
  images_dir, ann = write_coco(tmp_path / "src")
  (root / "annotations").mkdir(parents=True)
  images_dir.rename(root / "val2017")
  ann.rename(root / "annotations" / "instances_val2017.json")
  source = registry.data_source("coco", "validation", data_dir=tmp_path / "tfds", manual_dir=root)
  assert len(source) == 3
  with pytest.raises(ValueError, match="neither annotations/instances_train2017.json"):
    registry.make_builder("coco", manual_dir=tmp_path)
  with pytest.raises(ValueError, match="needs its files"):
    registry.make_builder("coco")


def _ann(**kw):
  base = {"id": 40, "image_id": 1, "category_id": 3, "iscrowd": 0, "bbox": [2, 1, 10, 9],
          "segmentation": [[2, 1, 12, 1, 7, 10]]}
  return {**base, **kw}


BAD = [
    (_ann(segmentation=[[2, 1, 12, 1]]), r"annotation 40 \(image 1\) has polygon 0 with 2 points; a polygon needs "
     r"at least 3 \(x, y\) points: fix the polygon or delete it"),
    (_ann(segmentation=[[2, 1, 12, 1, 7]]), "odd number of coordinates"),
    (_ann(image_id=99), r"annotation 40 names image id 99, which the file's images list does not hold: add the "
     r"image to 'images' or delete the annotation"),
    (_ann(bbox=[25, 1, 10, 9]), r"annotation 40 \(image 1\) has bbox \[x, y, w, h\] = \[25, 1, 10, 9\] outside its "
     r"30x20 image: fix the box"),
    (_ann(segmentation=[[0, 0, 5, 0, 10, 0]]), r"annotation 40 \(image 1\) has a mask without pixels .*: redraw its "
     r"segmentation or delete the annotation"),
    (_ann(category_id=4), r"annotation 40 \(image 1\) has category_id 4, which the categories list does not hold "
     r"\(ids \[3, 5, 7\]\): fix the annotation's category_id or add the category"),
    (_ann(segmentation={"size": [5, 5], "counts": "00"}), r"has an RLE of size \[5, 5\] but its image is 20x30"),
    (_ann(segmentation=None), "has no usable segmentation"),
]


@pytest.mark.parametrize("annotation,message", BAD, ids=[m[:20] for _, m in BAD])
def test_bad_annotations_name_file_annotation_and_fix(tmp_path, annotation, message):
  images_dir, ann = write_coco(tmp_path / "src", annotations=[annotation])
  builder = registry.make_builder("coco", splits={"train": (images_dir, ann)}, data_dir=tmp_path / "tfds")
  with pytest.raises(ValueError, match=message) as e:
    builder.download_and_prepare()
  assert str(ann) in str(e.value) and "Nothing was prepared" in str(e.value)
  assert not builder.is_prepared()
  assert not list((tmp_path / "tfds").rglob("*.array_record*"))  # nothing written


def test_missing_image_file_and_every_problem_listed_once(tmp_path):
  images_dir, ann = write_coco(tmp_path / "src", annotations=[_ann(segmentation=[[1, 1, 2, 2]]), _ann(image_id=9)])
  (images_dir / "b.png").unlink()
  with pytest.raises(ValueError) as e:
    registry.get_builder("coco", splits={"train": (images_dir, ann)}, data_dir=tmp_path / "tfds")
  msg = str(e.value)
  assert msg.startswith("COCO data: 3 problems, nothing was prepared")
  assert f"image 2's file {images_dir / 'b.png'} does not exist: put it in {images_dir}" in msg
  assert "has polygon 0 with 2 points" in msg and "names image id 9" in msg


def test_splits_must_agree_on_categories_and_files_must_exist(tmp_path):
  images_dir, train = write_coco(tmp_path / "src")
  _, val = write_coco(tmp_path / "src", split="val")
  data = json.loads(val.read_text())
  data["categories"] = data["categories"][:2]
  data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 5]
  val.write_text(json.dumps(data))
  with pytest.raises(ValueError, match="list different categories.*every split must list the same categories"):
    registry.get_builder("coco", splits={"train": (images_dir, train), "validation": (images_dir, val)},
                         data_dir=tmp_path / "tfds")
  with pytest.raises(ValueError, match="annotations file .*nope.json does not exist"):
    registry.make_builder("coco", splits={"train": (images_dir, tmp_path / "nope.json")})
  with pytest.raises(ValueError, match="images folder .* does not exist"):
    registry.make_builder("coco", splits={"train": (tmp_path / "nowhere", train)})
  data = json.loads(train.read_text())
  del data["images"][0]["height"]
  train.write_text(json.dumps(data))
  with pytest.raises(ValueError, match=r"images\[0\] \(a.png\) has no height: every image entry needs id, "
                     "file_name, height and width"):
    registry.get_builder("coco", splits={"train": (images_dir, train)}, data_dir=tmp_path / "tfds")
  train.write_text("{not json")
  with pytest.raises(ValueError, match="is not valid JSON"):
    registry.get_builder("coco", splits={"train": (images_dir, train)}, data_dir=tmp_path / "tfds")


def test_image_size_disagreeing_with_the_json_names_both(tmp_path):
  images = [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}]
  images_dir, ann = write_coco(tmp_path / "src", annotations=[], images=images)
  bad = copy.deepcopy(images)
  bad[0]["height"] = 21
  ann.write_text(json.dumps({"images": bad, "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
  with pytest.raises(ValueError, match=r"image 1 is 21x30 .* in the JSON but its file .*a.png is 20x30"):
    registry.get_builder("coco", splits={"train": (images_dir, ann)}, data_dir=tmp_path / "tfds")
