"""Checkpoints with orbax: train state and the recipe, saved asynchronously.

The data position needs no item of its own: the input pipeline's batch for step s is a pure function of the
recipe and s (segjax.data.pipeline.train_dataset), so the restored step is the iterator state.

A step directory becomes visible only once orbax has finalised it (written to a temporary name, then renamed),
so a process killed mid-save leaves the previous checkpoint as the latest complete one. A save that fails (disk
full, file size limit, permissions) likewise leaves the earlier checkpoints untouched; `Checkpointer` turns the
failure into a `CheckpointSaveError` naming the directory, the step, the free space and the step a rerun resumes
from. Orbax saves asynchronously, so a failure in the background surfaces at the next `save` or `wait`, and is
reported there with the step whose save failed.

A checkpoint that does not restore (a truncated data file, a lost metadata file or manifest) is named with a
one-line reason and the newest one that restores is used instead (`Checkpointer.restore_newest`). Nothing is ever
deleted except by retention: checkpoints training must not resume from (damaged, diverged, or newer than
`resume_from_step`) are moved aside to DIR/checkpoints_<why>/<step>-<time> (`Checkpointer.set_aside`), which also
lets orbax save those steps again. Retention keeps the `keep` latest checkpoints plus the newest one the loop has
verified as good (`Checkpointer.protect_up_to`), so that a divergence always leaves a good checkpoint behind.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import pathlib
import re
import shutil
import time
from typing import Any, Sequence

import ml_collections
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from flax import traverse_util

from segjax import cli
from segjax import state as state_lib
from segjax.data import datasets

log = logging.getLogger(__name__)


class CheckpointSaveError(OSError):
  """A checkpoint could not be written; the message says where, which step, the free space and how to go on.

  An OSError, like the disk-full or file-too-large error it usually wraps (the original is its __cause__).
  """


def _errno(error: BaseException) -> int | None:
  """The OS error number behind an orbax/tensorstore failure, if one can be told."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno:
      return error.errno
    # tensorstore reports OS errors inside a ValueError: "... File too large [os_error_code='27']".
    found = re.search(r"os_error_code='?(\d+)|\[Errno (\d+)\]", str(error))
    if found:
      return int(found.group(1) or found.group(2))
    error = error.__cause__ or error.__context__
  return None


