"""Reliability: non-finite updates are never applied, diverged runs stop, incompatible checkpoints are refused.

SIGTERM (save the current step, exit 0, resume exactly) is tested with the SIGKILL restarts in test_preemption.py;
Ctrl-C (the same stop) here. A loss that explodes stops training too, leaving the newest good checkpoint and a
command that resumes from it (issue 19).
"""

import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from segjax import sharding
from segjax.apps import eval as eval_app
from segjax.data import datasets, pipeline
from segjax import checkpoint as checkpoint_lib
from segjax import experiment
from segjax.training import loop, preemption, steps
from tests.conftest import REPO, semantic_train_dataset, tiny_config


def test_nonfinite_update_is_not_applied(shapes_data_dir):
  config = tiny_config(shapes_data_dir)
  exp = experiment.build(config)
  state = exp.init_state()
  source = datasets.data_source(config.dataset, "train")
  batch = semantic_train_dataset(source, spec=exp.spec, batch_size=8, crop_size=(32, 32), seed=0)[0]
  fn = steps.jit_train_step(exp)
  before = jax.device_get(state)
  poisoned = dict(batch, weight=np.where(np.arange(32)[None, None, :] == 3, np.nan, batch["weight"]).astype(
      np.float32))
  state, out = fn(state, pipeline.to_global(poisoned, sharding.batch_sharding(exp.mesh)))
  after = jax.device_get(state)
  assert not bool(out["finite"]) and not np.isfinite(float(out["loss"]))
  assert int(after.step) == 1  # the data moves on
  for name in ("params", "opt_state", "batch_stats"):
    chex.assert_trees_all_equal(getattr(before, name), getattr(after, name))
  # A clean batch afterwards trains normally.
  state, out = fn(state, pipeline.to_global(batch, sharding.batch_sharding(exp.mesh)))
  assert bool(out["finite"]) and int(state.step) == 2


def _diverging(shapes_data_dir, **overrides):
  # An absurd learning rate overflows the weights within a few steps.
  return tiny_config(shapes_data_dir, num_train_steps=12, checkpoint_every_steps=1, keep_checkpoints=20,
                     log_every_steps=1, **{"optimizer.learning_rate": 1e30, "optimizer.warmup_steps": 0,
                                           **overrides})


def test_nonfinite_stop_names_the_step_and_keeps_checkpoints(shapes_data_dir, tmp_path):
  # Issue 19 changed the contract: the checkpoints whose weights gave the non-finite loss (step bad - 1 on) are
  # moved aside, not kept as the latest (resuming them failed again); here that is all of them (bad = 2).
  with pytest.raises(FloatingPointError, match=r"Step (\d+): the loss or the gradients are not finite") as info:
    loop.train_and_evaluate(_diverging(shapes_data_dir), tmp_path, progress=False)
  bad = int(info.value.args[0].split()[1].rstrip(":"))
  assert "on_nonfinite=skip" in str(info.value)
  ckpt = checkpoint_lib.Checkpointer(tmp_path)
  saved = ckpt.all_steps()
  assert max(saved, default=0) <= bad - 2
  aside = sorted(int(p.name.split("-")[0]) for p in (tmp_path / "checkpoints_diverged").iterdir())
  assert aside and min(aside) >= bad - 1 and max(aside) < bad  # the refused step itself is never saved
  assert str(tmp_path / "checkpoints_diverged") in str(info.value)
  exp = experiment.build(_diverging(shapes_data_dir))
  for step in saved:  # every checkpoint restores and holds finite numbers: no bad update was ever applied
    chex.assert_tree_all_finite(ckpt.restore(step, exp.abstract_state()).params)


def test_nonfinite_skip_goes_on_and_counts(shapes_data_dir, tmp_path):
  state = loop.train_and_evaluate(_diverging(shapes_data_dir, on_nonfinite="skip"), tmp_path, progress=False)
  assert int(state.step) == 12
  chex.assert_tree_all_finite(state.params)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert records[-1]["skipped_nonfinite_steps"] > 0


