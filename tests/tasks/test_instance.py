"""The instance task (Mask R-CNN) on the shared core: one step on 8 devices equals one on 1 device; train.py is
SIGKILLed and resumes bitwise; the evaluation during training reports COCO AP equal to feeding pycocotools the
same detections image by image; frozen parameters never move; bad recipes are refused with the key to change."""

from __future__ import annotations

import json

import chex
import jax
import numpy as np
import pytest

from segjax import experiment, forward
from segjax.evaluation import coco
from segjax.evaluation import instance as instance_eval
from segjax.training import loop
from tests.conftest import REPO
from tests.tasks import cli

RECIPE = REPO / "tests" / "tasks" / "instance_recipe.py"


def _config(data_dir, **overrides):
  return cli.recipe_config(RECIPE, data_dir, **overrides)


def test_one_step_on_8_devices_equals_1_device(instance_data_dir):
  assert jax.device_count() == 8
  # SGD (Mask R-CNN's optimiser): its update is proportional to the gradient, so the parameters compare the
  # gradients. Adam's first update is lr * g / |g|, which turns a gradient of 1e-9 (rounding noise around 0 that
  # differs with the reduction order over devices) into a full step of either sign.
  config = _config(instance_data_dir, **{"optimizer.name": "sgd", "optimizer.learning_rate": 0.02})
  batch = cli.first_batch(experiment.build(config, jax.devices()[:1]))
  assert batch["valid"].sum() > 0 and batch["masks"].shape == (8, 8, 64, 64)
  init, p1, m1 = cli.one_step(config, jax.devices()[:1], batch)
  _, p8, m8 = cli.one_step(config, jax.devices(), batch)
  for key in ("loss", "loss_objectness", "loss_classifier", "loss_box_reg", "loss_mask"):
    np.testing.assert_allclose(m1[key], m8[key], rtol=1e-5, atol=1e-6, err_msg=key)
  assert np.isfinite(m1["loss"]) and m1["num_positive_rois"] > 0
  chex.assert_trees_all_close(p1, p8, rtol=1e-5, atol=1e-5)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(p1)))


def test_bad_instance_recipes_name_the_key(instance_data_dir, tmp_path):
  cases = [({"model.name": "unet"}, "model.name"), ({"dataset.crop_size": (60, 64)}, "multiples of 32"),
           ({"dataset.name": "shapes"}, "instance datasets are"), ({"instance.max_instances": 0}, "max_instances")]
  for overrides, message in cases:
    config = _config(instance_data_dir)
    with pytest.raises(ValueError, match=message):
      for key, value in overrides.items():
        node, leaf = key.split(".")
        config[node][leaf] = value
      experiment.build(config, jax.devices()[:1])
  config = _config(instance_data_dir, **{"instance.max_instances": 4})  # instance_shapes holds up to 6
  with pytest.raises(ValueError, match="config.instance.max_instances"):
    loop.train_and_evaluate(config, tmp_path / "run", progress=False)
  assert not list((tmp_path / "run").glob("checkpoints/*"))


@pytest.mark.slow
def test_instance_task_survives_sigkill_resumes_bitwise_and_scores_coco_ap(instance_data_dir, cli_env, tmp_path):
  config = _config(instance_data_dir)
  workdir, resumed = cli.kill_resume_and_compare(RECIPE, config, instance_data_dir, cli_env, tmp_path)
  # The stem of the small backbone trains here (frozen_bn=False); every loss term was logged each step.
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "loss" in r] == list(range(1, config.num_train_steps + 1))
  assert all(np.isfinite(r["train_loss_mask"]) for r in records if "loss" in r)
  evals = [r for r in records if "eval/box_AP" in r]
  assert [r["step"] for r in evals] == [config.num_train_steps]

  # The evaluator's AP equals pycocotools fed the same detections one image at a time, each image's detections
  # computed alone at its own (padded) size: no image lost, doubled or mixed up by batching and padding.
  exp = experiment.build(config)
  state = jax.device_put(resumed, exp.state_sharding)
  result = exp.task.evaluator(exp).evaluate(state, config.eval_split, progress=False)
  assert evals[-1]["eval/box_AP"] == result.scalars["box_AP"]
  source = exp.task.data_source(config.eval_split)
  example, _ = instance_eval.eval_functions((128, 128), config.instance.max_instances, "instance_shapes", fit=False)
  variables = forward.variables(resumed.params, resumed.batch_stats)
  reference_eval = coco.CocoEvaluator(exp.task.object_class_names(exp.spec))
  for index in range(len(source)):
    ex = example(source[index], index)
    dets = instance_eval.detect(exp, variables, ex["image"][None], ex["image_size"][None])
    reference_eval.add(ex, {k: np.asarray(v)[0] for k, v in dets.items()})
  expected = reference_eval.summarize()
  assert result.details["result"]["num_images"] == len(source) == 16
  for key in ("box", "mask"):
    for name, value in expected[key].items():
      got = result.details["result"][key][name]
      assert (np.isnan(value) and np.isnan(got)) or abs(value - got) < 1e-9, (key, name, value, got)
