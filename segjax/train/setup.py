"""What train and eval build alike from a recipe: dataset spec, model, mesh, optimiser and the state's shape."""

from __future__ import annotations

import dataclasses
import functools

import flax
import jax
import ml_collections
import optax
from jax.sharding import Mesh

from segjax import config as config_lib
from segjax import models, sharding
from segjax.data import augment as augment_lib
from segjax.data import datasets
from segjax.train import state as state_lib


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  spec: datasets.DatasetSpec
  model: flax.linen.Module
  mesh: Mesh
  tx: optax.GradientTransformation

  @property
  def mean(self) -> tuple[float, ...]:
    return tuple(self.config.dataset.mean)

  @property
  def std(self) -> tuple[float, ...]:
    return tuple(self.config.dataset.std)

  @property
  def normalization(self) -> str:
    return self.config.dataset.normalization

  @property
  def augment(self) -> augment_lib.AugmentConfig:
    return augment_lib.from_config(self.config.augment)

  def init_shape(self) -> tuple[int, int, int, int]:
    # Parameter shapes of a fully convolutional net do not depend on the input size; any valid size works.
    d = models.init_size(self.model)
    return (1, d, d, self.spec.num_channels)

  @functools.cached_property
  def _state_shapes(self) -> state_lib.TrainState:
    return jax.eval_shape(functools.partial(state_lib.create_train_state, self.model, self.tx,
                                            input_shape=self.init_shape()), jax.random.key(0))

  @functools.cached_property
  def state_sharding(self) -> state_lib.TrainState:
    """The NamedSharding of every state leaf on this mesh, from `config.mesh.rules` (see segjax.sharding)."""
    return sharding.state_shardings(self._state_shapes, self.mesh, sharding.check_rules(self.config.mesh.rules))

  def init_state(self) -> state_lib.TrainState:
    """Fresh state, created directly in its shardings on the mesh."""
    key = jax.random.key(self.config.seed)
    init = functools.partial(state_lib.create_train_state, self.model, self.tx, input_shape=self.init_shape())
    return jax.jit(init, out_shardings=self.state_sharding)(key)

  def abstract_state(self) -> state_lib.TrainState:
    """Shapes, dtypes and target shardings of the state, for restoring a checkpoint onto this mesh (of any size:
    orbax reshards what was saved from another mesh)."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), self._state_shapes,
                        self.state_sharding)


def build(config: ml_collections.ConfigDict, devices=None) -> Experiment:
  config_lib.validate(config)
  spec = datasets.get_spec(config.dataset)
  model = models.build_model(config.model.name, spec.num_classes, **models.model_kwargs(config.model))
  for side in config.dataset.crop_size:
    try:
      models.output_size(model, side)
    except ValueError as e:
      raise ValueError(f"config.dataset.crop_size={tuple(config.dataset.crop_size)}: {e}") from None
  mesh = sharding.mesh_from_config(config.mesh, devices)
  tx = state_lib.make_optimizer(config.optimizer, config.num_train_steps)
  return Experiment(config=config, spec=spec, model=model, mesh=mesh, tx=tx)
