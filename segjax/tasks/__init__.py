"""What differs between segmentation tasks, behind one interface the shared core calls.

The loop (segjax.training), checkpointing and exact resume, the non-finite guard, gradient accumulation, mixed
precision, the mesh and shardings, global batching and metrics.jsonl know nothing about the task: they call the
`Task` of the recipe (`config.task`), which says

- which fields a batch holds and how each is laid out on the mesh (`batch_specs`),
- how the host turns a stored example into fixed-shape arrays (`train_transform`, `eval_example`, `eval_padding`),
- the device augmentation (`augment`) and the loss from the model's outputs (`loss`, `train_metrics`),
- what evaluation accumulates and reports (`evaluator`), and what a prediction is.

`config.task` names a task segjax ships ("semantic") or "package.module:Class" for one of your own (the test
suite trains such a second task, with a padded, variable number of boxes per image, through the unchanged loop).
"""

from __future__ import annotations

import importlib
from typing import Any

import jax

from segjax.evaluation.loop import EvalResult  # noqa: F401  (part of the interface)

TASKS = {"semantic": "segjax.tasks.semantic:SemanticTask"}


class Task:
  """The interface; subclasses implement each method (see segjax.tasks.semantic for the reference one).

  A task object is built once per Experiment from the recipe and must be hashable by identity only (it is
  closed over by jitted steps, never passed as an argument).
  """

  name = "task"

  def __init__(self, config):
    self.config = config

  # ------------------------------------------------------------------------------------------- model and data

  def build_model(self, spec):
    """The Flax module of the recipe for dataset `spec`."""
    raise NotImplementedError

  def check(self, exp) -> None:
    """Raises ValueError naming config keys that do not fit together (e.g. crop size and model)."""

  def batch_specs(self, exp) -> dict[str, jax.sharding.PartitionSpec]:
    """Each batch field's PartitionSpec on the mesh (batch rows on "data"; image rows may go on "spatial")."""
    raise NotImplementedError

  def train_transform(self, exp):
    """A grain RandomMap from a stored example to this task's fixed-shape training arrays."""
    raise NotImplementedError

  # ------------------------------------------------------------------------------------------- training, on device

  def augment(self, exp, key: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The batch augmented on device with `key` (one key per example: `fold_in(key, i)`); "image" stays 0..255."""
    raise NotImplementedError

  def loss(self, exp, outputs: Any, aux: dict[str, Any], batch: dict[str, jax.Array]
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scalar loss, statistics) of one (micro)batch. `outputs`: what the model returned; `aux`: the "aux"
    collection it sowed. The statistics are summed over microbatches and turned into logged values by
    `train_metrics`."""
    raise NotImplementedError

  def train_metrics(self, stats: dict[str, jax.Array], num_microbatches: int) -> dict[str, jax.Array]:
    """Values logged each log step as train_<name> (from the summed statistics of `loss`)."""
    raise NotImplementedError

  # ------------------------------------------------------------------------------------------- evaluation

  def evaluator(self, exp):
    """An object with `evaluate(state, split, num_visualizations=0, progress=True) -> EvalResult`, built once per
    run so that its jitted steps compile once per shape however often training evaluates."""
    raise NotImplementedError


def resolve(name: str) -> type[Task]:
  """The Task class `config.task` names: a key of TASKS or "package.module:Class".

  Raises:
    ValueError: an unknown name or an import path that does not lead to a Task subclass, naming the fix.
  """
  path = TASKS.get(name, name)
  if ":" not in path:
    raise ValueError(f"config.task={name!r}: choose one of {sorted(TASKS)} or give 'package.module:Class' naming a "
                     "segjax.tasks.Task subclass of your own.")
  module_name, _, attr = path.partition(":")
  try:
    cls = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"config.task={name!r}: cannot import {path} ({e}); give 'package.module:Class' importable "
                     "from the working directory.") from None
  if not (isinstance(cls, type) and issubclass(cls, Task)):
    raise ValueError(f"config.task={name!r}: {path} is not a segjax.tasks.Task subclass.")
  return cls


def build(config) -> Task:
  """The task object of recipe `config`."""
  return resolve(config.task)(config)
