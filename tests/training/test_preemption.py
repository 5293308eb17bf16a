"""Preemption through the real train.py: SIGKILL at many random moments, and SIGTERM; and the eval.py CLI.

What is proven: killing training with SIGKILL at random moments, many times, and restarting it each time ends
with a train state (parameters, optimiser state, BatchNorm statistics, step) bitwise equal to an uninterrupted
run's; SIGTERM leaves a checkpoint of exactly the step training stopped at.

How:
- The reference is `loop.train_and_evaluate` run in-process, uninterrupted and without the persistent
  compilation cache (in a thread, overlapping the subprocesses). The interrupted runs are train.py processes
  with the same recipe that load their programs from the cache (`cli_env`), so bitwise equality also shows that
  a cached executable computes what a fresh compilation does.
- The interrupted runs checkpoint every `INTERVAL` steps, so kills often land in a save (orbax writes
  `<step>.orbax-checkpoint-tmp`, then renames it) or just after one. A seeded `random.Random` shuffles the
  `KILL_KINDS` and draws each kill's parameter: "startup", a delay after launch (imports, restore, compilation;
  the first step if that comes sooner); "save-started", the k-th save this run starts, killed while it writes;
  "save-finalised", just after the k-th save this run completes; "mid-step", part-way into the step after the
  k-th step that does not save. Timing is real, so where a kill landed is observed afterwards, not assumed:
  "startup" (the run had logged no step), "in-save" (a save it started had not finished: its temporary
  directory was left behind, or the stale one of an earlier kill that orbax deletes first was gone),
  "between-saves" (neither). The records go to `kills.jsonl` beside the run logs and to stdout (pytest -s).
- After every kill: orbax's latest checkpoint restores and holds the state of its own step; the latest step
  never decreases; every restart's first step is the latest checkpoint's step + 1; the work lost is at most two
  intervals (the async save in flight plus the interval being computed: a run may log step s + INTERVAL while
  the save of step s is still being written, s - INTERVAL being the latest complete one). At least one kill is
  asserted to have landed in a save (two "save-started" kills come <0.1 s after a save starts, and a save takes
  ~1 s) and one at startup (the seed draws a delay of ~2 s, within the imports).
- Then a restart is stopped with SIGTERM under a checkpoint interval longer than the run, so the only
  checkpoint it can leave is the one SIGTERM makes: exit code 0, the step it names is the last step it logged,
  and that checkpoint exists and is orbax's latest. A last restart trains to the end and is compared bitwise.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import random
import resource
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from segjax.data import datasets
from segjax import checkpoint as checkpoint_lib
from segjax import experiment
from segjax.training import loop
from tests.conftest import REPO, tiny_config

# Room to spare, so that no run reaches the end before its kill: a run killed at startup does not advance the
# latest checkpoint, one killed at its k-th (k <= 2) save start or odd step by (k - 1) * INTERVAL, one killed at
# its k-th finalised save by k * INTERVAL: 12 steps after all the kills at most (~4 typically), and SIGTERM stops
# a few steps later.
NUM_STEPS = 18
INTERVAL = 2  # checkpoint interval of the interrupted runs: most kills land in or near a save
SEED = 5  # of the kill schedule; the test is reproducible up to real timing, which the records show
# The tiny quickstart recipe, for train.py flags and the in-process reference alike, so they cannot drift apart.
RECIPE = {"dataset.crop_size": (32, 32), "model.depth": 2, "model.base_features": 4, "batch_size": 8,
          "eval_batch_size": 40, "num_train_steps": NUM_STEPS, "log_every_steps": 1, "keep_checkpoints": 2,
          "model.dropout_rate": 0.2}
# Kinds of kill moments, each drawn this many times (shuffled): 8 kills in all. Startup kills are cheap (no
# step to wait for); each of the others costs a restart (~10 s of CPU with the compilation cache).
KILL_KINDS = {"startup": 3, "save-started": 2, "save-finalised": 1, "mid-step": 2}
WAIT_S = 300  # for any one event; generous because the 2-core machine is shared


def _flags(**overrides) -> list[str]:
  return [f"--config.{key}={value}" for key, value in {**RECIPE, **overrides}.items()]


def _train_cli(workdir: pathlib.Path, data_dir: str, env: dict[str, str], log: pathlib.Path,
               **overrides) -> subprocess.Popen:
  args = [sys.executable, str(REPO / "train.py"), f"--config={REPO / 'configs/quickstart.py'}",
          f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}", *_flags(**overrides)]
  # Output to a file, not a pipe: nobody reads a pipe of a process that is about to be killed, and a full
  # pipe would block it.
  with log.open("w") as out:
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _latest(workdir: pathlib.Path) -> int | None:
  ckpt = checkpoint_lib.Checkpointer(workdir)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def _restore(workdir: pathlib.Path, step: int, config):
  ckpt = checkpoint_lib.Checkpointer(workdir)
  try:
    return jax.device_get(ckpt.restore(step, experiment.build(config).abstract_state()))
  finally:
    ckpt.close()


@dataclasses.dataclass
class Run:
  """One train.py process and what it has done so far, seen from outside (files only)."""

  workdir: pathlib.Path
  log: pathlib.Path
  resumed_from: int | None  # the latest checkpoint at launch
  tmp_before: set  # unfinished saves left by earlier runs
  proc: subprocess.Popen
  started: float  # time.monotonic() at launch
  launched_at: float  # time.time() at launch, to compare with the records' "time"

  def records(self) -> list[dict]:
    """What this run wrote to metrics.jsonl (complete lines only; a line is written in one call). A resumed run
    first rewrites the file without the records past its checkpoint (MetricsWriter.drop_after), so this run's
    records are those stamped after its launch, not those past a byte offset."""
    path = self.workdir / "metrics.jsonl"
    if not path.exists():
      return []
    records = [json.loads(line) for line in path.read_text().split("\n")[:-1] if line]
    return [r for r in records if r["time"] >= self.launched_at]

  def logged_steps(self) -> list[int]:
    return [r["step"] for r in self.records()]

  def wait(self) -> tuple[int, dict]:
    """Waits for the process to end; returns its exit status and timings (CPU: all its threads)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    returncode = self.proc.wait(timeout=WAIT_S)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    records = self.records()
    return returncode, {
        "wall_s": round(time.monotonic() - self.started, 2),
        "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
        "first_step_s": round(records[0]["time"] - self.launched_at, 2) if records else None}

  def new_tmp_dirs(self) -> set:
    """Saves this run started: temporary directories absent (or another inode) at its launch, or changed since."""
    return _tmp_dirs(self.workdir) - self.tmp_before

  def unfinished_saves(self) -> list[str]:
    """After the run died: the saves it had started and not finished.

    Those whose temporary directory it left behind, and those it was redoing over an earlier kill's leftover:
    orbax deletes a stale temporary directory before writing a new one, so a kill between the two leaves none.
    """
    names = {name for name, *_ in _tmp_dirs(self.workdir)}
    last = max(self.logged_steps(), default=-1)
    redoing = {name for name, *_ in self.tmp_before
               if name not in names and int(name.split(".")[0]) <= last
               and int(name.split(".")[0]) not in self.new_final_steps()}
    return sorted({name for name, *_ in self.new_tmp_dirs()} | redoing)

  def new_final_steps(self) -> set[int]:
    ckpt_dir = self.workdir / "checkpoints"
    steps = {int(p) for p in os.listdir(ckpt_dir) if p.isdigit()} if ckpt_dir.is_dir() else set()
    return {s for s in steps if self.resumed_from is None or s > self.resumed_from}

  def output(self) -> str:
    return self.log.read_text()[-4000:]

  def wait_for(self, what: str, condition) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
      assert self.proc.poll() is None, f"train.py exited ({self.proc.returncode}) before {what}:\n{self.output()}"
      assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s:\n{self.output()}"
      time.sleep(0.01)


