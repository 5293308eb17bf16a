"""What train and eval build alike from a recipe: dataset spec, model, mesh, optimiser and the state's shape."""

from __future__ import annotations

import dataclasses
import functools
import logging

import flax
import jax
import ml_collections
import optax
from jax.sharding import Mesh

from segjax import config as config_lib
from segjax import models, sharding, weights
from segjax.data import augment as augment_lib
from segjax.data import datasets
from segjax.ops import conv as conv_lib
from segjax.train import state as state_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  spec: datasets.DatasetSpec
  model: flax.linen.Module
  mesh: Mesh
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
    """Fresh state, created directly in its shardings on the mesh, with the backbone weights of
    `config.init_from.path` loaded over the initialisation when it is set (segjax.weights.load_into)."""
    loaded = None
    if self.config.init_from.path is not None:
      # Read and checked against the state's shapes first, so a wrong file fails before the init compiles.
      params, batch_stats, report = weights.load_into(self._state_shapes.params, self._state_shapes.batch_stats,
                                                      self.config.init_from, self.model)
      loaded = (params, batch_stats)
    key = jax.random.key(self.config.seed)
    init = functools.partial(state_lib.create_train_state, self.model, self.tx, input_shape=self.init_shape())
    state = jax.jit(init, out_shardings=self.state_sharding)(key)
    if loaded is None:
      return state
    log.info("%s", report.summary())
    # Loaded leaves are host arrays (the others still shapes); every process reads the same file, so placing them
    # with the state's shardings is valid on several hosts too. The optimiser's moments start at zero whatever
    # the parameters are, so opt_state stays as initialised.
    def merge(new, old, sharding):
      return old if isinstance(new, jax.ShapeDtypeStruct) else jax.device_put(new, sharding)
    return state.replace(
        params=jax.tree.map(merge, loaded[0], state.params, self.state_sharding.params),
        batch_stats=jax.tree.map(merge, loaded[1], state.batch_stats, self.state_sharding.batch_stats))

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