def _size(num_bytes: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if num_bytes < 1024:
      break
    num_bytes /= 1024
  else:
    unit = "TiB"
  return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"


def reason(error: BaseException) -> str:
  """One line saying why orbax/tensorstore failed; their messages run to dozens of lines of specs and tracebacks.

  The innermost status line ("OUT_OF_RANGE: Error reading ...", "NOT_FOUND: ...") says most; the rest is cut.
  """
  chain, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    chain.append(error)
    error = error.__cause__ or error.__context__
  def first_line(e):
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
  status = [e for e in chain if re.match(r"[A-Z_]{4,}: ", first_line(e))]
  chosen = (status or chain)[-1 if status else 0]
  text = re.sub(r"\s*\[tensorstore_spec.*", "", first_line(chosen))
  text = re.sub(r"See full TensorStore details.*", "", text).strip()
  return f"{type(chosen).__name__}: {text[:240]}{'...' if len(text) > 240 else ''}"


@dataclasses.dataclass
class _KeepNewestUpTo:
  """Orbax preservation policy: keeps the newest checkpoint at or before `limit` (None: none)."""
  limit: int | None = None

  def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
    del context
    eligible = [c.step for c in checkpoints if self.limit is not None and c.step <= self.limit]
    newest = max(eligible, default=None)
    return [c.step == newest for c in checkpoints]


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for segjax's two items: state and config."""

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3, async_save: bool = True):
    self.workdir = pathlib.Path(workdir).absolute()
    self.directory = self.workdir / "checkpoints"
    self._verified = _KeepNewestUpTo()
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([ocp.checkpoint_managers.LatestN(keep), self._verified])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=async_save,
                                           create=True,
                                           # a save killed midway leaves <step>.orbax-checkpoint-tmp: remove it
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._in_flight: int | None = None  # step of an async save not yet waited for

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def protect_up_to(self, step: int) -> None:
    """The weights of `step` proved good (the loss computed on them was fine): retention keeps the newest
    checkpoint at or before `step`, whatever `keep` says, until a newer one proves good."""
    self._verified.limit = step

  def set_aside(self, steps: Sequence[int], why: str) -> pathlib.Path | None:
    """Moves the checkpoints of `steps` to DIR/checkpoints_<why>/<step>-<time> (deleting nothing) and returns
    that folder; orbax no longer sees them and may save those steps again."""
    if not steps:
      return None
    self.wait()
    aside = self.workdir / f"checkpoints_{why}"
    if jax.process_index() == 0:
      aside.mkdir(exist_ok=True)
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for step in steps:
        target = aside / f"{step}-{stamp}"
        n = 1
        while target.exists():
          target, n = aside / f"{step}-{stamp}-{n}", n + 1
        os.rename(self.directory / str(step), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"segjax set_aside {why} {list(steps)}")
    self.manager.reload()
    return aside

  def restore_newest(self, abstract_state: Any, config: ml_collections.ConfigDict, action: str, *,
                     set_aside_damaged: bool) -> tuple[int | None, Any]:
    """The newest checkpoint that restores, as (step, state); (None, None) where there is none at all.

    A checkpoint that does not restore is named with its reason in a warning, and moved to
    DIR/checkpoints_damaged if `set_aside_damaged` (training, which will save that step again).

    Raises:
      ValueError: checkpoints exist but none restores, or they are of another model or classes.
    """
    steps, damaged = self.all_steps(), []
    found = None
    for step in reversed(steps):
      try:
        state = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except  (orbax and tensorstore raise many types)
        check_compatible(self, step, config, action, quiet=True)  # another model is refused as such
        damaged.append((step, reason(e)))
        continue
      check_compatible(self, step, config, action)
      found = (step, state)
      break
    if not damaged:
      return found or (None, None)
    what = ", ".join(str(step) for step, _ in damaged)
    why = "; ".join(f"{text}" if len(damaged) == 1 else f"step {step}: {text}" for step, text in damaged)
    message = (f"checkpoint step{'s' if len(damaged) > 1 else ''} {what} in {self.directory} cannot be restored "
               f"({why})")
    if found is None:
      raise ValueError(f"{message}, and no other checkpoint there restores. Use another --workdir, or move the "
                       "damaged step directories out of checkpoints/ to start again from step 0.")
    verb = "resuming from" if set_aside_damaged else "using"
    message += f"; {verb} step {found[0]}, the newest that restores."
    if set_aside_damaged:
      aside = self.set_aside([step for step, _ in damaged], "damaged")
      message += f" Moved the damaged checkpoint{'s' if len(damaged) > 1 else ''} to {aside} (nothing deleted)."
    log.warning(message)
    return found

  def save(self, step: int, state: Any, config: ml_collections.ConfigDict | None = None) -> None:
    """Starts saving `state` (and the recipe) as `step`; returns before the arrays are written.

    Raises:
      CheckpointSaveError: this save, or the previous one still in flight, failed.
    """
    # orbax waits for the previous save inside `manager.save`; waiting here first attributes its failure to the
    # right step. It costs nothing extra: saves are checkpoint_every_steps apart.
    self.wait()
    items = {"state": ocp.args.StandardSave(state_lib.to_saved(state))}
    if config is not None:
      items["config"] = ocp.args.JsonSave(config.to_dict())
    try:
      self.manager.save(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except  (tensorstore and orbax raise many types)
      raise self._save_failed(step, e) from e
    self._in_flight = step

  def _save_failed(self, step: int | None, error: Exception) -> CheckpointSaveError:
    try:
      free = f"{_size(shutil.disk_usage(self.directory).free)} free there"
    except OSError as e:
      free = f"free space unknown ({e})"
    try:
      self.manager.reload()  # the steps on disk: a failed save leaves none, only its temporary directory
      latest = self.manager.latest_step()
    except Exception:  # pylint: disable=broad-except  (reporting must not hide the original error)
      latest = None
    resume = (f"to resume from step {latest}, the latest complete checkpoint" if latest is not None
              else "to start again (there is no complete checkpoint yet)")
    # tensorstore's messages run to many lines; the whole one stays in the __cause__.
    lines = str(error).strip().splitlines()
    detail = f"{type(error).__name__}: {lines[0][:300] if lines else ''}"
    code = _errno(error)
    if code is None:
      reason, detail = detail, ""
    else:
      reason = f"{os.strerror(code)} ({errno.errorcode.get(code, code)}"
      reason += ": a file size limit, see `ulimit -f`)" if code == errno.EFBIG else ")"
      detail = f" ({detail})"
    return CheckpointSaveError(
        f"Saving the checkpoint of step {'?' if step is None else step} in {self.directory} failed: {reason}; "
        f"{free}. Free space or use another --workdir; rerun the same command {resume}.{detail}")

  def restore(self, step: int, abstract_state: Any) -> Any:
    """Restores the state into the shardings of `abstract_state`."""
    items = {"state": ocp.args.StandardRestore(state_lib.to_saved(abstract_state))}
    try:
      return state_lib.from_saved(self.manager.restore(step, args=ocp.args.Composite(**items)).state)
    except Exception:
      cli.quiet_orbax_aftermath()  # orbax's abandoned reads would print thousands of lines
      raise

  def restore_config(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config

  def wait(self) -> None:
    """Waits for the save in flight.

    Raises:
      CheckpointSaveError: it failed (once: orbax reports a failure to a thread once).
    """
    step, self._in_flight = self._in_flight, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(step, e) from e

  def close(self) -> None:
    """Waits for the save in flight and closes the manager.

    Raises:
      CheckpointSaveError: the save in flight failed (the manager is closed all the same).
    """
    try:
      self.wait()
    finally:
      self.manager.close()


# The one model key that may differ between a checkpoint and the recipe restoring it (see check_compatible).
_COMPUTE_DTYPE = "model.dtype"


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"<prefix>a.b": value} of a nested dict (empty sub-dicts dropped)."""
  return {f"{prefix}{key}": value for key, value in traverse_util.flatten_dict(tree, sep=".").items()}


def _classes(recipe: dict[str, Any]) -> tuple[list[str] | None, int | None]:
  """Class names and image channels a saved recipe's dataset has (None where it cannot be told)."""
  dataset = recipe.get("dataset", {})
  if dataset.get("name") == datasets.FOLDER:
    folder = dataset.get("folder", {})
    return folder.get("class_names"), folder.get("num_channels")
  spec = datasets.DATASETS.get(dataset.get("name"))
  return (list(spec.class_names), spec.num_channels) if spec else (None, None)


def check_compatible(ckpt: Checkpointer, step: int, config: ml_collections.ConfigDict, action: str,
                     quiet: bool = False) -> None:
  """Refuses to restore a checkpoint whose model or classes differ from `config`'s, saying what differs.

  Compared: every `config.model` key (architecture, widths, param_dtype: what the parameters' shapes and meaning
  depend on) except `model.dtype`, the class names, the image channels and whether `config.ema` keeps a moving
  average (`ema.decay` > 0: the state then holds one more copy of the parameters). Everything else (schedule, data
  paths, even another dataset with the same classes) may change between runs. `model.dtype` is the compute
  dtype: parameters are stored in param_dtype whatever it is, so a float32 run may be resumed or evaluated in
  bfloat16 and back.

  `quiet`: say nothing when the checkpoint holds no readable recipe (a damaged one, reported by the caller).

  Raises:
    ValueError: naming each differing key with both values.
  """
  try:
    saved = ckpt.restore_config(step)
  except Exception as e:  # pylint: disable=broad-except  (orbax raises several types for a missing item)
    if quiet:
      return
    log.warning("Checkpoint %s step %d holds no readable recipe (%s); not checking compatibility.",
                ckpt.directory, step, e)
    return
  now = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as the checkpoint stores them
  old_model, new_model = _flat(saved.get("model", {}), "model."), _flat(now["model"], "model.")
  for model in (old_model, new_model):
    model.pop(_COMPUTE_DTYPE, None)
  diffs = [f"{key}: {old_model.get(key, '<absent>')!r} in the checkpoint, {new_model.get(key, '<absent>')!r} now"
           for key in sorted(set(old_model) | set(new_model)) if old_model.get(key) != new_model.get(key)]
  (old_classes, old_channels), (new_classes, new_channels) = _classes(saved), _classes(now)
  if old_classes is not None and new_classes is not None and list(old_classes) != list(new_classes):
    diffs.append(f"classes: {len(old_classes)} {list(old_classes)} in the checkpoint "
                 f"({saved['dataset']['name']}), {len(new_classes)} {list(new_classes)} now "
                 f"({now['dataset']['name']})")
  if old_channels is not None and new_channels is not None and old_channels != new_channels:
    diffs.append(f"image channels: {old_channels} in the checkpoint, {new_channels} now")
  # A moving average of the weights is part of the state (segjax.state.TrainState.ema_params): a checkpoint with
  # one does not restore into a state without, nor the reverse. Said here, so that it is never taken for damage.
  old_ema, new_ema = (float((recipe.get("ema") or {}).get("decay", 0.0)) for recipe in (saved, now))
  if (old_ema > 0) != (new_ema > 0):
    diffs.append(f"ema.decay: {old_ema!r} in the checkpoint, {new_ema!r} now (a moving average of the weights is "
                 "kept in the state only when ema.decay > 0)")
  if diffs:
    raise ValueError(
        f"Cannot {action} {ckpt.directory} at step {step}: it was trained with another model or classes. "
        + "; ".join(diffs) + ". Use the recipe it was trained with (saved with the checkpoint, see "
        "Checkpointer.restore_config) or another --workdir.")


def _no_checkpoint(workdir: str, workdir_path: pathlib.Path, ckpt_dir: pathlib.Path) -> str:
  """Why `workdir` has nothing to restore, and what to do, for the FileNotFoundError `restore_checkpoint` raises."""
  train = (f"train first with `python train.py --config=... --workdir={workdir}`, or pass the --workdir you trained "
           "in")
  if workdir_path.exists() and not workdir_path.is_dir():
    return f"--workdir={workdir} is a file, not a training directory: {train}."
  if not workdir_path.is_dir():
    return f"--workdir={workdir} does not exist (from {pathlib.Path.cwd()}): {train}."
  if not ckpt_dir.is_dir():
    return f"{ckpt_dir} does not exist, so {workdir_path} is no training directory: {train}."
  entries = sorted(p.name for p in ckpt_dir.iterdir())
  # orbax writes a step to "<step>.orbax-checkpoint-tmp*" and renames it once complete.
  unfinished = [name for name in entries if ".orbax-checkpoint-tmp" in name]
  if unfinished:
    return (f"{ckpt_dir} holds no complete checkpoint, only unfinished saves ({', '.join(unfinished)}): the run "
            "stopped while saving (killed, or out of disk space). Rerun the same train.py command to train and "
            f"save again, or pass the --workdir of a finished run.")
  if not entries:
    return f"{ckpt_dir} is empty: no checkpoint was saved there yet; {train}."
  return f"{ckpt_dir} holds no checkpoint step directory (only {entries[:5]}): {train}."


def check_workdir(workdir: str | pathlib.Path) -> None:
  """Raises FileNotFoundError (saying why and what to do) when `workdir` has no checkpoints/ directory; checked
  before the recipe's experiment is built, which can take seconds."""
  workdir_path = pathlib.Path(workdir)
  ckpt_dir = (workdir_path / "checkpoints").absolute()
  if not ckpt_dir.is_dir():
    raise FileNotFoundError(_no_checkpoint(str(workdir), workdir_path, ckpt_dir))


def restore_from(workdir: str | pathlib.Path, abstract: Any, config: ml_collections.ConfigDict,
                 checkpoint_step: int | None = None, purpose: str = "evaluate") -> tuple[Any, int]:
  """(state, step) of `workdir`'s checkpoint `checkpoint_step` (default the newest that restores) restored onto
  `abstract` (shapes and target shardings; segjax.experiment.restore builds them from the recipe).

  Raises:
    FileNotFoundError: no complete checkpoint. ValueError: see segjax.experiment.restore.
  """
  workdir = str(workdir)
  workdir_path = pathlib.Path(workdir)
  ckpt_dir = (workdir_path / "checkpoints").absolute()
  check_workdir(workdir)
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
  try:
    steps_available = ckpt.all_steps()
    if not steps_available:
      raise FileNotFoundError(_no_checkpoint(workdir, workdir_path, ckpt_dir))
    if checkpoint_step is None:
      step, state = ckpt.restore_newest(abstract, config, purpose, set_aside_damaged=False)
      return state, int(step)
    step = checkpoint_step
    if step not in steps_available:
      raise ValueError(f"--checkpoint_step={step} is not in {ckpt.directory}; available steps: {steps_available}")
    check_compatible(ckpt, step, config, purpose)
    try:
      return ckpt.restore(step, abstract), int(step)
    except Exception as e:  # pylint: disable=broad-except  (orbax and tensorstore raise many types)
      error = e
    restoring = []
    for other in steps_available:
      try:
        ckpt.restore(other, abstract)
        restoring.append(other)
      except Exception:  # pylint: disable=broad-except
        pass
    raise ValueError(f"--checkpoint_step={step}: checkpoint step {step} in {ckpt.directory} cannot be restored "
                     f"({reason(error)}). Steps that restore: {restoring or 'none'}"
                     + (f"; pass one of them, e.g. --checkpoint_step={restoring[-1]}." if restoring else ".")
                     ) from error
  finally:
    ckpt.close()