def _start(workdir: pathlib.Path, data_dir: str, env: dict[str, str], log: pathlib.Path, **overrides) -> Run:
  resumed_from, tmp = _latest(workdir), _tmp_dirs(workdir)
  return Run(workdir, log, resumed_from, tmp, _train_cli(workdir, data_dir, env, log, **overrides),
             time.monotonic(), time.time())


def _tmp_dirs(workdir: pathlib.Path) -> set:
  ckpt_dir = workdir / "checkpoints"
  if not ckpt_dir.is_dir():
    return set()
  out = set()
  for name in os.listdir(ckpt_dir):
    if ".orbax-checkpoint-tmp" in name:
      try:
        st = os.stat(ckpt_dir / name)
      except FileNotFoundError:  # finalised (renamed) meanwhile
        continue
      # The inode and ctime tell a directory orbax removed and recreated from a leftover of an earlier kill.
      out.add((name, st.st_ino, st.st_ctime_ns))
  return out


def _kill_schedule(rng: random.Random) -> list[tuple[str, float]]:
  """(kind, parameter) per kill: a delay in seconds for "startup", an ordinal (1 or 2) for the others."""
  kinds = [kind for kind, n in KILL_KINDS.items() for _ in range(n)]
  rng.shuffle(kinds)
  # Startup kills: within the imports (they alone take >3 s), then later into restoring and compiling.
  delays = iter([rng.uniform(0.5, 3.0), rng.uniform(3.0, 6.0), rng.uniform(6.0, 10.0)])
  return [(kind, next(delays) if kind == "startup" else rng.choice([1, 2])) for kind in kinds]