def test_incompatible_checkpoint_is_refused_saying_what_differs(shapes_data_dir, tmp_path):
  config = tiny_config(shapes_data_dir, num_train_steps=2)
  loop.train_and_evaluate(config, tmp_path, progress=False)
  wider = tiny_config(shapes_data_dir, num_train_steps=4, **{"model.base_features": 8})
  with pytest.raises(ValueError, match=r"Cannot resume training from .* step 2.*model\.base_features: 4 in the "
                                       r"checkpoint, 8 now"):
    loop.train_and_evaluate(wider, tmp_path, progress=False)
  deeper = tiny_config(shapes_data_dir, **{"model.depth": 3})
  with pytest.raises(ValueError, match=r"Cannot evaluate .*model\.depth: 2 in the checkpoint, 3 now"):
    eval_app.run_eval(deeper, str(tmp_path), split="test")
  # More steps, another schedule: allowed.
  longer = tiny_config(shapes_data_dir, num_train_steps=3, **{"optimizer.learning_rate": 1e-4})
  assert int(loop.train_and_evaluate(longer, tmp_path, progress=False).step) == 3


class _SavedRecipe:
  directory = pathlib.Path("/runs/x/checkpoints")

  def __init__(self, recipe):
    self.recipe = recipe

  def restore_config(self, step):
    del step
    return self.recipe


def test_class_list_and_channel_differences_are_named(shapes_data_dir):
  config = tiny_config(shapes_data_dir)
  saved = json.loads(json.dumps(config.to_dict()))
  saved["dataset"]["name"] = "isbi2012"
  with pytest.raises(ValueError, match=r"classes: 2 \['membrane', 'cell'\] in the checkpoint \(isbi2012\), 6 "
                                       r"\['background'.*image channels: 1 in the checkpoint, 3 now"):
    checkpoint_lib.check_compatible(_SavedRecipe(saved), 7, config, "evaluate")
  checkpoint_lib.check_compatible(_SavedRecipe(json.loads(json.dumps(config.to_dict()))), 7, config, "evaluate")


def test_stop_at_an_evaluation_step_still_evaluates_it(shapes_data_dir, tmp_path, monkeypatch):
  """SIGTERM at a step that is due an evaluation: the resumed run starts after it, so the stop must evaluate it.

  The multi-process test stops wherever SIGTERM happens to land; here the stop is pinned to the evaluation step.
  The records of the stopped-and-resumed run equal an uninterrupted run's, step for step.
  """
  overrides = {"num_train_steps": 6, "eval_every_steps": 3, "checkpoint_every_steps": 100, "log_every_steps": 1,
               "eval_split": "validation[:8]", "eval_batch_size": 8}
  devices = jax.devices()[:1]
  loop.train_and_evaluate(tiny_config(shapes_data_dir, **overrides), tmp_path / "one", progress=False,
                          devices=devices)

  class StopAt3(preemption.Preemption):
    def reached(self, step):
      return step == 3

  with monkeypatch.context() as m:
    m.setattr(preemption, "Preemption", StopAt3)
    loop.train_and_evaluate(tiny_config(shapes_data_dir, **overrides), tmp_path / "two", progress=False,
                            devices=devices)
  assert checkpoint_lib.Checkpointer(tmp_path / "two").all_steps() == [3]
  loop.train_and_evaluate(tiny_config(shapes_data_dir, **overrides), tmp_path / "two", progress=False,
                          devices=devices)

  def records(name):
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return sorted(((r["step"], "loss" in r), r) for r in map(json.loads, lines))

  ours, theirs = records("one"), records("two")
  assert [k for k, _ in theirs] == [k for k, _ in ours]
  assert [k for k, _ in ours if not k[1]] == [(3, False), (6, False)]
  for (key, a), (_, b) in zip(ours, theirs):
    for name in ("loss", "eval/mean_iou", "eval/pixel_accuracy"):
      if name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, err_msg=f"{key} {name}")


def _exploding(shapes_data_dir, **overrides):
  # Without BatchNorm, plain SGD at lr 16 trains for 7 steps, then its loss explodes (1.4e3, 7e5) before any NaN.
  return tiny_config(shapes_data_dir, num_train_steps=12, checkpoint_every_steps=1, keep_checkpoints=1,
                     log_every_steps=1, **{"model.batch_norm": False, "optimizer.name": "sgd",
                                           "optimizer.learning_rate": 16.0, "optimizer.schedule": "constant",
                                           **overrides})


