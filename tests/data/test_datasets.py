"""Tests for segjax.data.datasets: the registry (specs, names, splits and their errors) over every kind of dataset.

Builders' own data are tested beside each builder (test_shapes, test_isbi2012, test_camvid, ...); here the registry
is read as callers read it.
"""

import numpy as np
import pytest

from segjax.data import datasets
from tests.conftest import as_str as _as_str


def test_registry_specs():
  assert set(datasets.DATASETS) == {
      "shapes", "isbi2012", "camvid", "lfw_parts", "voc2012", "ade20k", "oxford_iiit_pet", "oxford_iiit_pet_trimap",
      "cityscapes", "scene_parse150", "scene_parse150_ade150"}
  assert datasets.known_names() == sorted([*datasets.DATASETS, "folder"])
  for name, spec in datasets.DATASETS.items():
    assert datasets.get_spec(name) is spec
    assert spec.name == name
    assert len(spec.palette) == spec.num_classes
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c)
               for c in spec.palette)
  assert datasets.get_spec("shapes").num_classes == 6
  assert datasets.get_spec("shapes").tfds_name == "segjax_shapes"
  assert datasets.get_spec("isbi2012").tfds_name == "isbi2012_membrane"
  assert datasets.get_spec("isbi2012").ignore_label == 255
  assert datasets.get_spec("camvid").num_classes == 11
  assert datasets.get_spec("camvid").ignore_label == 11
  assert datasets.get_spec("voc2012").num_classes == 21 and datasets.get_spec("voc2012").ignore_label == 255
  assert datasets.get_spec("cityscapes").num_classes == 19
  assert datasets.get_spec("ade20k").num_classes == 150
  assert datasets.get_spec("lfw_parts").class_names == ("background", "hair", "skin")


def test_which_datasets_need_a_manual_dir(tmp_path):
  # The builders of ours read the user's files, except the generated shapes; of the catalog, only Cityscapes
  # (registration needed) does not download itself.
  assert {name for name, spec in datasets.DATASETS.items() if spec.needs_manual_dir} == {
      "isbi2012", "camvid", "lfw_parts", "voc2012", "ade20k", "cityscapes"}
  with pytest.raises(ValueError, match=r"--config\.dataset\.manual_dir="):
    datasets.get_builder("ade20k", data_dir=tmp_path)


def test_unknown_dataset_lists_known_names():
  with pytest.raises(ValueError, match="camvid.*folder.*isbi2012.*shapes"):
    datasets.get_spec("kitti")
  with pytest.raises(ValueError, match="config.dataset block"):
    datasets.get_spec("folder")


def test_split_slicing(shapes_data_dir):
  full = datasets.data_source("shapes", "train", data_dir=shapes_data_dir)
  head = datasets.data_source("shapes", "train[:25]", data_dir=shapes_data_dir)
  tail = datasets.data_source("shapes", "test[90%:]", data_dir=shapes_data_dir)
  assert len(head) == 25 and len(tail) == 20
  np.testing.assert_array_equal(head[24]["image"], full[24]["image"])
  assert _as_str(tail[0]["filename"]) == "test_000180"


def test_unknown_split_lists_available(shapes_data_dir):
  with pytest.raises(ValueError, match=r"'val'.*train.*validation.*test"):
    datasets.data_source("shapes", "val", data_dir=shapes_data_dir)
  with pytest.raises(ValueError, match="available splits"):
    datasets.data_source("shapes", "train[:5]+holdout", data_dir=shapes_data_dir)


def test_get_builder_reuses_prepared_data(shapes_data_dir):
  builder = datasets.get_builder("shapes", data_dir=shapes_data_dir)
  assert builder.is_prepared()
  assert builder.info.splits["train"].num_examples == 2000
