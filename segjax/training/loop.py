"""train_and_evaluate: the one training loop behind train.py, for every task (segjax.tasks).

The loop owns what every task shares: the workdir and its lock, resume (orbax, bitwise exact), stop requests
(SIGTERM, Ctrl-C), the non-finite and divergence guard, logging (metrics.jsonl, TensorBoard, curves.png), and
evaluation every `eval_every_steps` through the task's evaluator, built once per run.
"""

from __future__ import annotations

import logging
import pathlib
import time

import jax
import ml_collections
import tqdm

from segjax import checkpoint as checkpoint_lib
from segjax.training import curves
from segjax import experiment as experiment_lib
from segjax import sharding
from segjax import state as state_lib
from segjax.data import pipeline
from segjax.training import guard as guard_lib
from segjax.training import lock as lock_lib
from segjax.training import logs
from segjax.training import preemption as preemption_lib
from segjax.training import steps

log = logging.getLogger(__name__)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       progress: bool = True, devices=None) -> state_lib.TrainState:
  """Trains per `config`, checkpointing to `workdir` and resuming from its latest checkpoint.

  Returns:
    The final train state (in its shardings on the mesh).
  """
  workdir = pathlib.Path(workdir)
  exp = experiment_lib.build(config, devices)  # a bad recipe fails before anything is written
  _make_workdir(workdir)
  # Listening from here on: a SIGTERM or Ctrl-C during data preparation, restore or compilation stops after the
  # first step, with its checkpoint, instead of killing the process.
  preemption = preemption_lib.Preemption()
  try:
    with lock_lib.WorkdirLock(workdir):  # one run per workdir; released on return, error, SIGTERM and Ctrl-C
      return _train(config, exp, workdir, preemption, progress)
  finally:
    preemption.close()


def _make_workdir(workdir: pathlib.Path) -> None:
  if workdir.exists() and not workdir.is_dir():
    raise NotADirectoryError(
        f"--workdir={workdir} is a file, not a directory: training keeps its checkpoints and metrics.jsonl in a "
        "directory. Pass a directory's path (it is created if missing), or move the file away.")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OSError(e.errno, f"--workdir={workdir} cannot be created ({e.strerror}: {e.filename}). Pass a directory "
                  "path whose parents are directories you may write to.") from e


def _rewind(ckpt: checkpoint_lib.Checkpointer, config: ml_collections.ConfigDict) -> None:
  """config.resume_from_step: moves the checkpoints after that step aside, so training resumes from it.

  Checkpoints saved by a run with the same resume_from_step are that run's continuation and stay, so that the same
  command, rerun after a stop, resumes where it stopped instead of going back again.
  """
  step, steps = config.resume_from_step, ckpt.all_steps()
  if step != 0 and step not in steps:
    aside = sorted(p.name for p in ckpt.workdir.glob("checkpoints_*") if p.is_dir())
    raise ValueError(
        f"--config.resume_from_step={step}: there is no checkpoint of step {step} in {ckpt.directory}; steps there: "
        f"{steps}" + (f". Checkpoints set aside earlier are in {ckpt.workdir}/{{{','.join(aside)}}}: move one back "
                      f"to {ckpt.directory}/<step> to resume from it." if aside else "."))

  def continuation(s):
    try:
      return ckpt.restore_config(s).get("resume_from_step") == step
    except Exception:  # pylint: disable=broad-except  (a damaged one is no continuation)
      return False

  newer = [s for s in steps if s > step and not continuation(s)]
  if newer:
    aside = ckpt.set_aside(newer, "rewound")
    log.warning("--config.resume_from_step=%d: moved the checkpoints of steps %s to %s (nothing deleted); resuming "
                "from step %d.", step, ", ".join(map(str, newer)), aside, step)