def _kill_when(run: Run, kind: str, param: float, rng: random.Random) -> None:
  """Waits for the moment `kind`/`param` describes, then SIGKILLs the run."""
  if kind == "startup":
    # Or at the first step, if training got that far (a restart with a warm cache can in ~5 s): the kill
    # then lands just after it, and a "startup" kill never advances the checkpoints (NUM_STEPS counts on it).
    run.wait_for("the startup kill", lambda: time.monotonic() - run.started >= param or run.records())
  elif kind == "save-started":
    started = set()  # names, since a save may finish between two looks

    def saves_started():
      started.update(name for name, *_ in run.new_tmp_dirs())
      return len(started) >= param

    run.wait_for(f"save {param} to start", saves_started)
    time.sleep(rng.uniform(0.0, 0.05))
  elif kind == "save-finalised":
    run.wait_for(f"save {param} to finish", lambda: len(run.new_final_steps()) >= param)
    time.sleep(rng.uniform(0.0, 0.05))
  else:  # mid-step: after a step that does not save, part-way into the next one
    run.wait_for(f"step {param} off the checkpoint interval",
                 lambda: sum(s % INTERVAL != 0 for s in run.logged_steps()) >= param)
    time.sleep(rng.uniform(0.0, 0.2))
  assert run.proc.poll() is None, f"train.py exited ({run.proc.returncode}) before the kill:\n{run.output()}"
  run.proc.send_signal(signal.SIGKILL)


def _fields(state) -> dict:
  """What a train state holds (its `apply_fn` and `tx` are code, compared by identity in a tree structure)."""
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
          "batch_stats": state.batch_stats}


