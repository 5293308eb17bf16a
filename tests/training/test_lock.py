"""One training run per workdir (issue 19): DIR/train.lock refuses a second run, is taken over from a dead one,
and is released however the run ends; a --workdir that is a file is named."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import jax
import pytest

from segjax.training import lock as lock_lib
from segjax.training import loop
from tests.conftest import REPO, tiny_config

HOLD = """
import sys, time
from segjax.training import lock
with lock.WorkdirLock(sys.argv[1]):
  print("locked", flush=True)
  time.sleep(120)
"""


def test_a_second_run_on_a_held_workdir_refuses_naming_the_holder(shapes_data_dir, tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"))
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(lock_lib.WorkdirInUseError,
                       match=rf"{tmp_path} is in use by another training run: pid {holder.pid} on this host, started "
                             rf".*\(lock file {tmp_path / 'train.lock'}\)\..*Wait for it to finish, stop it .*or use "
                             r"another --workdir"):
      loop.train_and_evaluate(tiny_config(shapes_data_dir), tmp_path, progress=False, devices=jax.devices()[:1])
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()
    assert json.loads((tmp_path / "train.lock").read_text())["pid"] == holder.pid  # the holder keeps its lock
  finally:
    holder.kill()
    holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(shapes_data_dir, tmp_path, caplog):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (tmp_path / "train.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                                   "started": time.time() - 60, "started_text": "a minute ago"}))
  with caplog.at_level(logging.WARNING):
    state = loop.train_and_evaluate(tiny_config(shapes_data_dir, num_train_steps=1), tmp_path, progress=False,
                                    devices=jax.devices()[:1])
  assert int(state.step) == 1
  assert any(f"Took over {tmp_path / 'train.lock'}: its holder, pid {dead.pid} on this host (started a minute ago), "
             "no longer runs." in r.getMessage() for r in caplog.records)
  assert not (tmp_path / "train.lock").exists()  # released at the end


def test_the_lock_is_released_after_an_exception(shapes_data_dir, tmp_path, monkeypatch):
  def fail(*args):
    assert (tmp_path / "train.lock").exists()
    raise RuntimeError("boom")

  monkeypatch.setattr(loop, "_train", fail)
  with pytest.raises(RuntimeError, match="boom"):
    loop.train_and_evaluate(tiny_config(shapes_data_dir), tmp_path, progress=False, devices=jax.devices()[:1])
  assert not (tmp_path / "train.lock").exists()


def test_a_workdir_that_is_a_file_is_named(shapes_data_dir, tmp_path):
  path = tmp_path / "run"
  path.write_text("not a directory")
  with pytest.raises(NotADirectoryError, match=rf"--workdir={path} is a file, not a directory: .* Pass a directory"):
    loop.train_and_evaluate(tiny_config(shapes_data_dir), path, progress=False, devices=jax.devices()[:1])
  assert path.read_text() == "not a directory"
