"""Bad input that reaches training's saves and the CLI (continuing the catalogue of tests/test_bad_input.py): unknown
names on the command line, a file size limit or a full disk during a save, a changed compute dtype. Each leaves the
trained run's checkpoint bitwise intact and restorable."""

import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from segjax import checkpoint as checkpoint_lib
from segjax import experiment
from tests.bad_input_run import BASE_FEATURES, DEPTH, STEP, _assert_intact, _config, run  # noqa: F401  (run: fixture)
from tests.conftest import REPO


# ------------------------------------------------------------------------ CLI


def _cli_env(devices: int = 1) -> dict[str, str]:
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


@pytest.mark.parametrize("flag, patterns", [
    ("--config.batchsize=8", [r"batchsize", r'Did you mean "batch_size" instead of "batchsize"\?']),
    ("--config.model.name=unet3", [r"config\.model\.name='unet3': choose one of \[.*'unet', 'unet_valid'"]),
], ids=["unknown_config_key", "unknown_model_name"])
def test_cli_refuses_unknown_names(run, flag, patterns):
  proc = subprocess.run([sys.executable, str(REPO / "train.py"), f"--config={REPO / 'configs/quickstart.py'}",
                         f"--workdir={run.workdir}", f"--config.dataset.data_dir={run.data_dir}", flag],
                        cwd=REPO, env=_cli_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  for pattern in patterns:
    assert re.search(pattern, proc.stderr), proc.stderr[-3000:]
  _assert_intact(run)


# ------------------------------------------------------------------ disk full


# Runs argv[2:] with a file size limit of argv[1] bytes. Set here and exec'd, not in a preexec_fn: that would
# fork the multithreaded pytest process (JAX warns it may deadlock). With SIGXFSZ ignored (inherited across exec),
# a write past the limit fails with EFBIG, as one on a full disk fails with ENOSPC, instead of killing the process.
_LIMITED = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_file_size_limit_during_save_keeps_the_last_checkpoint(run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(run.workdir, workdir)
  # What the run appends to step by step (metrics.jsonl, TensorBoard events) must stay far below the limit, so that
  # the error comes from the save. curves.png (tens of KiB, redrawn whole at the end) may fail under the limit:
  # drawing it is a warning, never the run's error.
  outside = [(workdir / "metrics.jsonl").stat().st_size]
  # A run's event file starts with the recipe as text (a few KiB) and then grows by ~100 bytes a logged step.
  events = max(p.stat().st_size for p in (workdir / "tensorboard").glob("*"))
  # OCDBT packs whatever values are ready together into one data file, so file sizes vary from save to save (in CI
  # a limit of half the largest earlier file let the next save through in smaller files); a value is never split
  # across files, so half the largest array cannot be written whatever the packing.
  limit = max(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(run.abstract_state)) // 2
  # The largest array cannot be written; metrics.jsonl can, for many more steps: the error comes from the save.
  assert limit > 10 * max(outside) and limit > 2 * events, (limit, max(outside), events)
  flags = [f"--config={REPO / 'configs/quickstart.py'}", f"--workdir={workdir}",
           f"--config.dataset.data_dir={run.data_dir}", "--config.dataset.crop_size=(32, 32)",
           f"--config.model.depth={DEPTH}", f"--config.model.base_features={BASE_FEATURES}", "--config.batch_size=8",
           "--config.eval_batch_size=8", f"--config.num_train_steps={2 * STEP}", "--config.log_every_steps=2",
           f"--config.checkpoint_every_steps={STEP}"]
  proc = subprocess.run([sys.executable, "-c", _LIMITED, str(limit), sys.executable, str(REPO / "train.py"), *flags],
                        cwd=REPO, env=_cli_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-5000:]  # one message (segjax/cli.py)
  match = re.search(r"train\.py: error: (.*)", proc.stderr)
  assert match, proc.stderr[-5000:]
  message = match.group(1)
  for pattern in (rf"Saving the checkpoint of step {2 * STEP} in {re.escape(str(workdir))}/checkpoints failed",
                  r"File too large \(EFBIG", r"[0-9.]+ [KMGT]?i?B free there",
                  r"Free space or use another --workdir; rerun the same command to resume from step "
                  rf"{STEP}, the latest complete checkpoint"):
    assert re.search(pattern, message), (pattern, message)
  _assert_intact(run, workdir)  # no step 4, not even a partial one latest_step() would pick
  assert not (workdir / "checkpoints" / str(2 * STEP)).exists()


# After a failed write, orbax's tensorstore callbacks may still post to the asyncio loop it already closed
# ("Event loop is closed", ignored in a thread): its noise, not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_disk_full_during_save_keeps_the_last_checkpoint(run, tmp_path):
  """A real ENOSPC on a small tmpfs, in process: the error surfaces at the next save or wait, naming its step."""
  mount = tmp_path / "small_disk"
  mount.mkdir()
  usage = sum(-(-p.stat().st_size // 4096) * 4096 for p in run.workdir.rglob("*"))
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={2 * usage + (1 << 20)}", "tmpfs", str(mount)],
                        capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the RLIMIT_FSIZE test covers the save error")
  ckpt = None
  try:
    workdir = mount / "run"
    shutil.copytree(run.workdir, workdir)
    stat = os.statvfs(mount)
    # Leave room for about a third of a checkpoint.
    (mount / "filler").write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - usage // 3))
    config = _config(run.data_dir)
    ckpt = checkpoint_lib.Checkpointer(workdir)
    state = ckpt.restore(STEP, run.abstract_state)
    with pytest.raises(checkpoint_lib.CheckpointSaveError) as info:
      ckpt.save(2 * STEP, state, config)  # async: the write fails in the background...
      ckpt.save(3 * STEP, state, config)  # ...and is reported here, for the step whose save failed
    message = str(info.value)
    for pattern in (rf"Saving the checkpoint of step {2 * STEP} in .*/small_disk/run/checkpoints failed",
                    r"No space left on device \(ENOSPC", r"[0-9.]+ [KMGT]?i?B free there",
                    rf"rerun the same command to resume from step {STEP}, the latest complete checkpoint"):
      assert re.search(pattern, message), (pattern, message)
    assert isinstance(info.value, OSError) and info.value.__cause__ is not None
    ckpt.wait()  # reported once, not again at every wait
    ckpt.close()
    ckpt = None
    _assert_intact(run, workdir)
  finally:
    if ckpt is not None:
      ckpt.close()
    subprocess.run(["umount", "-l", str(mount)], check=False)


# ------------------------------------------------------------- compute dtype


def test_compute_dtype_may_change_but_not_the_parameters(run):
  ckpt = checkpoint_lib.Checkpointer(run.workdir)
  try:
    bf16 = _config(run.data_dir, **{"model.dtype": "bfloat16"})
    checkpoint_lib.check_compatible(ckpt, STEP, bf16, "evaluate")  # no error
    state = ckpt.restore(STEP, experiment.build(bf16, jax.devices()[:1]).abstract_state())
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
    wider = _config(run.data_dir, **{"model.dtype": "bfloat16", "model.base_features": 2 * BASE_FEATURES})
    differs = rf"model\.base_features: {BASE_FEATURES} in the checkpoint, {2 * BASE_FEATURES} now"
    with pytest.raises(ValueError, match=differs) as info:
      checkpoint_lib.check_compatible(ckpt, STEP, wider, "evaluate")
    assert "model.dtype" not in str(info.value)
  finally:
    ckpt.close()
  # param_dtype stays compared (recipes that set it keep it in config.model).
  saved = _config(run.data_dir).to_dict()
  saved["model"]["param_dtype"] = "float32"
  now = _config(run.data_dir)
  now.unlock()
  now.model.param_dtype = "bfloat16"

  class Saved:
    directory = run.workdir / "checkpoints"

    def restore_config(self, step):
      del step
      return saved

  with pytest.raises(ValueError, match=r"model\.param_dtype: 'float32' in the checkpoint, 'bfloat16' now"):
    checkpoint_lib.check_compatible(Saved(), STEP, now, "evaluate")
  _assert_intact(run)
