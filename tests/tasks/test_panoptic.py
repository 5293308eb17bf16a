"""The panoptic task (Panoptic FPN) on the shared core: one step on 8 devices equals one on 1 device; train.py is
SIGKILLed and resumes bitwise; the evaluation during training reports the PQ of fusing and scoring each image
alone; bad recipes are refused with the key to change."""

from __future__ import annotations

import json

import chex
import jax
import numpy as np
import pytest

from segjax import experiment, forward
from segjax.apps import eval as eval_app
from segjax.data.panoptic import features
from segjax.evaluation import instance as instance_eval
from segjax.evaluation import panoptic as panoptic_eval
from segjax.evaluation import panoptic_quality
from segjax.training import loop
from tests.conftest import REPO
from tests.tasks import cli

RECIPE = REPO / "tests" / "tasks" / "panoptic_recipe.py"


def _config(data_dir, **overrides):
  return cli.recipe_config(RECIPE, data_dir, **overrides)


def test_one_step_on_8_devices_equals_1_device(panoptic_data_dir):
  assert jax.device_count() == 8
  # SGD: its update is proportional to the gradient, so the parameters compare the gradients (see test_instance).
  config = _config(panoptic_data_dir, **{"optimizer.name": "sgd", "optimizer.learning_rate": 0.02})
  batch = cli.first_batch(experiment.build(config, jax.devices()[:1]))
  assert batch["sem_seg"].shape == (8, 64, 64) and batch["valid"].sum() > 0
  assert set(np.unique(batch["sem_seg"])) <= {0, 1, 2, 3, 255}
  init, p1, m1 = cli.one_step(config, jax.devices()[:1], batch)
  _, p8, m8 = cli.one_step(config, jax.devices(), batch)
  for key in ("loss", "loss_sem_seg", "loss_classifier", "loss_mask"):
    np.testing.assert_allclose(m1[key], m8[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # The joint loss: the instance terms (weights 1) plus 0.5 x the semantic one.
  instance_terms = sum(m1[k] for k in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",
                                       "loss_mask"))
  np.testing.assert_allclose(m1["loss"], instance_terms + 0.5 * m1["loss_sem_seg"], rtol=1e-5)
  chex.assert_trees_all_close(p1, p8, rtol=1e-5, atol=1e-5)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(init["sem_seg_head"]),
                                                   jax.tree.leaves(p1["sem_seg_head"])))


def test_bad_panoptic_recipes_name_the_key(panoptic_data_dir, tmp_path):
  cases = [({"model.name": "mask_rcnn"}, "model.name"), ({"dataset.name": "instance_shapes"}, "panoptic datasets"),
           ({"panoptic.semantic_loss_weight": -1.0}, "semantic_loss_weight"),
           ({"panoptic.fusion.overlap_threshold": 1.5}, "overlap_threshold"),
           ({"dataset.crop_size": (60, 64)}, "multiples of 32")]
  for overrides, message in cases:
    with pytest.raises(ValueError, match=message):
      experiment.build(_config(panoptic_data_dir, **overrides), jax.devices()[:1])
  config = _config(panoptic_data_dir, **{"instance.max_instances": 4})  # panoptic_shapes holds up to 6 things
  with pytest.raises(ValueError, match="config.instance.max_instances"):
    loop.train_and_evaluate(config, tmp_path / "run", progress=False)
  assert not list((tmp_path / "run").glob("checkpoints/*"))


@pytest.mark.slow
def test_panoptic_task_survives_sigkill_resumes_bitwise_and_scores_pq(panoptic_data_dir, cli_env, tmp_path):
  config = _config(panoptic_data_dir)
  workdir, resumed = cli.kill_resume_and_compare(RECIPE, config, panoptic_data_dir, cli_env, tmp_path)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "loss" in r] == list(range(1, config.num_train_steps + 1))
  assert all(np.isfinite(r["train_loss_sem_seg"]) for r in records if "loss" in r)
  evals = [r for r in records if "eval/PQ" in r]
  assert [r["step"] for r in evals] == [config.num_train_steps]

  # The batched evaluator's PQ equals each image run alone at its own size, fused and scored one at a time.
  exp = experiment.build(config)
  state = jax.device_put(resumed, exp.state_sharding)
  result = exp.task.evaluator(exp).evaluate(state, config.eval_split, progress=False)
  assert evals[-1]["eval/PQ"] == result.scalars["PQ"]
  source = exp.task.data_source(config.eval_split)
  variables = forward.variables(resumed.params, resumed.batch_stats)
  fusion = panoptic_eval.fusion_config(config)
  reference_pq = panoptic_quality.PanopticEvaluator(exp.spec.categories_by_id)
  for index in range(len(source)):
    truth = features.decode(source[index])
    size = np.array(truth.image.shape[:2], np.int32)
    out = instance_eval.detect(exp, variables, truth.image[None], size[None])
    semantic = np.argmax(np.asarray(out.pop("sem_seg"))[0], axis=-1)
    pan, segs = panoptic_eval.predict_image(exp.spec, {k: np.asarray(v)[0] for k, v in out.items()}, semantic,
                                            size, (1.0, 1.0), size, fusion)
    reference_pq.add(pan, {s["id"]: s for s in segs}, truth.panoptic, truth.segments_by_id)
  expected = reference_pq.summarize()
  got = result.details["result"]
  assert got["num_images"] == len(source) == 16
  for group in ("All", "Things", "Stuff"):
    for key in ("pq", "sq", "rq", "n"):
      assert abs(expected[group][key] - got[group][key]) < 1e-9, (group, key)

  # eval.py's outputs for the same checkpoint: metrics.json (no NaN), one CSV row per category, the panels.
  eval_app.run_eval(config, str(workdir), split=config.eval_split)
  out_dir = workdir / "eval" / config.eval_split
  written = json.loads((out_dir / "metrics.json").read_text())
  assert written["All"]["pq"] == pytest.approx(got["All"]["pq"], abs=1e-12) and written["checkpoint_step"] == 16
  assert set(written["semantic"]) >= {"mean_iou", "pixel_accuracy", "per_class"} and written["num_images"] == 16
  rows = (out_dir / "per_class.csv").read_text().splitlines()
  assert len(rows) == 1 + len(exp.spec.categories) and rows[0].startswith("category_id,name,isthing,pq")
  assert len(list((out_dir / "images").glob("*.png"))) == config.num_visualizations
