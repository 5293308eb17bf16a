"""Tests for segjax.data.instance.registry: names, options, specs and split errors (tiny folder datasets)."""

from __future__ import annotations

import numpy as np
import pytest

from segjax.data.instance import pipeline
from segjax.data.instance import registry
from tests.data.instance.common import write_folder


def test_unknown_names_options_and_splits(tmp_path):
  with pytest.raises(ValueError, match=r"Unknown instance dataset 'cocoa'; known: \['instance_shapes', 'coco', "):
    registry.make_builder("cocoa")
  with pytest.raises(ValueError, match="instance_shapes takes no options"):
    registry.make_builder("instance_shapes", images_dir="x")
  with pytest.raises(TypeError):
    registry.make_builder("instance_folder", manual_dir=tmp_path, not_an_option=1)
  write_folder(tmp_path, penn_fudan=False)
  kw = dict(manual_dir=tmp_path, data_dir=tmp_path / "tfds", validation_fraction=0.0)
  with pytest.raises(ValueError, match=r"Unknown split 'validation' \(in 'validation\[:2\]'\).*available splits: "
                     r"\['train'\]"):
    registry.data_source("instance_folder", "validation[:2]", **kw)
  with pytest.raises(ValueError, match="holds no examples"):
    registry.data_source("instance_folder", "train[1:1]", **kw)
  assert len(registry.data_source("instance_folder", "train[:2]", **kw)) == 2


def test_spec_from_metadata_and_the_max_instances_check(tmp_path):
  write_folder(tmp_path, penn_fudan=False)
  names = tuple(f"c{i}" for i in range(12))
  kw = dict(manual_dir=tmp_path, data_dir=tmp_path / "tfds", validation_fraction=0.0, class_names=names)
  registry.get_builder("instance_folder", **kw)
  spec = registry.get_spec("instance_folder", **kw)  # a fresh builder: read back from the prepared copy
  assert spec.class_names == ("background", *names) and spec.num_classes == 13 and spec.num_object_classes == 12
  assert len(spec.palette) == 13 and len(set(spec.palette)) == 13 and spec.palette[0] == (0, 0, 0)
  assert spec.tfds_name.startswith("segjax_instance_folder/instances-")
  pipeline.check_max_instances(spec.max_objects, "train[:2]", 2, "toy")
  with pytest.raises(ValueError, match=r"Split 'train' of toy holds an example with 2 instances .* more than "
                     r"config.instance.max_instances=1: raise --config.instance.max_instances to at least 2"):
    pipeline.check_max_instances(spec.max_objects, "train[:2]", 1, "toy")
  # The host transform agrees with the metadata: the first example (two instances) fills two rows.
  source = registry.data_source("instance_folder", "train", **kw)
  fields = pipeline.TrainTransform((12, 16), 2).random_map(source[0], np.random.default_rng(0))
  assert fields["valid"].tolist() == [1, 1]
