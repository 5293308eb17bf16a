"""Training: 1 vs 8 devices, and kill/restart equal to an uninterrupted run, through the real CLIs."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from segjax import sharding
from segjax.data import augment, datasets, pipeline
from segjax.train import checkpoint as checkpoint_lib
from segjax.train import loop, setup, steps
from tests.conftest import REPO, tiny_config


FULL_AUGMENT = dict(zoom=(0.7, 1.5), hflip_prob=0.5, vflip_prob=0.5, rotate_degrees=20.0, affine_scale=(0.9, 1.1),
                    affine_translate=0.1, affine_shear_degrees=5.0, elastic_sigma=2.0, brightness=0.1,
                    contrast=0.2, gamma=(0.8, 1.25), blur_sigma=(0.3, 1.0), blur_prob=0.5, noise_std=(0.0, 5.0),
                    noise_prob=0.5, pixel_dropout=0.02, pixel_dropout_prob=0.5, coarse_dropout_holes=2,
                    coarse_dropout_prob=0.5)


def _first_batch(config):
  spec = datasets.get_spec(config.dataset.name)
  source = datasets.data_source(spec.name, "train", data_dir=config.dataset.data_dir)
  return pipeline.train_dataset(source, spec=spec, batch_size=config.batch_size,
                                crop_size=config.dataset.crop_size, seed=0)[0]


def _one_step(config, devices, batch):
  exp = setup.build(config, devices)
  state = exp.init_state()
  fn = steps.jit_train_step(exp.mesh, model=exp.model, seed=config.seed, mean=exp.mean, std=exp.std,
                            ce_weight=1.0, dice_weight=0.5, class_weights=(1.0, 2.0, 1.0, 1.0, 3.0, 1.0),
                            augment=exp.augment)
  new_state, out = fn(state, pipeline.to_global(batch, sharding.batch_sharding(exp.mesh)))
  return jax.device_get(new_state.params), jax.device_get(new_state.batch_stats), jax.device_get(out)


def test_one_step_on_8_devices_equals_1_device(shapes_data_dir):
  assert jax.device_count() == 8
  # Dropout and every augmentation on, so the per-step and per-example keys must give the same masks and
  # transforms however the batch is split.
  config = tiny_config(shapes_data_dir, **{"model.dropout_rate": 0.3, "optimizer.warmup_steps": 0,
                                           "augment": augment.config_block(**FULL_AUGMENT)})
  batch = _first_batch(config)
  p1, s1, m1 = _one_step(config, jax.devices()[:1], batch)
  p8, s8, m8 = _one_step(config, jax.devices(), batch)
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), p1, p8)
  # BatchNorm statistics are over the global batch, not per device.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), s1, s8)
  init = jax.device_get(setup.build(config).init_state().params)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(p1)))


def _cli(script, config_overrides, workdir, data_dir, extra=()):
  args = [sys.executable, str(REPO / script), f"--config={REPO / 'configs/quickstart.py'}", f"--workdir={workdir}",
          f"--config.dataset.data_dir={data_dir}", *config_overrides, *extra]
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


TINY = ["--config.dataset.crop_size=(32, 32)", "--config.model.depth=2", "--config.model.base_features=4",
        "--config.batch_size=8", "--config.eval_batch_size=40", "--config.num_train_steps=60",
        "--config.checkpoint_every_steps=5", "--config.log_every_steps=5", "--config.keep_checkpoints=2",
        "--config.model.dropout_rate=0.2"]


def test_kill_restart_equals_uninterrupted_and_eval_cli(shapes_data_dir, tmp_path):
  """SIGKILL at a random moment, restart, SIGTERM, restart: the end state is bitwise the uninterrupted one."""
  config = tiny_config(shapes_data_dir, num_train_steps=60, checkpoint_every_steps=5, log_every_steps=5,
                       keep_checkpoints=2, **{"model.dropout_rate": 0.2})
  reference = loop.train_and_evaluate(config, tmp_path / "reference", progress=False)

  workdir = tmp_path / "killed"
  proc = _cli("train.py", TINY, workdir, shapes_data_dir)
  ckpt_dir = workdir / "checkpoints"
  deadline = time.time() + 300
  while not (ckpt_dir.is_dir() and any(p.name.isdigit() and int(p.name) >= 10 for p in ckpt_dir.iterdir())):
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = checkpoint_lib.Checkpointer(workdir).latest_step()
  assert killed_at is not None and killed_at < 60, "the run finished before it was killed"

  # Restarted, then stopped the way a TPU VM preempts: SIGTERM. It saves the step it is at and exits cleanly.
  log_path = workdir / "metrics.jsonl"
  earlier = len(log_path.read_text().splitlines()) if log_path.is_file() else 0
  proc = _cli("train.py", TINY, workdir, shapes_data_dir)
  deadline = time.time() + 300
  # Only records of this run count (the killed run may have logged past its last checkpoint).
  while not any(json.loads(line)["step"] >= killed_at + 6 for line in log_path.read_text().splitlines()[earlier:]
                if line.strip()):
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, "the restarted run made no progress"
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  stopped = int(out.split("saved the checkpoint of step ")[1].split()[0])
  assert killed_at + 6 <= stopped < 60 and checkpoint_lib.Checkpointer(workdir).latest_step() == stopped

  proc = _cli("train.py", TINY, workdir, shapes_data_dir)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  ckpt = checkpoint_lib.Checkpointer(workdir)
  assert ckpt.latest_step() == 60
  resumed = ckpt.restore(60, setup.build(config).abstract_state())
  for a, b in zip(jax.tree.leaves(jax.device_get(reference)), jax.tree.leaves(jax.device_get(resumed))):
    np.testing.assert_array_equal(a, b)  # bitwise: same batches, same keys, same programs

  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {"step", "loss", "learning_rate", "images_per_second"} <= set(records[-1])
  assert records[-1]["step"] == 60 and np.isfinite(records[-1]["loss"])

  proc = _cli("eval.py", TINY, workdir, shapes_data_dir, ["--split=test", "--checkpoint_step=55"])
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  assert "mean IoU" in out and "checkpoint step 55" in out
  result = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
  assert {"pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "mean_dice"} <= set(result)
  assert [c["name"] for c in result["per_class"]] == list(datasets.get_spec("shapes").class_names)
  assert {"iou", "accuracy", "dice", "pixel_count"} <= set(result["per_class"][0])
  # Every pixel of the 200 test images is counted exactly once.
  assert sum(c["pixel_count"] for c in result["per_class"]) == 200 * 64 * 64
  assert len(list((workdir / "eval" / "test" / "images").glob("*.png"))) == config.num_visualizations


def test_eval_refuses_missing_workdir(tmp_path, shapes_data_dir):
  from segjax import evaluate  # pylint: disable=import-outside-toplevel
  with pytest.raises(FileNotFoundError, match="train first"):
    evaluate.run_eval(tiny_config(shapes_data_dir), str(tmp_path / "nothing"))
