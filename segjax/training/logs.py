"""Logs people already read, beside metrics.jsonl: TensorBoard event files and DIR/config.json.

The event files are written by tensorboardX, which needs protobuf but not TensorFlow, under DIR/tensorboard/
(`tensorboard --logdir DIR/tensorboard`). Each run (a resumed one too) adds a new event file there; TensorBoard
reads them as one run. Scalars carry the values of metrics.jsonl's records at the same steps, training ones under
`train/` (`train/loss`, `train/learning_rate`, `train/images_per_second`, ...) and evaluation ones under their
metrics.jsonl name (`eval/mean_iou`, ...); the recipe is a text summary (`recipe`), evaluation overlays images
(`eval/overlay/<example index>`: image | ground truth | prediction | overlay, as in eval.py's reports).
Only process 0 writes (the other processes compute the same values).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
CONFIG_FILE = "config.json"
DROPPED_FILE = "metrics_dropped.jsonl"  # records a resumed run took out of metrics.jsonl
_NOT_SCALARS = ("step", "time")


def scalar_tag(key: str) -> str:
  """The TensorBoard tag of a metrics.jsonl key: `eval/...` as it is, training keys under `train/`."""
  return key if "/" in key else f"train/{key}"


def recipe_json(config: ml_collections.ConfigDict) -> str:
  """The recipe as JSON (tuples become lists; values JSON cannot hold, their best-effort form)."""
  return config.to_json_best_effort(indent=2, sort_keys=True)


def write_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> pathlib.Path:
  """Writes DIR/config.json, the recipe as run (flag overrides included), atomically (a kill leaves the old one)."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(recipe_json(config) + "\n")
  os.replace(tmp, path)
  return path


class TensorBoard:
  """Writes DIR/tensorboard/ event files (process 0 only; the file is opened on the first write)."""

  def __init__(self, workdir: str | pathlib.Path, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.directory = pathlib.Path(workdir) / TENSORBOARD_DIR
    self._writer = None

  def _get(self):
    if self._writer is None:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel  (imports protobuf)
      self._writer = SummaryWriter(logdir=str(self.directory), flush_secs=30)
    return self._writer

  def scalars(self, record: dict[str, Any]) -> None:
    """One metrics.jsonl record (`step`, optional `time`, and numbers) as scalars at its step."""
    if not self.enabled:
      return
    writer, step = self._get(), int(record["step"])
    for key, value in record.items():
      if key not in _NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
        writer.add_scalar(scalar_tag(key), float(value), step, walltime=record.get("time"))

  def recipe(self, config: ml_collections.ConfigDict, step: int) -> None:
    """The recipe as a text summary (shown as a code block in TensorBoard's Text tab)."""
    if self.enabled:
      text = "\n".join("    " + line for line in recipe_json(config).splitlines())  # markdown code block
      self._get().add_text("recipe", text, step)

  def images(self, tag: str, images: Sequence[tuple[str, np.ndarray]], step: int) -> None:
    """uint8 [H, W, 3] images as `tag/<name>` at `step`."""
    if not self.enabled:
      return
    writer = self._get()
    for name, image in images:
      writer.add_image(f"{tag}/{name}", np.asarray(image, np.uint8), step, dataformats="HWC")

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def read_metrics(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
  """DIR/metrics.jsonl's records in file order (a line cut short by a kill is skipped)."""
  records = []
  try:
    with (pathlib.Path(workdir) / "metrics.jsonl").open() as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except ValueError:
          continue
  except FileNotFoundError:
    pass
  return records


class MetricsWriter:
  """Appends one JSON object per line to DIR/metrics.jsonl (process 0 only), so a resumed run continues it, and
  the same values as TensorBoard scalars (`TensorBoard`)."""

  def __init__(self, workdir: pathlib.Path):
    self.enabled = jax.process_index() == 0
    self.path = workdir / "metrics.jsonl"
    self.tensorboard = TensorBoard(workdir, self.enabled)

  def losses_up_to(self, step: int) -> list[float]:
    """The training losses logged for steps up to `step`, oldest first (of a step logged twice, the last record;
    `drop_after` keeps a resumed run from logging a step twice, files of older versions may)."""
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

  def drop_after(self, step: int) -> int:
    """Moves the records of steps after `step` (a resumed run's restored step), which a killed run logged past
    its last checkpoint and the resumed run logs again, out of metrics.jsonl and appends them to
    DIR/metrics_dropped.jsonl (nothing is deleted); returns how many. Rewritten atomically (process 0)."""
    if not self.enabled or not self.path.exists():
      return 0
    kept, dropped = [], []
    with self.path.open() as f:
      for line in f:
        line = line if line.endswith("\n") else line + "\n"
        try:
          past = json.loads(line).get("step", 0) > step
        except ValueError:  # a line cut short by a kill
          past = True
        (dropped if past else kept).append(line)
    if dropped:
      with (self.path.parent / DROPPED_FILE).open("a") as f:
        f.write("".join(dropped))
      tmp = self.path.with_suffix(".jsonl.tmp")
      tmp.write_text("".join(kept))
      os.replace(tmp, self.path)
    return len(dropped)
