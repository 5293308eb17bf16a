"""train_and_evaluate: the one training loop behind train.py."""

from __future__ import annotations

import collections
import json
import logging
import pathlib
import signal
import sys
import threading
import time
from typing import Any, Sequence

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from segjax import curves, evaluate, metrics, sharding
from segjax.data import datasets, label_stats, pipeline
from segjax.train import checkpoint as checkpoint_lib
from segjax.train import lock as lock_lib
from segjax.train import logs
from segjax.train import setup as setup_lib
from segjax.train import state as state_lib
from segjax.train import steps

log = logging.getLogger(__name__)


class MetricsWriter:
  """Appends one JSON object per line to DIR/metrics.jsonl (process 0 only), so a resumed run continues it, and
  the same values as TensorBoard scalars (`logs.TensorBoard`)."""

  def __init__(self, workdir: pathlib.Path):
    self.enabled = jax.process_index() == 0
    self.path = workdir / "metrics.jsonl"
    self.tensorboard = logs.TensorBoard(workdir, self.enabled)

  def losses_up_to(self, step: int) -> list[float]:
    """The training losses logged for steps up to `step`, oldest first (of a step logged twice, by runs resumed
    from an earlier checkpoint, the last record, which belongs to the run the checkpoint of `step` came from)."""
    losses = {}
    try:
      with self.path.open() as f:
        for line in f:
          try:
            record = json.loads(line)
          except ValueError:  # a line cut short by a kill
            continue
          if "loss" in record and record.get("step", step + 1) <= step:
            losses[record["step"]] = record["loss"]
    except OSError:
      return []
    return [losses[s] for s in sorted(losses)]

  def write(self, record: dict[str, Any]) -> None:
    if self.enabled:
      with self.path.open("a") as f:
        f.write(json.dumps(record) + "\n")
      self.tensorboard.scalars(record)

  def plot(self) -> None:
    """Redraws DIR/curves.png from metrics.jsonl; a failure to draw is a warning, never a training failure."""
    if self.enabled:
      try:
        curves.plot_curves(self.path.parent)
      except Exception as e:  # pylint: disable=broad-except
        log.warning("Could not draw %s: %s", self.path.parent / curves.CURVES_FILE, e)