@pytest.fixture(scope="module")
def reference(shapes_data_dir, tmp_path_factory):
  """The uninterrupted run, in-process: (config, workdir, future of the final state's `_fields` on the host).

  It trains in a thread while the test drives train.py processes: compilation is mostly single-threaded, so on a
  2-core machine the two overlap instead of queueing (~20 s saved). Not being the main thread, its loop installs
  no SIGTERM handler, which is right: no signal is meant for this process.
  """
  # Checkpointing does not change training, so the reference saves rarely (halfway, for the eval CLI test).
  config = tiny_config(shapes_data_dir, **RECIPE, checkpoint_every_steps=NUM_STEPS // 2)
  workdir = tmp_path_factory.mktemp("reference")

  def train():
    return jax.device_get(_fields(loop.train_and_evaluate(config, workdir, progress=False)))

  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    yield config, workdir, pool.submit(train)


@pytest.fixture
def processes():
  """Processes a test started; any a failure left running is killed at teardown."""
  procs = []
  yield procs
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def test_sigkill_many_times_then_sigterm_equals_uninterrupted(reference, shapes_data_dir, cli_env, processes,
                                                              tmp_path):
  config, _, expected_future = reference
  rng = random.Random(SEED)
  workdir = tmp_path / "interrupted"
  workdir.mkdir()

  def start(name: str, interval: int) -> Run:
    run = _start(workdir, shapes_data_dir, cli_env, tmp_path / f"{name}.log", checkpoint_every_steps=interval)
    processes.append(run.proc)
    return run

  records = []
  for i, (kind, param) in enumerate(_kill_schedule(rng)):
    before = _latest(workdir)
    run = start(f"run{i}", INTERVAL)
    _kill_when(run, kind, param, rng)
    returncode, timing = run.wait()
    assert returncode == -signal.SIGKILL, run.output()
    logged, unfinished = run.logged_steps(), run.unfinished_saves()
    latest = _latest(workdir)
    observed = "startup" if not logged else "in-save" if unfinished else "between-saves"
    records.append(dict(kill=i, kind=kind, param=round(param, 2), resumed_from=before,
                        last_logged=logged[-1] if logged else None, latest=latest,
                        unfinished_saves=unfinished, observed=observed, **timing))
    where = f"kill {i}: {records[-1]}"
    if logged:  # the restart resumed at the latest checkpoint
      assert logged[0] == (before or 0) + 1, where
    if latest is None:
      assert before is None and (not logged or logged[-1] <= 2 * INTERVAL), where
      continue
    assert before is None or latest >= before, f"the latest checkpoint went backwards; {where}"
    if logged:
      assert logged[-1] - latest <= 2 * INTERVAL, f"more work lost than the async save allows; {where}"
    restored = _restore(workdir, latest, config)  # a kill never leaves a broken latest checkpoint
    assert int(restored.step) == latest, where
    chex.assert_tree_all_finite(restored.params, custom_message=where)

  # Where the kills landed, kept beside the run logs (and shown with pytest -s).
  (tmp_path / "kills.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  print("\nSIGKILL records:\n" + "\n".join(json.dumps(r) for r in records))
  assert sum(r["observed"] == "in-save" for r in records) >= 1, records
  assert sum(r["observed"] == "startup" for r in records) >= 1, records

  # SIGTERM, as a TPU VM is preempted. With an interval longer than the run no scheduled save can happen, so a
  # checkpoint at a step that is no multiple of the interval can only be SIGTERM's own.
  before, sigterm_interval = _latest(workdir), 10 * NUM_STEPS
  run = start("sigterm", sigterm_interval)
  run.wait_for("two steps after the restart", lambda: len(run.logged_steps()) >= 2)
  run.proc.send_signal(signal.SIGTERM)
  returncode, timing = run.wait()
  out = run.output()
  assert returncode == 0, out
  assert "Stop requested (SIGTERM): saved the checkpoint of step " in out, out
  stopped = int(out.split("saved the checkpoint of step ")[1].split()[0])
  print(f"SIGTERM run: resumed from {before}, stopped at {stopped}, {timing}")
  logged = run.logged_steps()
  # It stopped after the step it names: that step was trained (and logged), the next one was not.
  assert logged[0] == before + 1 and logged[-1] == stopped < NUM_STEPS, (logged, stopped, out)
  assert stopped % sigterm_interval != 0 and run.new_final_steps() == {stopped}, out
  assert _latest(workdir) == stopped, out
  assert int(_restore(workdir, stopped, config).step) == stopped

  run = start("final", INTERVAL)
  returncode, timing = run.wait()
  print(f"final run: {timing}")
  assert returncode == 0, run.output()
  assert run.logged_steps()[0] == stopped + 1 and run.logged_steps()[-1] == NUM_STEPS
  assert _latest(workdir) == NUM_STEPS
  resumed = _fields(_restore(workdir, NUM_STEPS, config))
  expected = expected_future.result(timeout=WAIT_S)
  assert jax.tree.structure(resumed) == jax.tree.structure(expected)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(expected)[0], jax.tree.leaves(resumed)):
    # Bitwise: same batches, same keys, same arithmetic, whatever the kills interrupted. The reference compiled
    # its programs afresh; the restarts loaded theirs from the persistent cache.
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_eval_cli(reference, shapes_data_dir, cli_env):
  """eval.py on a checkpoint of the reference run (not the latest one): metrics, per-class results, images."""
  config, workdir, state = reference
  state.result(timeout=WAIT_S)
  step = NUM_STEPS // 2
  args = [sys.executable, str(REPO / "eval.py"), f"--config={REPO / 'configs/quickstart.py'}", f"--workdir={workdir}",
          f"--config.dataset.data_dir={shapes_data_dir}", *_flags(), "--split=test", f"--checkpoint_step={step}"]
  proc = subprocess.run(args, cwd=REPO, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        timeout=WAIT_S, check=False)
  assert proc.returncode == 0, proc.stdout[-4000:]
  assert "mean IoU" in proc.stdout and f"checkpoint step {step}" in proc.stdout
  result = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
  assert {"pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "mean_dice"} <= set(result)
  assert [c["name"] for c in result["per_class"]] == list(datasets.get_spec("shapes").class_names)
  assert {"iou", "accuracy", "dice", "pixel_count"} <= set(result["per_class"][0])
  # Every pixel of the 200 test images is counted exactly once.
  assert sum(c["pixel_count"] for c in result["per_class"]) == 200 * 64 * 64
  assert len(list((workdir / "eval" / "test" / "images").glob("*.png"))) == config.num_visualizations
