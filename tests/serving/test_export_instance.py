"""jax.export of an instance checkpoint: the artifact, loaded by segjax.serving, returns the detections the model
computes in segjax on the same padded images; wrong inputs are refused naming the fix."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from segjax import config as config_lib
from segjax import forward, serving
from segjax.data.instance import registry
from segjax.evaluation import instance as instance_eval
from segjax.ops import conv as conv_lib
from segjax.serving import export_instance
from tests.conftest import REPO, random_checkpoint


def test_exported_detector_equals_segjax(instance_data_dir, tmp_path):
  config = config_lib.load_recipe(str(REPO / "tests" / "tasks" / "instance_recipe.py"))
  config.dataset.data_dir = instance_data_dir
  config.model.box_score_thresh = 0.0  # random weights: keep every detection, so there is much to compare
  exp, state = random_checkpoint(config, tmp_path / "run")
  out = export_instance.export_checkpoint(config, tmp_path / "run", tmp_path / "export", height=128, width=128)
  model = serving.load(out)
  assert isinstance(model, serving.ExportedDetector) and model.size == (128, 128)
  assert model.class_names == exp.spec.class_names[1:]

  source = registry.data_source(registry.SHAPES, "test[:1]", data_dir=instance_data_dir)
  image = np.zeros((1, 128, 128, 3), np.uint8)
  image[0, :100, :96] = np.asarray(source[0]["image"])[:100, :96]
  sizes = np.array([[100, 96]], np.int32)
  got = model(image, sizes)
  with conv_lib.backend("xla"):
    want = jax.jit(lambda v, i, s: instance_eval.detect(exp, v, i, s))(
        forward.variables(state.params, state.batch_stats), image, sizes)
  assert set(got) == {"boxes", "scores", "classes", "valid", "masks"}
  assert got["masks"].shape == (1, config.model.detections_per_img, 28, 28)
  np.testing.assert_array_equal(got["valid"], np.asarray(want["valid"]))
  assert got["valid"].sum() > 0 and (got["boxes"][got["valid"]][:, 2:] <= [96, 100]).all()
  for key in ("boxes", "scores", "masks"):
    np.testing.assert_allclose(got[key], np.asarray(want[key]), rtol=1e-5, atol=1e-4, err_msg=key)
  np.testing.assert_array_equal(got["classes"], np.asarray(want["classes"]))

  with pytest.raises(ValueError, match="pad smaller images"):
    model(np.zeros((1, 96, 128, 3), np.uint8))
  with pytest.raises(ValueError, match="multiples of 32"):
    export_instance.export_checkpoint(config, tmp_path / "run", tmp_path / "bad", height=100, width=128)
