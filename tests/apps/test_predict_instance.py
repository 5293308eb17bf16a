"""predict.py with an instance recipe: per image an instance-id PNG and an overlay, for the run a COCO results
JSON and the id table; outputs equal the model's detections computed directly; nothing is overwritten."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_lib

from segjax import config as config_lib
from segjax import forward
from segjax.apps import predict, predict_instance
from segjax.data.instance import registry
from segjax.evaluation import coco
from segjax.evaluation import instance as instance_eval
from tests.conftest import REPO, random_checkpoint


def test_predict_writes_ids_overlays_and_coco_results(instance_data_dir, tmp_path):
  config = config_lib.load_recipe(str(REPO / "tests" / "tasks" / "instance_recipe.py"))
  config.dataset.data_dir = instance_data_dir
  # Random weights score every class alike: keep every detection (model and drawing thresholds at 0).
  config.instance.score_threshold = 0.0
  config.model.box_score_thresh = 0.0
  exp, state = random_checkpoint(config, tmp_path / "run")
  inputs = tmp_path / "in"
  inputs.mkdir()
  source = registry.data_source(registry.SHAPES, "test[:2]", data_dir=instance_data_dir)
  images = {"a.png": np.asarray(source[0]["image"]), "b.png": np.asarray(source[1]["image"])[:100, :90]}
  for name, image in images.items():
    Image.fromarray(image).save(inputs / name)

  failed = predict_instance.run(config, str(tmp_path / "run"), str(inputs), str(tmp_path / "out"), progress=False)
  assert failed == []
  out = tmp_path / "out"
  results = json.loads((out / "detections.json").read_text())
  table = json.loads((out / "instances.json").read_text())
  variables = forward.variables(state.params, state.batch_stats)
  # Jitted as predict jits it: op-by-op dispatch rounds differently, which random weights amplify.
  detect = jax.jit(lambda v, images, sizes: instance_eval.detect(exp, v, images, sizes))
  for image_id, (name, image) in enumerate(sorted(images.items())):
    h, w = image.shape[:2]
    # Each side padded up to a multiple of 32 (at least 64): 128 -> 128, 100 -> 128, 90 -> 96.
    padded = np.zeros((max(64, -(-h // 32) * 32), max(64, -(-w // 32) * 32), 3), np.uint8)
    padded[:h, :w] = image
    dets = jax.tree.map(lambda a: np.asarray(a)[0], detect(variables, padded[None], np.array([[h, w]], np.int32)))
    valid = dets["valid"].astype(bool)
    mine = [r for r in results if r["image_id"] == image_id]
    assert len(mine) == valid.sum() > 0
    for r, box, score, cls in zip(mine, dets["boxes"][valid], dets["scores"][valid], dets["classes"][valid]):
      np.testing.assert_allclose(r["bbox"], [box[0], box[1], box[2] - box[0], box[3] - box[1]], atol=1e-4)
      assert abs(r["score"] - score) < 1e-6 and r["category_id"] == cls
    pasted = coco.paste_masks(dets["masks"][valid], dets["boxes"][valid], (h, w))
    for r, m in zip(mine, pasted):
      np.testing.assert_array_equal(mask_lib.decode(r["segmentation"]), m)
    # The id map: every pixel of id i belongs to the i-th detection by score, and no higher-scored detection
    # claims it (brute force over the ranked detections).
    ids = np.asarray(Image.open(out / name))
    assert ids.shape == (h, w)
    order = np.argsort(-dets["scores"][valid], kind="stable")
    expected = np.zeros((h, w), np.int64)
    for rank, k in enumerate(order, start=1):
      expected[(pasted[k] > 0) & (expected == 0)] = rank
    np.testing.assert_array_equal(ids, expected)
    entry = table["images"][image_id]
    assert entry["file_name"].endswith(name) and (entry["height"], entry["width"]) == (h, w)
    assert Image.open(out / name.replace(".png", "_overlay.png")).size == (w, h)

  with pytest.raises(ValueError, match="--overwrite"):
    predict_instance.run(config, str(tmp_path / "run"), str(inputs), str(tmp_path / "out"), progress=False)
  with pytest.raises(ValueError, match="--member"):
    predict_instance.run(config, str(tmp_path / "run"), str(inputs), str(tmp_path / "out2"), progress=False,
                members=[(config, str(tmp_path / "run"), None)])
  with pytest.raises(ValueError, match="predict_instance"):  # predict.run is the semantic one; the CLI picks
    predict.run(config, str(tmp_path / "run"), str(inputs), str(tmp_path / "out3"), progress=False)
  with pytest.raises(ValueError, match="is the --input directory"):
    predict_instance.run(config, str(tmp_path / "run"), str(inputs), str(inputs), progress=False)
