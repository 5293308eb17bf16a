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
from typing import Any, Callable

import jax

from segjax import models
from segjax.data import datasets, label_stats
from segjax.evaluation.loop import EvalResult  # noqa: F401  (part of the interface)

TASKS = {"semantic": "segjax.tasks.semantic:SemanticTask", "instance": "segjax.tasks.instance:InstanceTask",
         "panoptic": "segjax.tasks.panoptic:PanopticTask"}


class Task:
  """The interface; subclasses implement each method (see segjax.tasks.semantic for the reference one).

  A task object is built once per Experiment from the recipe and must be hashable by identity only (it is
  closed over by jitted steps, never passed as an argument).
  """

  name = "task"

  def __init__(self, config):
    self.config = config

  # ------------------------------------------------------------------------------------------- the recipe

  @classmethod
  def dataset_spec(cls, config) -> datasets.DatasetSpec:
    """The dataset's classes, channels and splits (default: segjax's semantic registry, segjax.data.datasets).

    Raises:
      ValueError: an unknown `config.dataset.name`, listing the known ones.
    """
    if config.dataset.name not in datasets.known_names():
      raise ValueError(f"config.dataset.name={config.dataset.name!r}: choose one of {datasets.known_names()}")
    return datasets.get_spec(config.dataset)

  @classmethod
  def check_config(cls, config, spec, fail: Callable[[str, Any, str], None]) -> None:
    """The recipe's task-specific keys; `fail(key, value, fix)` raises. Default: a segjax semantic model and the
    keys its loss and input convention read (tasks that build their model otherwise override this)."""
    if config.model.name not in models.MODELS:
      fail("model.name", config.model.name, f"choose one of {sorted(models.MODELS)}")
    if config.loss.class_weights is not None and len(config.loss.class_weights) != spec.num_classes:
      fail("loss.class_weights", config.loss.class_weights,
           f"give one weight per class ({spec.num_classes} for {spec.name})")

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

  def data_source(self, split: str):
    """The random-access source of `split` (or a tfds slice of it) of the recipe's dataset."""
    return datasets.data_source(self.config.dataset, split)

  def check_training_data(self, exp, source, workdir, say: Callable[[str], None]) -> None:
    """Runs before anything compiles: refuses training data that cannot train (default: the semantic label count
    of segjax.data.label_stats when `config.dataset.check_labels`)."""
    config = self.config
    if config.dataset.check_labels:
      label_stats.check_training_labels(source, exp.spec, config.dataset, config.dataset.train_split, workdir,
                                        say=say)

  def init_shape(self, exp) -> tuple[int, int, int, int]:
    """The input shape the parameters are initialised with (their shapes must not depend on it)."""
    d = models.init_size(exp.model)
    return (1, d, d, exp.spec.num_channels)

  def trainable(self, exp):
    """None (every parameter trains) or a function params -> pytree of bools, False for frozen parameters, which
    then get neither updates nor weight decay (torchvision's requires_grad=False)."""
    return None

  # ------------------------------------------------------------------------------------------- training, on device

  def augment(self, exp, key: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The batch augmented on device with `key` (one key per example: `fold_in(key, i)`); "image" stays 0..255."""
    raise NotImplementedError

  def train_apply(self, exp, variables: dict[str, Any], batch: dict[str, jax.Array], key: jax.Array, mutable):
    """The model's training forward pass on the augmented batch (its "image" already normalised): returns
    (outputs, updated collections). Default: the image alone, with `key` as the dropout stream."""
    return exp.forward.apply(variables, batch["image"], train=True, rngs={"dropout": key}, mutable=mutable)

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
