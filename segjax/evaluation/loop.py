"""The evaluation loop every task shares: global batches of a split, one jitted step, results read one batch late.

Global eval batch b holds examples [bB, (b+1)B) of the split; each process reads the rows its devices hold
(segjax.data.pipeline.eval_batches) and the last batch is filled with padding examples (index -1), so every
example is seen exactly once and every process runs the same number of steps. The host reads the outputs of
batch b while the devices run batch b + 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import tqdm

from segjax.data import pipeline


@dataclasses.dataclass
class EvalResult:
  """What a task's evaluation hands the training loop.

  Attributes:
    scalars: metrics logged as eval/<name> to metrics.jsonl and TensorBoard, fractions in [0, 1].
    headline: one line for the terminal (e.g. "mIoU 0.7123, pixel accuracy 0.9012").
    overlays: (name, [H, W, 3] uint8) pictures for TensorBoard, or None.
    details: the task's full result (e.g. the semantic Evaluation), for callers that want it.
  """
  scalars: dict[str, float]
  headline: str
  overlays: Any = None
  details: Any = None


def run_batches(exp: Any, source, *, example: Callable, padding: Callable, batch_size: int,
                step: Callable[[dict[str, jax.Array]], Any], collect: Callable[[int, dict, Any], None],
                specs: dict | None = None, desc: str = "eval", progress: bool = True) -> None:
  """Runs `step(global batch)` over every batch of `source` and calls `collect(b, local batch, outputs)` for each.

  Args:
    exp: the Experiment (its mesh).
    source: the split (random access).
    example, padding: the task's host functions (`pipeline.eval_batches`).
    batch_size: the global eval batch size.
    step: the jitted step; compiled once per shape (build it once per run, not per call).
    collect: reads the outputs of batch b on the host; `local` holds this process's rows, their "index" in the
      split (-1 for padding).
    specs: each field's PartitionSpec (default by rank).
  """
  rows = pipeline.GlobalBatches.rows(exp.mesh, batch_size)
  local = pipeline.eval_batches(source, example=example, padding=padding, batch_size=batch_size, rows=rows)
  batches = pipeline.GlobalBatches(local, exp.mesh, batch_size, specs, with_local=True)
  pending = None
  total = pipeline.num_eval_batches(len(source), batch_size)
  for b, (host, glob) in enumerate(tqdm.tqdm(batches, total=total, desc=desc, leave=False,
                                             disable=not progress or jax.process_index() != 0)):
    outputs = step(glob)
    if pending is not None:
      collect(*pending)
    pending = (b, host, outputs)
  if pending is not None:
    collect(*pending)
