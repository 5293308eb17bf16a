"""predict.py with a panoptic recipe: per image a COCO panoptic PNG and an overlay, for the run COCO panoptic's
result JSON; the PNGs decode to the map the evaluation's `predict_image` makes of the same image; nothing is
overwritten unless asked; an unreadable input is named and skipped."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from segjax import config as config_lib
from segjax import experiment, forward
from segjax.apps import predict, predict_panoptic
from segjax.data.panoptic import registry
from segjax.evaluation import instance as instance_eval
from segjax.evaluation import panoptic as panoptic_eval
from segjax.evaluation import panoptic_viz
from segjax.training import loop
from tests.conftest import REPO


@pytest.fixture(scope="module")
def trained(panoptic_data_dir, tmp_path_factory):
  """(config, workdir) of the tiny recipe trained for 8 steps (a few seconds; no evaluation during training)."""
  config = config_lib.load_recipe(str(REPO / "tests" / "tasks" / "panoptic_recipe.py"))
  config.dataset.data_dir = panoptic_data_dir
  config.num_train_steps, config.checkpoint_every_steps, config.eval_every_steps = 8, 8, 0
  # 8 steps leave every detection's score low: keep them all so that the maps hold things as well as stuff.
  config.panoptic.fusion.instances_score_thresh = 0.0
  workdir = tmp_path_factory.mktemp("panoptic_run")
  loop.train_and_evaluate(config, workdir, progress=False)
  return config, str(workdir)


def _expected(config, workdir, image):
  """The panoptic map and segments of `image` as the evaluation makes them, computed here: the model on one device
  at the image's size padded to multiples of 32 (at least 64), jitted as predict jits it (op-by-op dispatch rounds
  differently), then `predict_image`."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.mesh.data, config.mesh.spatial, config.mesh.model = -1, 1, 1
  exp, state, _ = experiment.restore(config, workdir, None, "predict with", jax.local_devices()[:1])
  variables = forward.variables(state.params, state.batch_stats)

  def infer(v, images, sizes):
    out = instance_eval.detect(exp, v, images, sizes)
    return out, jnp.argmax(out.pop("sem_seg"), axis=-1).astype(jnp.int32)

  h, w = image.shape[:2]
  padded = np.zeros((max(64, -(-h // 32) * 32), max(64, -(-w // 32) * 32), 3), np.uint8)
  padded[:h, :w] = image
  dets, semantic = jax.tree.map(lambda a: np.asarray(a)[0],
                                jax.jit(infer)(variables, padded[None], np.array([[h, w]], np.int32)))
  return exp.spec, panoptic_eval.predict_image(exp.spec, dets, semantic, (h, w), (1.0, 1.0),
                                               (h, w), panoptic_eval.fusion_config(config))


def test_predict_writes_coco_panoptic_pngs_overlays_and_json(trained, panoptic_data_dir, tmp_path):
  config, workdir = trained
  inputs = tmp_path / "in"
  inputs.mkdir()
  source = registry.data_source(registry.SHAPES, "test[:2]", data_dir=panoptic_data_dir)
  # b is cropped to 100 x 90: run padded to 128 x 96, fused at 100 x 90.
  images = {"a.png": np.asarray(source[0]["image"]), "b.png": np.asarray(source[1]["image"])[:100, :90]}
  for name, image in images.items():
    Image.fromarray(image).save(inputs / name)

  out = tmp_path / "out"
  assert predict_panoptic.run(config, workdir, str(inputs), str(out), progress=False) == []
  content = json.loads((out / "predictions.json").read_text())
  things = 0
  for image_id, (name, image) in enumerate(sorted(images.items())):
    h, w = image.shape[:2]
    spec, (pan, segments) = _expected(config, workdir, image)
    # COCO panoptic's RGB encoding, decoded here by its formula rather than by segjax's rgb2id.
    rgb = np.asarray(Image.open(out / "panoptic" / name).convert("RGB")).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    assert ids.shape == (h, w)
    np.testing.assert_array_equal(ids, pan)
    annotation = content["annotations"][image_id]
    assert annotation["image_id"] == image_id and annotation["file_name"] == name
    infos = {s["id"]: s for s in annotation["segments_info"]}
    present = set(np.unique(ids).tolist()) - {0}
    assert set(infos) == present and present
    by_id = {s["id"]: s for s in segments}
    for seg_id, info in infos.items():
      assert info["area"] == int((ids == seg_id).sum())
      assert info["category_id"] == by_id[seg_id]["category_id"]
      assert spec.categories_by_id[info["category_id"]]["isthing"] == by_id[seg_id]["isthing"]
      things += by_id[seg_id]["isthing"]
    assert content["images"][image_id] == {"id": image_id, "file_name": name, "height": h, "width": w}
    overlay = Image.open(out / "overlays" / name)
    assert overlay.size == (w, h)
    names = {c.id: c.name for c in spec.categories}
    np.testing.assert_array_equal(np.asarray(overlay.convert("RGB")),
                                  panoptic_viz.overlay(image, pan, segments, spec.category_colours, alpha=0.5,
                                                       names=names))
  assert things > 0  # the maps hold things, not only stuff
  assert content["categories"] == [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in spec.categories]

  with pytest.raises(ValueError, match="--overwrite"):
    predict_panoptic.run(config, workdir, str(inputs), str(out), progress=False)
  with pytest.raises(ValueError, match="is the --input directory"):
    predict_panoptic.run(config, workdir, str(inputs), str(inputs), progress=False)
  with pytest.raises(ValueError, match="--member"):
    predict_panoptic.run(config, workdir, str(inputs), str(tmp_path / "out2"), members=[(config, workdir, None)],
                         progress=False)
  with pytest.raises(ValueError, match="predict_panoptic.run"):  # the semantic runner refuses the recipe
    predict.run(config, workdir, str(inputs), str(tmp_path / "out3"), progress=False)


def test_unreadable_input_is_named_and_skipped_outputs_need_overwrite(trained, tmp_path):
  config, workdir = trained
  inputs = tmp_path / "in"
  inputs.mkdir()
  bad = inputs / "notes.png"
  bad.write_text("not an image")
  out = tmp_path / "out"
  failed = predict_panoptic.run(config, workdir, str(inputs), str(out), progress=False)
  assert [path for path, _ in failed] == [bad] and str(bad) in failed[0][1]
  content = json.loads((out / "predictions.json").read_text())
  assert content["annotations"] == [] and content["images"] == []
  # The run's JSON alone blocks a second run, which --overwrite lets through.
  with pytest.raises(ValueError, match="predictions.json.*--overwrite"):
    predict_panoptic.run(config, workdir, str(inputs), str(out), progress=False)
  assert len(predict_panoptic.run(config, workdir, str(inputs), str(out), overwrite=True, progress=False)) == 1
