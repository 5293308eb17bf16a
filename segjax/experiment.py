"""The shared run setup: what train, eval, predict and export build alike from a recipe.

`build(config)` gives an `Experiment`: the typed settings, the task (segjax.tasks), the dataset spec, the model and
its `Forward` (input convention), the mesh, the optimiser and its schedule (built once), and the state's shapes and
shardings. `restore(config, workdir)` adds the state of a checkpoint; `load_member` makes an ensemble member of one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib

import flax
import jax
import ml_collections
import optax
from jax.sharding import Mesh

from segjax import checkpoint as checkpoint_lib
from segjax import config as config_lib
from segjax import forward as forward_lib
from segjax import sharding, tasks, weights
from segjax import state as state_lib
from segjax.data import datasets
from segjax.evaluation import inference
from segjax.ops import conv as conv_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)  # compared by identity: jitted steps close over it
class Experiment:
  """A recipe made concrete on a mesh; `build` makes one.

  Attributes:
    config: the validated recipe.
    settings: its typed sections (loop, optimizer, loss, augment), read by the loop, the step and the task.
    task: what is learnt (segjax.tasks): batch fields, host and device transforms, loss, evaluation.
    spec: the dataset's classes, channels, ignore label and splits.
    model: the Flax module.
    mesh: the device mesh.
    schedule: the learning-rate schedule, built once (the optimiser steps with it, the loop logs it).
    tx: the optax transformation (the TrainState holds no callables: `state.apply_gradients(exp.tx, grads)`).
  """
  config: ml_collections.ConfigDict
  settings: config_lib.Settings
  task: tasks.Task
  spec: datasets.DatasetSpec
  model: flax.linen.Module
  mesh: Mesh
  schedule: optax.Schedule
  tx: optax.GradientTransformation

  @property
  def _pretrained_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    # The input convention the imported weights were trained with (segjax.weights.input_normalization). It comes
    # from the config alone, so eval and predict, which restore a checkpoint and never read the weight file,
    # normalise as training did.
    init_from = self.config.init_from
    if init_from.path is None or not init_from.set_normalization:
      return None
    fmt = weights.resolve_format(init_from.path, init_from.format)
    return weights.input_normalization(fmt, init_from.architecture, self.spec.num_channels)

  @property
  def mean(self) -> tuple[float, ...]:
    pretrained = self._pretrained_normalization
    return pretrained[0] if pretrained else tuple(self.config.dataset.mean)

  @property
  def std(self) -> tuple[float, ...]:
    pretrained = self._pretrained_normalization
    return pretrained[1] if pretrained else tuple(self.config.dataset.std)

  @property
  def normalization(self) -> str:
    # Pretrained weights expect their fixed mean/std, not per-image standardisation.
    return "mean_std" if self._pretrained_normalization else self.config.dataset.normalization

  @functools.cached_property
  def conv_backend(self) -> str:
    """The kernels this run's convolutions use: `config.conv_backend` resolved for this mesh (segjax.ops.conv)."""
    return conv_lib.resolve_backend(self.config.conv_backend, self.mesh.size)

  @functools.cached_property
  def forward(self) -> forward_lib.Forward:
    """The model with the input convention it trains with (segjax.forward: normalise, pad, apply, crop)."""
    return forward_lib.Forward(self.model, self.mean, self.std, self.normalization)

  def init_shape(self) -> tuple[int, int, int, int]:
    # Parameter shapes do not depend on the input size; the task picks a valid one.
    return self.task.init_shape(self)

  @property
  def ema(self) -> bool:
    """Whether the state keeps a moving average of the parameters (`config.ema.decay` > 0)."""
    return state_lib.ema_decay(self.config)[0] > 0

  @functools.cached_property
  def _state_shapes(self) -> state_lib.TrainState:
    return jax.eval_shape(functools.partial(state_lib.create_train_state, self.model, self.tx,
                                            input_shape=self.init_shape(), ema=self.ema), jax.random.key(0))

  @functools.cached_property
  def state_sharding(self) -> state_lib.TrainState:
    """The NamedSharding of every state leaf on this mesh, from `config.mesh.rules` (see segjax.sharding)."""
    return sharding.state_shardings(self._state_shapes, self.mesh, sharding.check_rules(self.config.mesh.rules))

  def init_state(self) -> state_lib.TrainState:
    """Fresh state, created directly in its shardings on the mesh, with the backbone weights of
    `config.init_from.path` loaded over the initialisation when it is set (segjax.weights.load_into)."""
    loaded = None
    if self.config.init_from.path is not None:
      # Read and checked against the state's shapes first, so a wrong file fails before the init compiles.
      params, batch_stats, report = weights.load_into(self._state_shapes.params, self._state_shapes.batch_stats,
                                                      self.config.init_from, self.model)
      loaded = (params, batch_stats)
    key = jax.random.key(self.config.seed)
    init = functools.partial(state_lib.create_train_state, self.model, self.tx, input_shape=self.init_shape(),
                             ema=self.ema)
    state = jax.jit(init, out_shardings=self.state_sharding)(key)
    if loaded is None:
      return state
    log.info("%s", report.summary())
    # Loaded leaves are host arrays (the others still shapes); every process reads the same file, so placing them
    # with the state's shardings is valid on several hosts too. The optimiser's moments start at zero whatever
    # the parameters are, so opt_state stays as initialised.
    def merge(new, old, sharding):
      return old if isinstance(new, jax.ShapeDtypeStruct) else jax.device_put(new, sharding)
    state = state.replace(
        params=jax.tree.map(merge, loaded[0], state.params, self.state_sharding.params),
        batch_stats=jax.tree.map(merge, loaded[1], state.batch_stats, self.state_sharding.batch_stats))
    if state.ema_params is None:
      return state
    # The average starts at the parameters training starts from: the loaded ones (placed again, own buffers).
    return state.replace(ema_params=jax.tree.map(merge, loaded[0], state.ema_params, self.state_sharding.params))

  def abstract_state(self) -> state_lib.TrainState:
    """Shapes, dtypes and target shardings of the state, for restoring a checkpoint onto this mesh (of any size:
    orbax reshards what was saved from another mesh)."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), self._state_shapes,
                        self.state_sharding)


def build(config: ml_collections.ConfigDict, devices=None, *, model: flax.linen.Module | None = None) -> Experiment:
  """The Experiment of `config` on `devices` (default all). `model` replaces the recipe's (benchmarks, tests).

  Raises:
    ValueError: a bad recipe, naming the key, the value and the fix.
  """
  settings = config_lib.validate(config)
  task = tasks.build(config)
  spec = task.dataset_spec(config)
  model = task.build_model(spec) if model is None else model
  mesh = sharding.mesh_from_config(config.mesh, devices)
  schedule = state_lib.make_schedule(settings.optimizer, settings.loop.num_train_steps)
  exp = Experiment(config=config, settings=settings, task=task, spec=spec, model=model, mesh=mesh,
                   schedule=schedule, tx=None)
  exp.tx = state_lib.make_optimizer(settings.optimizer, schedule, trainable=task.trainable(exp))
  task.check(exp)
  return exp


def restore(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, checkpoint_step: int | None = None,
            purpose: str = "evaluate", devices=None) -> tuple[Experiment, state_lib.TrainState, int]:
  """The experiment of `config` (on `devices`, default all) and the state of `workdir`'s checkpoint (latest, or
  `checkpoint_step`), for eval.py, predict.py, ensemble members and export.

  Raises:
    FileNotFoundError: `workdir` holds no complete checkpoint (missing, empty, or only an unfinished save),
      saying which and what to do.
    ValueError: a checkpoint of another model or classes, an unknown checkpoint step, a damaged
      `checkpoint_step` (listing the steps that restore) or no checkpoint that restores. A damaged latest
      checkpoint is named in a warning and the newest one that restores is used.
  """
  checkpoint_lib.check_workdir(workdir)
  exp = build(config, devices)
  state, step = checkpoint_lib.restore_from(workdir, exp.abstract_state(), config, checkpoint_step, purpose)
  return exp, state, step


def member(exp: Experiment, state: state_lib.TrainState) -> inference.Member:
  """The ensemble Member (segjax.evaluation.inference) of a train state of `exp`."""
  return inference.Member(model=exp.model, variables=forward_lib.variables(state.eval_params, state.batch_stats),
                          mean=tuple(exp.mean), std=tuple(exp.std), normalization=exp.normalization)


def load_member(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, step: int | None = None,
                mesh: Mesh | None = None) -> inference.Member:
  """Restores checkpoint `step` (default: the latest) of `workdir`, trained with recipe `config`, as an ensemble
  member on `mesh`'s devices (one device when None).

  Raises:
    FileNotFoundError: `workdir` holds no complete checkpoint.
    ValueError: unknown step, or a checkpoint of another model or class list (naming each differing key).
  """
  # One device of this process: on a multi-host run, device 0 of the whole job may belong to another host.
  devices = list(mesh.devices.flat) if mesh is not None else jax.local_devices()[:1]
  config = ml_collections.ConfigDict(config.to_dict())  # a copy: the caller's recipe keeps its mesh
  # The recipe's mesh shape may not fit `devices` (e.g. mesh.model=2 on one device): inference uses data only.
  config.mesh.data, config.mesh.spatial, config.mesh.model = -1, 1, 1
  exp, state, _ = restore(config, workdir, step, "predict with", devices)
  return member(exp, state)