class Preemption:
  """Whether the job was asked to stop (SIGTERM, what TPU VMs and most schedulers send before a kill, or Ctrl-C).

  One process: SIGTERM and SIGINT handlers set a flag (installed from the main thread only; the previous handlers
  come back on `close`); a second Ctrl-C aborts at once (KeyboardInterrupt). Several processes: JAX's
  distributed runtime already watches SIGTERM, and `reached_preemption_sync_point` makes every process stop at
  the same step, so that their checkpoint agrees.
  """

  def __init__(self):
    self.requested: str | None = None  # what asked to stop: "SIGTERM" or "Ctrl-C"
    self._previous = {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C raises KeyboardInterrupt
      sys.stderr.write("\nCtrl-C: stopping after this step and saving its checkpoint; press Ctrl-C again to abort "
                       "at once (losing the steps since the last checkpoint).\n")
    self.requested = self.requested or ("Ctrl-C" if signum == signal.SIGINT else "SIGTERM")

  @property
  def reason(self) -> str:
    return self.requested or "SIGTERM"

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


class NonFiniteGuard:
  """Reads each step's `finite` flag and loss one step late (so the host never waits on the step it just
  launched) and stops training on a non-finite step (or counts it, as `config.on_nonfinite` says) or on a loss
  that explodes: over `config.divergence_factor` x the median of the last finite losses. The train step itself
  never applies a non-finite update.

  The loss of step s is computed on the weights after step s-1, so the checkpoint of step c is verified good only
  once the loss of step c+1 was seen fine: finite and within sqrt(divergence_factor) x the median. The guard tells
  the Checkpointer, whose retention then keeps it. A loss between the two bounds neither stops training nor
  verifies anything: it is suspect, and where a divergence follows, its run-up counts as bad. On a stop at step s,
  the checkpoints after step f-2 (f: the first suspect step of the run-up, else s), whose weights gave the bad
  losses, are moved aside, and the message names the newest good step and the command that resumes from it.
  """

  HISTORY = 50  # finite losses the median is taken over
  MIN_HISTORY = 3  # losses needed before the divergence check starts

  def __init__(self, config: ml_collections.ConfigDict, ckpt: checkpoint_lib.Checkpointer, start: int = 0,
               history: Sequence[float] = ()):
    self.mode, self.factor, self.ckpt = config.on_nonfinite, config.divergence_factor, ckpt
    self.learning_rate = config.optimizer.learning_rate
    self.pending: tuple[int, jax.Array, jax.Array] | None = None
    # A resumed run continues the history of the run it resumes (MetricsWriter.losses_up_to).
    self.losses = collections.deque((x for x in history if np.isfinite(x)), maxlen=self.HISTORY)
    self.skipped = 0
    self.suspect_since: int | None = None  # first step of the current run of suspect losses
    ckpt.protect_up_to(start)  # the checkpoint resumed from is the good one until a newer one proves good

  def push(self, step: int, train_metrics: dict[str, jax.Array]) -> None:
    self.flush()
    self.pending = (step, train_metrics["finite"], train_metrics["loss"])

  def flush(self) -> None:
    """Checks the step pushed last. Call it before saving: a refused step must never be saved.

    Raises:
      FloatingPointError: that step's loss was not finite (on_nonfinite="stop") or exploded.
    """
    if self.pending is None:
      return
    step, finite, loss = self.pending
    self.pending = None
    finite, loss = jax.device_get((finite, loss))
    if bool(finite):
      loss = float(loss)
      if self.factor and len(self.losses) >= self.MIN_HISTORY:
        median = float(np.median(self.losses))
        if loss > self.factor * median:
          self._stop(step, f"Step {step}: the loss {loss:.3g} is over {self.factor:g} x the median {median:.3g} of "
                     f"the last {len(self.losses)} good steps' losses (config.divergence_factor): training diverged, "
                     "so it stops.", nonfinite=False)
        if loss > self.factor ** 0.5 * median:
          self.suspect_since = self.suspect_since or step
          return
      self.losses.append(loss)
      self.suspect_since = None
      self.ckpt.protect_up_to(step - 1)
      return
    self.skipped += 1
    if self.mode == "skip":
      log.warning("Step %d: non-finite loss or gradients; the update was skipped (%d so far).", step,
                  self.skipped)
      return
    self._stop(step, f"Step {step}: the loss or the gradients are not finite (NaN or inf), so training stops. "
               f"The update of step {step} was not applied and is not saved.", nonfinite=True)

  def _stop(self, step: int, what: str, nonfinite: bool) -> None:
    self.ckpt.wait()
    # The loss of step f was computed on the weights after step f - 1: those are the first bad ones.
    last_good = (self.suspect_since or step) - 2
    steps = self.ckpt.all_steps()
    good = max((s for s in steps if s <= last_good), default=None)
    bad = [s for s in steps if s > last_good]
    message = what
    if bad:
      aside = self.ckpt.set_aside(bad, "diverged")
      message += (f" The checkpoint{'s' if len(bad) > 1 else ''} of step{'s' if len(bad) > 1 else ''} "
                  f"{', '.join(map(str, bad))} (weights from step {last_good + 1} on, which gave that loss) "
                  f"{'were' if len(bad) > 1 else 'was'} moved to {aside} (nothing deleted).")
    # A tenth: a run that blew up by orders of magnitude diverged again 3 steps after resuming with half (tests).
    lower = f"--config.optimizer.learning_rate={self.learning_rate / 10:g}"
    if good is not None:
      message += (f" The newest good checkpoint is step {good} in {self.ckpt.directory}. To go on from it, rerun "
                  f"with --config.resume_from_step={good} {lower} (a tenth of the current)")
    else:
      message += f" No good checkpoint remains: rerun with {lower} (a tenth of the current) to start again from step 0"
    message += ", and/or set --config.optimizer.grad_clip_norm (e.g. 1.0)"
    if nonfinite:
      message += "; or check the data, or set --config.on_nonfinite=skip to skip such steps and go on"
    raise FloatingPointError(message + ".")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       progress: bool = True, devices=None) -> state_lib.TrainState:
  """Trains per `config`, checkpointing to `workdir` and resuming from its latest checkpoint.

  Returns:
    The final train state (in its shardings on the mesh).
  """
  workdir = pathlib.Path(workdir)
  exp = setup_lib.build(config, devices)  # a bad recipe fails before anything is written
  _make_workdir(workdir)
  # Listening from here on: a SIGTERM or Ctrl-C during data preparation, restore or compilation stops after the
  # first step, with its checkpoint, instead of killing the process.
  preemption = Preemption()
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
  if jax.process_index() == 0:
    log.info("Training on %d %s device(s) %s; convolutions on %s (config.conv_backend=%s)", exp.mesh.size,
             jax.default_backend(), dict(exp.mesh.shape), exp.conv_backend, config.conv_backend)
  sharding.check_batch_divisible(config.batch_size, exp.mesh)
  sharding.check_batch_divisible(config.batch_size // config.grad_accum_steps, exp.mesh,
                                 "batch_size / config.grad_accum_steps")
  source = datasets.data_source(config.dataset, config.dataset.train_split)
  if config.dataset.check_labels:  # before anything is compiled: all-ignore masks would train with loss 0
    label_stats.check_training_labels(source, exp.spec, config.dataset, config.dataset.train_split, workdir,
                                      say=_say)
  rows = sharding.process_rows(sharding.batch_sharding(exp.mesh), config.batch_size,
                               (*config.dataset.crop_size, 1))
  train_ds = pipeline.train_dataset(source, spec=exp.spec, batch_size=config.batch_size,
                                    crop_size=config.dataset.crop_size, seed=config.seed, rows=rows,
                                    scale_range=config.dataset.train_scale)
  if jax.process_index() == 0:
    log.info("Dataset %s prepared: split %r, %d examples", exp.spec.name, config.dataset.train_split, len(source))

  ckpt = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
  if config.resume_from_step is not None:
    _rewind(ckpt, config)
  # A damaged checkpoint is named and moved aside; the newest one that restores is resumed from.
  start, state = ckpt.restore_newest(exp.abstract_state(), config, "resume training from", set_aside_damaged=True)
  if start is None:
    state, start = exp.init_state(), 0
  else:
    log.info("Resumed from step %d (%s)", start, ckpt.directory)
    if start >= config.num_train_steps:
      ckpt.close()
      return state

  data_iter = pipeline.train_iterator(train_ds, start_step=start, worker_count=config.dataset.worker_count)
  train_fn = steps.jit_train_step(
      exp.mesh, exp.state_sharding, grad_accum_steps=config.grad_accum_steps, model=exp.model, seed=config.seed,
      mean=exp.mean, std=exp.std, ce_weight=config.loss.ce_weight, dice_weight=config.loss.dice_weight,
      aux_weight=config.loss.aux_weight, augment=exp.augment, normalization=exp.normalization,
      class_weights=None if config.loss.class_weights is None else tuple(config.loss.class_weights),
      conv_backend=exp.conv_backend)
  schedule = state_lib.make_schedule(config.optimizer, config.num_train_steps)
  writer = MetricsWriter(workdir)
  if writer.enabled:  # the recipe as run, once per run (a resumed run may have changed flags)
    logs.write_config(workdir, config)
    writer.tensorboard.recipe(config, start)
  bar = tqdm.tqdm(total=config.num_train_steps, initial=start, desc="train", dynamic_ncols=True,
                  disable=not progress or jax.process_index() != 0)
  guard = NonFiniteGuard(config, ckpt, start, writer.losses_up_to(start))
  try:
    state = _train_steps(config, exp, state, start, data_iter, train_fn, schedule, writer, bar, ckpt,
                         preemption, guard, progress)
  finally:
    bar.close()
    data_iter.close()  # stops grain's worker processes
    writer.tensorboard.close()
    writer.plot()  # at the end, on a stop request and on an error alike
    ckpt.close()  # waits for the last save and reports a failed one
  return state


