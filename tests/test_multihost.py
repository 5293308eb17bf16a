"""Multi-host: two processes on localhost (jax.distributed, 4 CPU devices each) train exactly like one with 8.

The two processes run the real train.py, each given the coordinator address, the process count and its id on the
command line (what a user does on GPU hosts; a Cloud TPU VM slice needs none of it). The reference is the same
recipe trained in this pytest process on its 8 devices. Equal results need the same global batches (each process
reads only its rows of the global batch, `sharding.process_rows`), the same keys and the same reductions; only
the order of the cross-process sums may differ, hence a float tolerance instead of bitwise equality.
"""

import json
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from segjax import checkpoint as checkpoint_lib
from segjax import experiment
from segjax.training import loop
from tests.conftest import REPO, tiny_config

STEPS = 12
OVERRIDES = {"num_train_steps": STEPS, "checkpoint_every_steps": 5, "log_every_steps": 1, "eval_every_steps": 6,
             "eval_batch_size": 8, "eval_split": "validation[:20]", "model.dropout_rate": 0.2,
             "augment.rotate_degrees": 10.0}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _flags(data_dir):
  """OVERRIDES and tiny_config's settings as train.py flags (the recipe file is quickstart, as in tiny_config)."""
  config = tiny_config(data_dir, **OVERRIDES)
  keys = ("dataset.data_dir", "dataset.crop_size", "model.depth", "model.base_features", "batch_size",
          "eval_batch_size", "num_train_steps", "log_every_steps", "checkpoint_every_steps", "eval_every_steps",
          "eval_split", "model.dropout_rate", "augment.rotate_degrees")
  flags = []
  for key in keys:
    value = config
    for part in key.split("."):
      value = value[part]
    flags.append(f"--config.{key}={value}")
  return flags


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _launch(workdir, data_dir, cli_env):
  port = _free_port()
  env = dict(cli_env, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  return [subprocess.Popen(
      [sys.executable, str(REPO / "train.py"), f"--config={REPO / 'configs/quickstart.py'}", f"--workdir={workdir}",
       *_flags(data_dir), f"--config.distributed.coordinator_address=localhost:{port}",
       "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]


def _finish(procs):
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-5000:]
  return outs


def test_two_processes_equal_one_process_with_8_devices(shapes_data_dir, tmp_path, cli_env):
  """Also preempted on the way: SIGTERM reaches process 0 only, and both stop at the same step (JAX's preemption
  sync point), save it together and exit cleanly; the restarted pair ends where one uninterrupted process does."""
  reference_dir = tmp_path / "one"
  config = tiny_config(shapes_data_dir, **OVERRIDES)
  reference = jax.device_get(loop.train_and_evaluate(config, reference_dir, progress=False))

  workdir = tmp_path / "two"
  procs = _launch(workdir, shapes_data_dir, cli_env)
  log_path, deadline = workdir / "metrics.jsonl", time.time() + 600
  while not (log_path.is_file() and any(json.loads(line)["step"] >= 2 for line in log_path.read_text().splitlines()
                                        if line.strip())):
    assert all(p.poll() is None for p in procs), procs[0].communicate()[0][-5000:]
    assert time.time() < deadline, "no training progress"
    time.sleep(0.02)
  procs[0].send_signal(signal.SIGTERM)
  outs = _finish(procs)
  assert "process 0 of 2" in outs[0] and "process 1 of 2" in outs[1]
  assert "4 local / 8 global devices" in outs[0]
  stopped = int(outs[0].split("saved the checkpoint of step ")[1].split()[0])
  assert 2 <= stopped < STEPS and "saved the checkpoint" not in outs[1]
  assert checkpoint_lib.Checkpointer(workdir).latest_step() == stopped

  outs = _finish(_launch(workdir, shapes_data_dir, cli_env))
  ckpt = checkpoint_lib.Checkpointer(workdir)
  assert ckpt.latest_step() == STEPS
  restored = jax.device_get(ckpt.restore(STEPS, experiment.build(config).abstract_state()))
  for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(restored)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert int(restored.step) == STEPS

  # Same losses step by step and the same evaluation; process 1 wrote nothing (one line per record).
  ours = {(r["step"], "loss" in r): r for r in _records(reference_dir)}
  theirs = _records(workdir)
  # SIGTERM saved the step it stopped at, so the resumed run logs no step twice; were process 1 writing too, every
  # record would appear twice.
  assert sorted((r["step"], "loss" in r) for r in theirs) == sorted(ours)
  for b in theirs:
    a = ours[(b["step"], "loss" in b)]
    for key in ("loss", "train_pixel_accuracy", "grad_norm", "eval/mean_iou", "eval/pixel_accuracy"):
      if key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=f"step {a['step']} {key}")
  assert sum("eval/mean_iou" in r for r in theirs) >= 2
  assert "mIoU" in outs[0] and "mIoU" not in outs[1]


class _Calls:
  def __init__(self):
    self.calls = []

  def __call__(self, **kwargs):
    self.calls.append(kwargs)


def _distributed(**overrides):
  from segjax import config as config_lib  # pylint: disable=import-outside-toplevel
  cfg = config_lib.default_config().distributed
  cfg.update(overrides)
  return cfg


def test_initialize_distributed_decides_from_config_environment_and_cluster(monkeypatch):
  from segjax import sharding  # pylint: disable=import-outside-toplevel
  calls = _Calls()
  monkeypatch.setattr(jax.distributed, "initialize", calls)
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
  monkeypatch.setattr(sharding, "_cluster_detected", lambda: None)
  # A single machine without a coordinator: nothing to start.
  assert not sharding.initialize_distributed(_distributed()) and not calls.calls
  assert not sharding.initialize_distributed(_distributed(mode="off", coordinator_address="h:1")) and not calls.calls
  # An explicit address is passed through with the process count and id.
  sharding.initialize_distributed(_distributed(coordinator_address="10.0.0.2:1234", num_processes=4, process_id=3))
  assert calls.calls[-1] == dict(coordinator_address="10.0.0.2:1234", num_processes=4, process_id=3,
                                 initialization_timeout=300)
  # The address may come from the environment (JAX reads the rest of it itself).
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.2:1234")
  sharding.initialize_distributed(_distributed())
  assert len(calls.calls) == 2 and calls.calls[-1]["coordinator_address"] is None
  # A Cloud TPU VM slice (or SLURM, Open MPI, Kubernetes): JAX fills in everything.
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
  monkeypatch.setattr(sharding, "_cluster_detected", lambda: "GceTpuCluster")
  sharding.initialize_distributed(_distributed())
  assert calls.calls[-1] == dict(coordinator_address=None, num_processes=None, process_id=None,
                                 initialization_timeout=300)
  # A failure says what to set.
  def refuse(**kwargs):
    raise RuntimeError("connection refused")
  monkeypatch.setattr(jax.distributed, "initialize", refuse)
  with pytest.raises(RuntimeError, match=r"GceTpuCluster.*connection refused.*coordinator_address=HOST:PORT"):
    sharding.initialize_distributed(_distributed())


def test_this_machine_is_not_taken_for_a_cluster():
  from segjax import sharding  # pylint: disable=import-outside-toplevel
  assert sharding._cluster_detected() is None  # pylint: disable=protected-access
