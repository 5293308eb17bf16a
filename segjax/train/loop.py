"""train_and_evaluate: the one training loop behind train.py."""

from __future__ import annotations

import json
import logging
import pathlib
import signal
import threading
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
import ml_collections
import tqdm

from segjax import evaluate, metrics, sharding
from segjax.data import datasets, label_stats, pipeline
from segjax.train import checkpoint as checkpoint_lib
from segjax.train import setup as setup_lib
from segjax.train import state as state_lib
from segjax.train import steps

log = logging.getLogger(__name__)


class MetricsWriter:
  """Appends one JSON object per line to DIR/metrics.jsonl (process 0 only), so a resumed run continues it."""

  def __init__(self, workdir: pathlib.Path):
    self.enabled = jax.process_index() == 0
    self.path = workdir / "metrics.jsonl"

  def write(self, record: dict[str, Any]) -> None:
    if self.enabled:
      with self.path.open("a") as f:
        f.write(json.dumps(record) + "\n")


class Preemption:
  """Whether the job was asked to stop (SIGTERM, what TPU VMs and most schedulers send before a kill).

  One process: a SIGTERM handler sets a flag (installed from the main thread only; the previous handler comes
  back on `close`). Several processes: JAX's distributed runtime already watches SIGTERM, and
  `reached_preemption_sync_point` makes every process stop at the same step, so that their checkpoint agrees.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


class NonFiniteGuard:
  """Reads each step's `finite` flag one step late (so the host never waits on the step it just launched) and
  stops or counts as `config.on_nonfinite` says. The train step itself never applies a non-finite update."""

  def __init__(self, mode: str, ckpt: checkpoint_lib.Checkpointer):
    self.mode, self.ckpt = mode, ckpt
    self.pending: tuple[int, jax.Array] | None = None
    self.skipped = 0

  def push(self, step: int, finite: jax.Array) -> None:
    self.flush()
    self.pending = (step, finite)

  def flush(self) -> None:
    if self.pending is None:
      return
    step, finite = self.pending
    self.pending = None
    if bool(jax.device_get(finite)):
      return
    self.skipped += 1
    if self.mode == "skip":
      log.warning("Step %d: non-finite loss or gradients; the update was skipped (%d so far).", step,
                  self.skipped)
      return
    self.ckpt.wait()
    last = self.ckpt.latest_step()
    raise FloatingPointError(
        f"Step {step}: the loss or the gradients are not finite (NaN or inf), so training stops. The update of "
        f"step {step} was not applied; the checkpoints are intact"
        + (f" (latest: step {last} in {self.ckpt.directory})" if last is not None else "")
        + ". Lower --config.optimizer.learning_rate, set --config.optimizer.grad_clip_norm, check the data, or "
        "set --config.on_nonfinite=skip to skip such steps and go on.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       progress: bool = True, devices=None) -> state_lib.TrainState:
  """Trains per `config`, checkpointing to `workdir` and resuming from its latest checkpoint.

  Returns:
    The final train state (in its shardings on the mesh).
  """
  workdir = pathlib.Path(workdir)
  exp = setup_lib.build(config, devices)  # a bad recipe fails before anything is written
  # Listening from here on: a SIGTERM during data preparation, restore or compilation stops after the first step,
  # with its checkpoint, instead of killing the process.
  preemption = Preemption()
  try:
    return _train(config, exp, workdir, preemption, progress)
  finally:
    preemption.close()


def _train(config, exp, workdir, preemption, progress):
  workdir.mkdir(parents=True, exist_ok=True)
  if progress:
    _say(f"Training on {exp.mesh.size} {jax.default_backend()} device(s) {dict(exp.mesh.shape)}; convolutions on "
         f"{exp.conv_backend} (config.conv_backend={config.conv_backend})")
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

  ckpt = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
  start = ckpt.latest_step()
  if start is None:
    state, start = exp.init_state(), 0
  else:
    checkpoint_lib.check_compatible(ckpt, start, config, "resume training from")
    state = ckpt.restore(start, exp.abstract_state())
    log.info("Resumed from %s at step %d", ckpt.directory, start)
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
  bar = tqdm.tqdm(total=config.num_train_steps, initial=start, desc="train", dynamic_ncols=True,
                  disable=not progress or jax.process_index() != 0)
  guard = NonFiniteGuard(config.on_nonfinite, ckpt)
  try:
    state = _train_steps(config, exp, state, start, data_iter, train_fn, schedule, writer, bar, ckpt,
                         preemption, guard, progress)
  finally:
    bar.close()
    data_iter.close()  # stops grain's worker processes
    ckpt.close()  # waits for the last save and reports a failed one
  return state


def _train_steps(config, exp, state, start, data_iter, train_fn, schedule, writer, bar, ckpt,
                 preemption, guard, progress):
  last_time, last_step = time.perf_counter(), start
  for step in range(start + 1, config.num_train_steps + 1):
    batch = pipeline.to_global(next(data_iter), exp.mesh, config.batch_size)
    state, train_metrics = train_fn(state, batch)
    guard.push(step, train_metrics["finite"])
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
    if final:
      guard.flush()  # the last step's flag before its checkpoint
    preempted = preemption.reached(step)
    if step % config.checkpoint_every_steps == 0 or final or preempted:
      ckpt.save(step, state, config)
    evaluate_now = config.eval_every_steps and (step % config.eval_every_steps == 0 or final)
    if preempted:
      ckpt.wait()
      _say(f"Stop requested (SIGTERM): saved the checkpoint of step {step} in {ckpt.directory}; "
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
  cm = evaluate.evaluate(exp, state, exp.config.eval_split, progress=progress).cm
  result = metrics.compute_metrics(cm, exp.spec.class_names)
  keys = ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", "mean_dice")
  writer.write({"step": step, **{f"eval/{k}": result[k] for k in keys}})
  _say(f"step {step}: {exp.config.eval_split} mIoU {result['mean_iou']:.4f}, "
       f"pixel accuracy {result['pixel_accuracy']:.4f}")
