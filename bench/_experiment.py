"""The Experiment a benchmark times: segjax's recipe schema set to the benchmark's network, sizes, normalisation,
loss and optimiser, built by `segjax.experiment.build(config, model=...)`.

The train step is task-generic since issue 21 (`segjax.training.steps.train_step(state, batch, exp=...)`): what it
computes comes from the Experiment, so a benchmark sets those values on a recipe instead of passing them to the
step. The defaults are what every step benchmark measured before: Adam at a constant 1e-3 (the recipe's "adam" on a
"constant" schedule: optax.adam on a constant schedule, which also counts steps, as torch.optim.Adam does), no
augmentation (every op of `config.augment` off), seed 0, cross-entropy only, aux_weight 0.4, no gradient
accumulation.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax

from segjax import config as config_lib
from segjax import experiment
from segjax.data import augment as augment_lib

ADAM = dict(name="adam", learning_rate=1e-3, schedule="constant", warmup_steps=0, weight_decay=0.0, grad_clip_norm=0.0)


def bench_config(*, batch: int, size: Sequence[int], mean: Sequence[float] = (127.5,),
                 std: Sequence[float] = (127.5,), dataset: str = "shapes", conv_backend: str = "auto",
                 augment: dict[str, Any] | None = None, loss: dict[str, Any] | None = None, seed: int = 0):
  """A recipe for a benchmark's step. `dataset` gives the channels of the state's initialisation (and nothing
  else the step reads: a benchmark passes its own model, with its own number of classes); `size` is checked
  against the model as a training crop is."""
  c = config_lib.default_config()
  c.seed = seed
  c.batch_size = batch
  c.dataset.name = dataset
  c.dataset.crop_size = tuple(size)
  c.dataset.mean, c.dataset.std = tuple(mean), tuple(std)
  c.augment = augment_lib.config_block(**(augment or {}))  # all off unless asked (the recipes flip by default)
  c.loss.update(dict(ce_weight=1.0, dice_weight=0.0, class_weights=None, aux_weight=0.4, **(loss or {})))
  c.optimizer.update(ADAM)
  c.grad_accum_steps = 1
  c.conv_backend = conv_backend
  return c


def build(model, *, devices=None, **kwargs) -> experiment.Experiment:
  """`experiment.build(bench_config(**kwargs), devices, model=model)`."""
  return experiment.build(bench_config(**kwargs), devices, model=model)


def place(exp: experiment.Experiment, batch: dict[str, Any]) -> dict[str, jax.Array]:
  """A host batch on the mesh, each field laid out as the train step takes it (the task's batch_specs)."""
  specs = exp.task.batch_specs(exp)
  return jax.device_put(batch, {key: jax.sharding.NamedSharding(exp.mesh, specs[key]) for key in batch})