def _train_steps(config, exp, state, start, data_iter, train_fn, schedule, writer, bar, ckpt,
                 preemption, guard, progress):
  last_time, last_step = time.perf_counter(), start
  for step in range(start + 1, config.num_train_steps + 1):
    batch = pipeline.to_global(next(data_iter), exp.mesh, config.batch_size)
    state, train_metrics = train_fn(state, batch)
    guard.push(step, train_metrics)
    bar.update(1)
    final = step == config.num_train_steps
    if step % config.log_every_steps == 0 or final or step == start + 1:
      values = {k: float(v) for k, v in jax.device_get(train_metrics).items()}
      now = time.perf_counter()
      record = {"step": step, "loss": values["loss"], "learning_rate": float(schedule(step - 1)),
                "train_pixel_accuracy": values["pixel_accuracy"], "grad_norm": values["grad_norm"],
                "skipped_nonfinite_steps": guard.skipped,
                # The first logged step includes compilation; its throughput is reported but not representative.
                "images_per_second": (step - last_step) * config.batch_size / (now - last_time),
                "time": time.time()}
      writer.write(record)
      bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{record['images_per_second']:.1f}")
      last_time, last_step = time.perf_counter(), step
    preempted = preemption.reached(step)
    if step % config.checkpoint_every_steps == 0 or final or preempted:
      guard.flush()  # this step's flag and loss before its checkpoint: a refused step is never saved
      ckpt.save(step, state, config)
    evaluate_now = config.eval_every_steps and (step % config.eval_every_steps == 0 or final)
    if preempted:
      ckpt.wait()
      _say(f"Stop requested ({preemption.reason}): saved the checkpoint of step {step} in {ckpt.directory}; "
           "run the same command to resume.")
      # The resumed run starts after this step and would never evaluate it; the checkpoint is already safe, so a
      # kill before the evaluation ends loses only the evaluation.
      if evaluate_now:
        _evaluate_during_training(exp, state, step, writer, progress)
      break
    if evaluate_now:
      _evaluate_during_training(exp, state, step, writer, progress)
      last_time = time.perf_counter()
  guard.flush()
  return state


def _say(message: str) -> None:
  """A line on the terminal from process 0 only (every process runs the same loop)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


def _evaluate_during_training(exp, state, step, writer, progress) -> None:
  evaluation = evaluate.evaluate(exp, state, exp.config.eval_split, progress=progress,
                                 num_visualizations=exp.config.num_visualizations if writer.enabled else 0)
  result = metrics.compute_metrics(evaluation.cm, exp.spec.class_names)
  keys = ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "mean_dice")
  writer.write({"step": step, **{f"eval/{k}": result[k] for k in keys}})
  if evaluation.samples:
    writer.tensorboard.images("eval/overlay", logs.overlay_images(evaluation.samples, exp.spec.palette), step)
  writer.tensorboard.flush()
  writer.plot()
  _say(f"step {step}: {exp.config.eval_split} mIoU {result['mean_iou']:.4f}, "
       f"pixel accuracy {result['pixel_accuracy']:.4f}")
