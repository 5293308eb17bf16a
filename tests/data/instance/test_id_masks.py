"""Tests for segjax.data.instance.id_masks: a tiny Penn-Fudan-style folder written here, read back against PIL."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segjax.data.instance import registry
from tests.conftest import as_str
from tests.conftest import read_image
from tests.data.instance.common import loop_box
from tests.data.instance.common import write_folder


def by_stem(source):
  return {as_str(source[i]["filename"]): source[i] for i in range(len(source))}


def test_penn_fudan_folder_reads_back(tmp_path):
  images, masks = write_folder(tmp_path / "PennFudanPed")
  kw = dict(manual_dir=tmp_path / "PennFudanPed", data_dir=tmp_path / "tfds", validation_fraction=0.0,
            class_names=("person",))
  spec = registry.get_spec("instance_folder", **kw)
  assert spec.class_names == ("background", "person") and spec.splits == ("train",)
  assert dict(spec.max_objects) == {"train": 2}
  got = by_stem(registry.data_source("instance_folder", "train", **kw))
  assert sorted(got) == ["p1", "p2", "p3"]
  for stem, ex in got.items():
    np.testing.assert_array_equal(ex["image"], read_image(images / f"{stem}.png"))
    ids = read_image(masks / f"{stem}_mask.png")
    present = [i for i in range(1, 256) if (ids == i).any()]
    assert len(ex["objects"]["mask"]) == len(present)
    for j, i in enumerate(present):
      np.testing.assert_array_equal(ex["objects"]["mask"][j][..., 0], (ids == i).astype(np.uint8))
      assert ex["objects"]["bbox"][j].tolist() == loop_box(ids == i)
      assert int(ex["objects"]["label"][j]) == 1 and not ex["objects"]["is_crowd"][j]
  assert int(got["p1"]["image_id"]) == 0 and int(got["p3"]["image_id"]) == 2
  assert len(got["p3"]["objects"]["mask"]) == 0  # an image without objects is stored: a negative


def test_class_tables_json_csv_and_global(tmp_path):
  write_folder(tmp_path, penn_fudan=False)
  tables = tmp_path / "classes"
  tables.mkdir()
  (tables / "p1.json").write_text(json.dumps({"1": "cat", "2": "dog"}))
  (tables / "p2.csv").write_text("id,class\n1,dog\n")
  (tables / "p3.json").write_text("{}")
  kw = dict(manual_dir=tmp_path, data_dir=tmp_path / "tfds", class_names=("cat", "dog"), validation_fraction=0.0)
  got = by_stem(registry.data_source("instance_folder", "train", classes_dir=tables, **kw))
  assert [int(c) for c in got["p1"]["objects"]["label"]] == [1, 2]
  assert [int(c) for c in got["p2"]["objects"]["label"]] == [2]
  got = by_stem(registry.data_source("instance_folder", "train", id_classes={1: "dog", 2: "cat"}, **kw))
  assert [int(c) for c in got["p1"]["objects"]["label"]] == [2, 1]


def test_splits_by_fraction_and_by_file(tmp_path):
  stems = tuple(f"s{i:02d}" for i in range(20))
  write_folder(tmp_path, stems=stems, size=(4, 4), penn_fudan=False)
  spec = registry.get_spec("instance_folder", manual_dir=tmp_path, data_dir=tmp_path / "tfds",
                           validation_fraction=0.3)
  train = registry.data_source("instance_folder", "train", manual_dir=tmp_path, data_dir=tmp_path / "tfds",
                               validation_fraction=0.3)
  val = registry.data_source("instance_folder", "validation", manual_dir=tmp_path, data_dir=tmp_path / "tfds",
                             validation_fraction=0.3)
  assert spec.splits == ("train", "validation") and len(train) + len(val) == 20 and 1 <= len(val) <= 12
  assert not set(by_stem(train)) & set(by_stem(val))
  (tmp_path / "val.txt").write_text("s03\ns07\n")
  (tmp_path / "train.txt").write_text("s01\n")
  files = {"train": tmp_path / "train.txt", "validation": tmp_path / "val.txt"}
  val = registry.data_source("instance_folder", "validation", manual_dir=tmp_path, data_dir=tmp_path / "tfds",
                             split_files=files)
  assert sorted(by_stem(val)) == ["s03", "s07"]
  (tmp_path / "val.txt").write_text("s03\nnope\n")
  with pytest.raises(ValueError, match=r"split file .*val.txt \(validation\) names 1 stem\(s\) without an image"):
    registry.get_builder("instance_folder", manual_dir=tmp_path, data_dir=tmp_path / "tfds", split_files=files)


def _prepare_error(tmp_path, **kw):
  builder = registry.make_builder("instance_folder", manual_dir=tmp_path, data_dir=tmp_path / "tfds",
                                  validation_fraction=0.0, **kw)
  with pytest.raises(ValueError) as e:
    builder.download_and_prepare()
  assert not builder.is_prepared() and not list((tmp_path / "tfds").rglob("*.array_record*"))
  return str(e.value)


def test_bad_files_are_named_with_their_fix(tmp_path):
  images, masks = write_folder(tmp_path, penn_fudan=False)
  Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(masks / "p2.png")  # RGB
  Image.fromarray(np.zeros((5, 5), np.uint8)).save(masks / "p3.png")  # wrong size
  msg = _prepare_error(tmp_path)
  assert msg.startswith("Instance folder data: 2 problems, nothing was prepared")
  assert f"mask {masks / 'p2.png'} has mode RGB; an instance-id mask holds one id per pixel: save it as" in msg
  assert f"mask {masks / 'p3.png'} is 5x5 but its image {images / 'p3.png'} is 12x16 (HxW): re-export" in msg


def test_class_table_problems(tmp_path):
  write_folder(tmp_path, penn_fudan=False)
  tables = tmp_path / "classes"
  tables.mkdir()
  (tables / "p1.json").write_text(json.dumps({"1": "cat"}))
  (tables / "p2.json").write_text(json.dumps({"1": "zebra"}))
  msg = _prepare_error(tmp_path, classes_dir=tables, class_names=("cat",))
  assert "p1.png has id 2, which its class table does not name: add 2 to the table (ids [1])" in msg
  assert "maps id 1 to 'zebra', which class_names ['cat'] does not list" in msg
  assert f"image p3 has no class table {tables}/p3.json (or .csv): write one" in msg


def test_unpaired_files_and_options(tmp_path):
  images, masks = write_folder(tmp_path, penn_fudan=False)
  (masks / "p3.png").unlink()
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(masks / "extra.png")
  with pytest.raises(ValueError) as e:
    registry.make_builder("instance_folder", manual_dir=tmp_path)
  assert f"image {images / 'p3.png'} has no mask" in str(e.value)
  assert f"mask {masks / 'extra.png'} has no image" in str(e.value)
  with pytest.raises(ValueError, match="without 'background'"):
    registry.make_builder("instance_folder", manual_dir=tmp_path, class_names=("background", "x"))
  with pytest.raises(ValueError, match="needs images_dir and masks_dir"):
    registry.make_builder("instance_folder")
  with pytest.raises(ValueError, match="images_dir .*nowhere does not exist"):
    registry.make_builder("instance_folder", images_dir=tmp_path / "nowhere", masks_dir=masks)