def _train(config, exp, workdir, preemption, progress):
  loop = exp.settings.loop
  if jax.process_index() == 0:
    log.info("Training on %d %s device(s) %s; convolutions on %s (config.conv_backend=%s)", exp.mesh.size,
             jax.default_backend(), dict(exp.mesh.shape), exp.conv_backend, config.conv_backend)
  sharding.check_batch_divisible(loop.batch_size, exp.mesh)
  sharding.check_batch_divisible(loop.batch_size // loop.grad_accum_steps, exp.mesh,
                                 "batch_size / config.grad_accum_steps")
  source = exp.task.data_source(config.dataset.train_split)
  # Before anything is compiled (semantic: all-ignore masks would train with loss 0).
  exp.task.check_training_data(exp, source, workdir, _say)
  rows = pipeline.GlobalBatches.rows(exp.mesh, loop.batch_size)
  train_ds = pipeline.train_dataset(source, exp.task.train_transform(exp), batch_size=loop.batch_size,
                                    seed=loop.seed, rows=rows, name=exp.spec.name)
  if jax.process_index() == 0:
    log.info("Dataset %s prepared: split %r, %d examples", exp.spec.name, config.dataset.train_split, len(source))

  ckpt = checkpoint_lib.Checkpointer(workdir, keep=loop.keep_checkpoints)
  if loop.resume_from_step is not None:
    _rewind(ckpt, config)
  # A damaged checkpoint is named and moved aside; the newest one that restores is resumed from.
  start, state = ckpt.restore_newest(exp.abstract_state(), config, "resume training from", set_aside_damaged=True)
  writer = logs.MetricsWriter(workdir)
  if start is None:
    state, start = exp.init_state(), 0
    writer.drop_after(0)  # a run from scratch in a workdir whose checkpoints were all set aside
  else:
    dropped = writer.drop_after(start)  # what a killed run logged past this checkpoint is logged again
    _say(f"Resumed from step {start} ({ckpt.directory})"
         + (f"; dropped {dropped} records of later steps from metrics.jsonl" if dropped else ""))
    if start >= loop.num_train_steps:
      ckpt.close()
      return state

  batches = pipeline.GlobalBatches(
      pipeline.train_iterator(train_ds, start_step=start, worker_count=config.dataset.worker_count), exp.mesh,
      loop.batch_size, exp.task.batch_specs(exp))
  train_fn = steps.jit_train_step(exp)
  if writer.enabled:  # the recipe as run, once per run (a resumed run may have changed flags)
    logs.write_config(workdir, config)
    writer.tensorboard.recipe(config, start)
  bar = tqdm.tqdm(total=loop.num_train_steps, initial=start, desc="train", dynamic_ncols=True,
                  disable=not progress or jax.process_index() != 0)
  guard = guard_lib.NonFiniteGuard(config, ckpt, start, writer.losses_up_to(start))
  evaluator = exp.task.evaluator(exp) if loop.eval_every_steps else None  # compiles once per run, not per eval
  try:
    state = _train_steps(exp, state, start, batches, train_fn, writer, bar, ckpt, preemption, guard, evaluator,
                         progress)
  finally:
    bar.close()
    batches.close()  # stops grain's worker processes
    writer.tensorboard.close()
    _plot(writer)  # at the end, on a stop request and on an error alike
    ckpt.close()  # waits for the last save and reports a failed one
  return state


def _train_steps(exp, state, start, batches, train_fn, writer, bar, ckpt, preemption, guard, evaluator, progress):
  loop = exp.settings.loop
  last_time, last_step = time.perf_counter(), start
  for step in range(start + 1, loop.num_train_steps + 1):
    state, train_metrics = train_fn(state, next(batches))
    guard.push(step, train_metrics)
    bar.update(1)
    final = step == loop.num_train_steps
    if step % loop.log_every_steps == 0 or final or step == start + 1:
      values = {k: float(v) for k, v in jax.device_get(train_metrics).items()}
      now = time.perf_counter()
      record = {"step": step, "loss": values.pop("loss"), "learning_rate": float(exp.schedule(step - 1)),
                **{f"train_{k}": v for k, v in values.items() if k not in ("grad_norm", "finite")},
                "grad_norm": values["grad_norm"], "skipped_nonfinite_steps": guard.skipped,
                # The first logged step includes compilation; its throughput is reported but not representative.
                "images_per_second": (step - last_step) * loop.batch_size / (now - last_time),
                "time": time.time()}
      writer.write(record)
      bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_second']:.1f}")
      last_time, last_step = time.perf_counter(), step
    preempted = preemption.reached(step)
    if step % loop.checkpoint_every_steps == 0 or final or preempted:
      guard.flush()  # this step's flag and loss before its checkpoint: a refused step is never saved
      ckpt.save(step, state, exp.config)
    evaluate_now = evaluator is not None and (step % loop.eval_every_steps == 0 or final)
    if preempted:
      ckpt.wait()
      _say(f"Stop requested ({preemption.reason}): saved the checkpoint of step {step} in {ckpt.directory}; "
           "run the same command to resume.")
      # The resumed run starts after this step and would never evaluate it; the checkpoint is already safe, so a
      # kill before the evaluation ends loses only the evaluation.
      if evaluate_now:
        _evaluate_during_training(exp, evaluator, state, step, writer, progress)
      break
    if evaluate_now:
      _evaluate_during_training(exp, evaluator, state, step, writer, progress)
      last_time = time.perf_counter()
  guard.flush()
  return state


def _say(message: str) -> None:
  """A line on the terminal from process 0 only (every process runs the same loop)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


def _evaluate_during_training(exp, evaluator, state, step, writer, progress) -> None:
  split = exp.settings.loop.eval_split
  result = evaluator.evaluate(state, split, progress=progress,
                              num_visualizations=exp.settings.loop.num_visualizations if writer.enabled else 0)
  writer.write({"step": step, **{f"eval/{k}": v for k, v in result.scalars.items()}})
  if result.overlays:
    writer.tensorboard.images("eval/overlay", result.overlays, step)
  writer.tensorboard.flush()
  _plot(writer)
  _say(f"step {step}: {split} {result.headline}")


def _plot(writer: logs.MetricsWriter) -> None:
  """Redraws DIR/curves.png from metrics.jsonl; a failure to draw is a warning, never a training failure."""
  if writer.enabled:
    try:
      curves.plot_curves(writer.path.parent)
    except Exception as e:  # pylint: disable=broad-except
      log.warning("Could not draw %s: %s", writer.path.parent / curves.CURVES_FILE, e)