def test_divergence_stops_at_the_last_good_checkpoint_and_its_advice_works(shapes_data_dir, tmp_path):
  """An exploding (finite) loss stops training; retention (keep_checkpoints=1) never deleted the newest good
  checkpoint; the diverged ones are moved aside; rerunning as the message says trains to the end."""
  devices = jax.devices()[:1]
  with pytest.raises(FloatingPointError, match=r"Step (\d+): the loss \S+ is over 1000 x the median .* training "
                                               r"diverged") as info:
    loop.train_and_evaluate(_exploding(shapes_data_dir), tmp_path, progress=False, devices=devices)
  message = str(info.value)
  stopped = int(message.split()[1].rstrip(":"))
  found = re.search(r"The newest good checkpoint is step (\d+) in .*rerun with --config\.resume_from_step=(\d+) "
                    r"--config\.optimizer\.learning_rate=(\S+) ", message)
  assert found and found[1] == found[2], message
  good, lr = int(found[1]), float(found[3])
  assert lr == 1.6 and "grad_clip_norm" in message
  losses = {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
  first_bad = min(s for s, loss in losses.items() if not loss < 100)  # the run-up to the explosion
  assert good <= first_bad - 2 < stopped and losses[good + 1] < 10  # the loss on its weights was fine
  ckpt = checkpoint_lib.Checkpointer(tmp_path)
  assert ckpt.all_steps() == [good]  # nothing newer, and retention kept it though keep_checkpoints=1
  chex.assert_tree_all_finite(
      ckpt.restore(good, experiment.build(_exploding(shapes_data_dir), devices).abstract_state()).params)
  ckpt.close()
  aside = sorted(int(p.name.split("-")[0]) for p in (tmp_path / "checkpoints_diverged").iterdir())
  assert aside and min(aside) > good and str(tmp_path / "checkpoints_diverged") in message

  advised = _exploding(shapes_data_dir, resume_from_step=good, **{"optimizer.learning_rate": lr})
  state = loop.train_and_evaluate(advised, tmp_path, progress=False, devices=devices)
  assert int(state.step) == 12
  chex.assert_tree_all_finite(state.params)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records][-(12 - good):] == list(range(good + 1, 13))


def test_ctrl_c_saves_the_step_and_the_same_command_resumes(shapes_data_dir, cli_env, tmp_path):
  """SIGINT (Ctrl-C) stops like SIGTERM: the step is saved, the message says how to resume, exit status 0."""
  workdir = tmp_path / "run"
  args = [sys.executable, str(REPO / "train.py"), f"--config={REPO / 'configs/quickstart.py'}", f"--workdir={workdir}",
          f"--config.dataset.data_dir={shapes_data_dir}", "--config.dataset.crop_size=(32, 32)",
          "--config.model.depth=2", "--config.model.base_features=4", "--config.batch_size=8",
          "--config.num_train_steps=40", "--config.log_every_steps=1", "--config.checkpoint_every_steps=1000"]
  log_path = tmp_path / "first.log"
  with log_path.open("w") as out:
    proc = subprocess.Popen(args, cwd=REPO, env=cli_env, stdout=out, stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + 300
    while not (workdir / "metrics.jsonl").exists() or len((workdir / "metrics.jsonl").read_text().splitlines()) < 2:
      assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
      time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 0, log_path.read_text()[-3000:]
  finally:
    if proc.poll() is None:
      proc.kill()
  out = log_path.read_text()
  assert "Ctrl-C: stopping after this step and saving its checkpoint; press Ctrl-C again to abort at once" in out
  found = re.search(r"Stop requested \(Ctrl-C\): saved the checkpoint of step (\d+) in (\S+); run the same "
                    r"command to resume\.", out)
  assert found, out[-3000:]
  stopped = int(found[1])
  assert checkpoint_lib.Checkpointer(workdir).all_steps() == [stopped] and stopped < 40
  assert not (workdir / "train.lock").exists()  # released
  again = subprocess.run(args, cwd=REPO, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=300, check=False)
  assert again.returncode == 0, again.stdout[-3000:]
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps[-(40 - stopped):] == list(range(stopped + 1, 41))
  assert checkpoint_lib.Checkpointer(workdir).all_steps()[-1] == 40
