"""What the tasks' tests share: a recipe with overrides, the first training batch and one jitted step on some
devices (the 8-vs-1-device tests), and for kill-and-resume train.py as a subprocess, the steps it logged, its
final state."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from segjax import checkpoint as checkpoint_lib
from segjax import config as config_lib
from segjax import experiment
from segjax.data import pipeline
from segjax.training import steps
from tests.conftest import REPO, set_dotted


def recipe_config(recipe, data_dir, **overrides):
  """The recipe file `recipe` reading data from `data_dir`, with `overrides` as {"dotted.key": value}."""
  config = config_lib.load_recipe(str(recipe))
  config.dataset.data_dir = data_dir
  return set_dotted(config, overrides)


def first_batch(exp):
  """The first training batch of `exp` (seed 0), as host numpy arrays."""
  source = exp.task.data_source("train")
  ds = pipeline.train_dataset(source, exp.task.train_transform(exp), batch_size=exp.config.batch_size, seed=0)
  return next(iter(ds))


def one_step(config, devices, batch):
  """One jitted training step of `config` on `devices` from its initial state: (initial params, params after the
  step, the step's metrics), on the host."""
  exp = experiment.build(config, devices)
  state = exp.init_state()
  init = jax.device_get(state.params)  # before the step donates the state
  glob = pipeline.to_global(batch, exp.mesh, exp.config.batch_size, exp.task.batch_specs(exp))
  new_state, out = steps.jit_train_step(exp)(state, glob)
  return init, jax.device_get(new_state.params), jax.device_get(out)


def train_cli(recipe, workdir, data_dir, env, log):
  """train.py with `recipe` into `workdir`, output to the file `log`; returns the Popen."""
  args = [sys.executable, str(REPO / "train.py"), f"--config={recipe}", f"--workdir={workdir}",
          f"--config.dataset.data_dir={data_dir}"]
  with log.open("w") as out:
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def logged_steps(workdir):
  """The steps of workdir/metrics.jsonl's training records so far (a line being written is skipped)."""
  try:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
  except FileNotFoundError:
    return []
  return [r["step"] for r in map(json.loads, [line for line in lines if line.endswith("}")]) if "loss" in r]


def final_state(workdir, config):
  """(step, host state) of workdir's latest checkpoint."""
  ckpt = checkpoint_lib.Checkpointer(workdir)
  try:
    step = ckpt.latest_step()
    return step, jax.device_get(ckpt.restore(step, experiment.build(config).abstract_state()))
  finally:
    ckpt.close()


def kill_resume_and_compare(recipe, config, data_dir, env, tmp_path, kill_after: int = 10):
  """train.py of `recipe` SIGKILLed after `kill_after` logged steps, then resumed, against an uninterrupted run:
  asserts both end at config.num_train_steps with bitwise equal states; returns (killed run's workdir, its state).

  The uninterrupted reference runs through train.py too: it fills the session's compilation cache, which the
  killed and the resumed run then read (the same executables, so bitwise results; ~30 s less than in-process).
  """
  first = train_cli(recipe, tmp_path / "reference", data_dir, env, tmp_path / "reference.log")
  assert first.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
  workdir = tmp_path / "killed"
  proc = train_cli(recipe, workdir, data_dir, env, tmp_path / "first.log")
  deadline = time.monotonic() + 300
  while max(logged_steps(workdir), default=0) < kill_after and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, "train.py finished (or failed) before the kill: " + (tmp_path / "first.log").read_text()
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert max(logged_steps(workdir)) < config.num_train_steps
  second = train_cli(recipe, workdir, data_dir, env, tmp_path / "second.log")
  assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()
  assert "Resumed from step" in (tmp_path / "second.log").read_text()
  step, resumed = final_state(workdir, config)
  ref_step, reference = final_state(tmp_path / "reference", config)
  assert step == ref_step == config.num_train_steps
  for name in ("step", "params", "opt_state", "batch_stats"):
    jax.tree.map(np.testing.assert_array_equal, getattr(reference, name), getattr(resumed, name))
  return workdir, resumed
