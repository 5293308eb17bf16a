"""A second task plugs into the unchanged core: tests/tasks/box_task.py (a padded, variable number of boxes per
image, a metric computed on the host) trains through `train_and_evaluate`, is SIGKILLed in the real train.py,
resumes bitwise and is evaluated; its helpers and its evaluation are checked against independent references."""

from __future__ import annotations

import json
import signal
import time

import jax
import numpy as np
import pytest

from segjax import config as config_lib
from segjax import experiment, forward, tasks
from segjax.data import datasets, pipeline
from segjax.training import loop
from tests.conftest import REPO
from tests.tasks import cli
from tests.tasks import box_task

RECIPE = REPO / "tests" / "tasks" / "box_recipe.py"


def _config(data_dir, **overrides):
  config = config_lib.load_recipe(str(RECIPE))
  config.dataset.data_dir = data_dir
  for key, value in overrides.items():
    config[key] = value
  return config


def test_boxes_and_rasterising_match_brute_force():
  rng = np.random.default_rng(0)
  label = rng.integers(0, 4, (12, 9))
  weight = (rng.random((12, 9)) > 0.1).astype(np.float32)
  boxes, valid = box_task.boxes_of(label, weight)
  present = sorted(set(label[weight > 0].tolist()) - {0})
  assert valid.sum() == len(present) and valid.shape == (box_task.MAX_BOXES,)
  for box, c in zip(boxes, present):
    inside = [(r, q) for r in range(12) for q in range(9) if label[r, q] == c and weight[r, q] > 0]
    assert tuple(box) == (min(r for r, _ in inside), min(q for _, q in inside), max(r for r, _ in inside) + 1,
                          max(q for _, q in inside) + 1)
  many = np.stack([boxes, np.zeros_like(boxes)])
  got = np.asarray(box_task.rasterise(many, np.stack([valid, np.zeros_like(valid)]), 12, 9))
  np.testing.assert_array_equal(got[0], box_task.host_rasterise(boxes, valid, (12, 9)))
  assert not got[1].any()


def test_an_unknown_task_is_refused_with_the_fix():
  with pytest.raises(ValueError, match="choose one of"):
    tasks.resolve("instance_typo")
  with pytest.raises(ValueError, match="cannot import"):
    tasks.resolve("tests.tasks.nowhere:Task")
  with pytest.raises(ValueError, match="not a segjax.tasks.Task subclass"):
    tasks.resolve("tests.tasks.box_task:boxes_of")


@pytest.mark.slow
def test_box_task_trains_survives_sigkill_resumes_bitwise_and_evaluates(shapes_data_dir, cli_env, tmp_path):
  config = _config(shapes_data_dir)
  # The uninterrupted reference, in-process.
  loop.train_and_evaluate(config, tmp_path / "reference", progress=False)

  # The same recipe through train.py, SIGKILLed part-way, then run again to the end.
  workdir = tmp_path / "killed"
  proc = cli.train_cli(RECIPE, workdir, shapes_data_dir, cli_env, tmp_path / "first.log")
  deadline = time.monotonic() + 300
  while max(cli.logged_steps(workdir), default=0) < 23 and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, "train.py finished (or failed) before the kill: " + (tmp_path / "first.log").read_text()
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(cli.logged_steps(workdir))
  assert killed_at < config.num_train_steps
  second = cli.train_cli(RECIPE, workdir, shapes_data_dir, cli_env, tmp_path / "second.log")
  assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()
  output = (tmp_path / "second.log").read_text()
  assert "Resumed from step" in output, output  # a resumed run says so on the console

  step, resumed = cli.final_state(workdir, config)
  ref_step, reference = cli.final_state(tmp_path / "reference", config)
  assert step == ref_step == config.num_train_steps
  for name in ("step", "params", "opt_state", "batch_stats"):
    jax.tree.map(np.testing.assert_array_equal, getattr(reference, name), getattr(resumed, name))

  # metrics.jsonl: one record per step and kind, the steps the killed run logged past its checkpoint not twice.
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_steps = [r["step"] for r in records if "loss" in r]
  assert train_steps == list(range(1, config.num_train_steps + 1)), train_steps
  assert all("train_boxes_per_image" in r for r in records if "loss" in r)
  evals = [r for r in records if "eval/centre_recall" in r]
  assert [r["step"] for r in evals] == [60, 120]

  # The evaluator's host metric equals an image-by-image recomputation (no example lost, doubled or mixed up by
  # global batching and padding).
  exp = experiment.build(config)
  state = jax.device_put(resumed, exp.state_sharding)
  result = exp.task.evaluator(exp).evaluate(state, config.eval_split, progress=False)
  assert evals[-1]["eval/centre_recall"] == result.scalars["centre_recall"]
  source = datasets.data_source(config.dataset, config.eval_split)
  fwd, variables = exp.forward, forward.variables(resumed.params, resumed.batch_stats)
  hits = boxes = inter = union = 0
  for index in range(len(source)):
    ex = pipeline.to_example(source[index], exp.spec.ignore_label, exp.spec.num_classes)
    fg = np.asarray(jax.nn.sigmoid(fwd(variables, ex.image[None])))[0] > 0.5
    b, v = box_task.boxes_of(ex.label, ex.weight)
    truth = box_task.host_rasterise(b, v, fg.shape)
    for box in b[v > 0]:
      hits += int(fg[int((box[0] + box[2] - 1) // 2), int((box[1] + box[3] - 1) // 2)])
      boxes += 1
    inter, union = inter + int((fg & truth).sum()), union + int((fg | truth).sum())
  assert result.details["images"] == len(source) == 20
  assert result.scalars["centre_recall"] == pytest.approx(hits / boxes)
  assert result.scalars["foreground_iou"] == pytest.approx(inter / union)
  assert result.scalars["foreground_iou"] > 0.2  # it learnt something: boxes of shapes, not noise
