"""Multi-host: two processes on localhost (jax.distributed, 4 CPU devices each) train exactly like one with 8.

The two processes run the real train.py, each given the coordinator address, the process count and its id on the
command line (what a user does on GPU hosts; a Cloud TPU VM slice needs none of it). The reference is the same
recipe trained in this pytest process on its 8 devices. Equal results need the same global batches (each process
reads only its rows of the global batch, `sharding.process_rows`), the same keys and the same reductions; only
the order of the cross-process sums may differ, hence a float tolerance instead of bitwise equality.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from segjax.train import checkpoint as checkpoint_lib
from segjax.train import loop, setup
from tests.conftest import REPO, tiny_config

STEPS = 6
OVERRIDES = {"num_train_steps": STEPS, "checkpoint_every_steps": 3, "log_every_steps": 1, "eval_every_steps": 3,
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


def test_two_processes_equal_one_process_with_8_devices(shapes_data_dir, tmp_path):
  reference_dir = tmp_path / "one"
  config = tiny_config(shapes_data_dir, **OVERRIDES)
  reference = jax.device_get(loop.train_and_evaluate(config, reference_dir, progress=False))

  workdir, port = tmp_path / "two", _free_port()
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = [subprocess.Popen(
      [sys.executable, str(REPO / "train.py"), f"--config={REPO / 'configs/quickstart.py'}", f"--workdir={workdir}",
       *_flags(shapes_data_dir), f"--config.distributed.coordinator_address=localhost:{port}",
       "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-5000:]
  assert "process 0 of 2" in outs[0] and "process 1 of 2" in outs[1]
  assert "4 local / 8 global devices" in outs[0]

  ckpt = checkpoint_lib.Checkpointer(workdir)
  assert ckpt.all_steps() == [3, 6]
  restored = jax.device_get(ckpt.restore(STEPS, setup.build(config).abstract_state()))
  for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(restored)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert int(restored.step) == STEPS

  # Same losses step by step and the same evaluation; process 1 wrote nothing (one line per record).
  ours, theirs = _records(reference_dir), _records(workdir)
  assert [r["step"] for r in theirs] == [r["step"] for r in ours]
  for a, b in zip(ours, theirs):
    for key in ("loss", "train_pixel_accuracy", "grad_norm", "eval/mean_iou", "eval/pixel_accuracy"):
      if key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=f"step {a['step']} {key}")
  assert sum("eval/mean_iou" in r for r in theirs) == 2
  assert "mIoU" in outs[0] and "mIoU" not in outs[1]
