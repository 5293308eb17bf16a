"""What the tasks' kill-and-resume tests share: train.py as a subprocess, the steps it logged, its final state."""

from __future__ import annotations

import json
import subprocess
import sys

import jax

from segjax import checkpoint as checkpoint_lib
from segjax import experiment
from tests.conftest import REPO


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
