"""Train state, optimiser and learning-rate schedule built from the recipe.

The state holds arrays only (no apply function, no optax transformation): its tree structure is the same for
every Experiment of a recipe, so `jax.jit` takes its shardings directly and orbax saves exactly its leaves. The
transformation lives on the Experiment (`Experiment.tx`) and is passed to `apply_gradients`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """step, params, opt_state, the BatchNorm statistics (an empty dict for models without BatchNorm) and, with
  `config.ema.decay` > 0, the exponential moving average of the parameters (None without: no leaves, so the
  state and its checkpoints are exactly those of a run before EMA existed).

  The field names are those of flax's TrainState, so checkpoints saved with it restore unchanged.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  batch_stats: Any = dataclasses.field(default_factory=dict)
  ema_params: Any = None

  @classmethod
  def create(cls, *, params: Any, tx: optax.GradientTransformation, batch_stats: Any = None,
             ema: bool = False) -> "TrainState":
    # A strongly typed step: a restored checkpoint's step is int32 (not weak), and a weak one here would make a
    # fresh run and a resumed run compile the train step twice.
    return cls(step=jnp.asarray(0, jnp.int32), params=params, opt_state=tx.init(params),
               batch_stats={} if batch_stats is None else batch_stats,
               # A copy, not the same arrays: the train step donates the state, and one buffer cannot be donated
               # twice.
               ema_params=jax.tree.map(jnp.copy, params) if ema else None)

  @property
  def eval_params(self) -> Any:
    """The parameters to evaluate, predict with and export: the moving average when the run keeps one."""
    return self.params if self.ema_params is None else self.ema_params

  def apply_gradients(self, tx: optax.GradientTransformation, grads: Any, **changes) -> "TrainState":
    """One optimiser update with `tx` (the transformation the state was created with); `changes` replace other
    fields (the new batch_stats)."""
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates), opt_state=opt_state,
                        **changes)


@flax.struct.dataclass
class _StateWithoutEma:
  """TrainState as it was before `ema_params`: the tree a checkpoint holds when EMA is off. A None field would add
  an `ema_params` entry to orbax's metadata, and checkpoints written before it existed would no longer restore."""
  step: jax.Array
  params: Any
  opt_state: Any
  batch_stats: Any


def to_saved(state: Any) -> Any:
  """The tree to write (or to restore into) for `state`: without the EMA field when there is no average."""
  if isinstance(state, TrainState) and state.ema_params is None:
    return _StateWithoutEma(step=state.step, params=state.params, opt_state=state.opt_state,
                            batch_stats=state.batch_stats)
  return state


def from_saved(tree: Any) -> Any:
  """`to_saved` undone: a TrainState (EMA None) from the tree written without the field."""
  if isinstance(tree, _StateWithoutEma):
    return TrainState(step=tree.step, params=tree.params, opt_state=tree.opt_state, batch_stats=tree.batch_stats)
  return tree


def ema_decay(config) -> tuple[float, bool]:
  """(decay, warmup) of `config.ema` (a recipe saved before EMA existed has no block: (0, False), off)."""
  block = config.get("ema") if hasattr(config, "get") else None
  if block is None:
    return 0.0, False
  return float(block.decay), bool(block.warmup)


def ema_rate(decay: float, warmup: bool, count: jax.Array) -> jax.Array:
  """The decay of update number `count` (1 for the first update): `decay`, or with `warmup`
  min(decay, (1 + count) / (10 + count)), TensorFlow's ExponentialMovingAverage(num_updates=count), so the early
  average is not dominated by the random initialisation."""
  d = jnp.asarray(decay, jnp.float32)
  if not warmup:
    return d
  count = jnp.asarray(count, jnp.float32)
  return jnp.minimum(d, (1.0 + count) / (10.0 + count))


def update_ema(ema_params: Any, params: Any, rate: jax.Array) -> Any:
  """rate * ema + (1 - rate) * params per leaf: optax.ema's moment update (without its debiasing: the average
  starts at the initial parameters, as timm's ModelEma, not at zero)."""
  return jax.tree.map(lambda e, p: (rate * e + (1.0 - rate) * p).astype(e.dtype), ema_params, params)


def make_schedule(opt, num_steps: int) -> optax.Schedule:
  lr, warmup = opt.learning_rate, opt.warmup_steps
  if opt.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, max(num_steps, warmup + 1))
  if opt.schedule == "poly":  # DeepLab's "poly" policy: lr * (1 - t/T)^power
    main = optax.polynomial_schedule(lr, 0.0, opt.poly_power, max(num_steps - warmup, 1))
  elif opt.schedule == "step":  # Detectron2's / torchvision's MultiStepLR: x decay_factor at each boundary step
    # join_schedules hands the main schedule steps counted from the end of the warm-up; the boundaries are
    # steps of the run, as in Detectron2's STEPS.
    main = optax.piecewise_constant_schedule(lr, {int(b) - warmup: float(opt.decay_factor) for b in opt.boundaries})
  else:
    main = optax.constant_schedule(lr)
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _decay_mask(params):
  # Weight decay on kernels only: decaying biases and BatchNorm scales hurts and is not what papers do.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt, schedule: optax.Schedule, trainable=None) -> optax.GradientTransformation:
  """The optax transformation of `opt` (config.optimizer or config.OptimizerSettings) on learning-rate `schedule`
  (`make_schedule`, built once by the Experiment, which the loop also logs from).

  `trainable`: None, or a function params -> pytree of bools (the task's `trainable`); parameters marked False
  are frozen: their updates are zero whatever the gradient and weight decay say, as torchvision's
  requires_grad=False parameters sit outside the optimiser (Mask R-CNN's stem, layer1 and frozen BatchNorm).
  """
  tx = _optimizer(opt, schedule)
  if trainable is None:
    return tx
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               lambda params: jax.tree.map(lambda t: "train" if t else "frozen", trainable(params)))


def _optimizer(opt, schedule: optax.Schedule) -> optax.GradientTransformation:
  if opt.name == "adamw":
    tx = optax.adamw(schedule, weight_decay=opt.weight_decay, mask=_decay_mask)
  elif opt.name == "adam":
    tx = optax.adam(schedule)
  elif opt.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask=_decay_mask),
                     optax.sgd(schedule, momentum=opt.momentum))
  else:
    raise ValueError(f"config.optimizer.name={opt.name!r}: choose adamw, adam or sgd")
  if opt.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx


def create_train_state(model: flax.linen.Module, tx: optax.GradientTransformation, key: jax.Array,
                       input_shape: tuple[int, ...], ema: bool = False) -> TrainState:
  """Initialises parameters for inputs of `input_shape` ([B, H, W, C]); pure, so it can run under jit. `ema`: keep
  a moving average of the parameters (`TrainState.ema_params`), starting at the initial ones.

  Parameters are drawn with the non-partitionable threefry formulation: XLA:CPU compiles it about 5x faster
  (one threefry program per parameter shape: 25 s -> 5 s for a small FCN, ~70 s for PSPNet-50), and the
  parameters are replicated, so there is nothing to partition. Values stay a function of the key alone.
  """
  params_key, dropout_key = jax.random.split(key)
  with jax.threefry_partitionable(False):
    variables = model.init({"params": params_key, "dropout": dropout_key}, jnp.zeros(input_shape, jnp.float32),
                           train=False)
  return TrainState.create(params=variables["params"], tx=tx, batch_stats=variables.get("batch_stats", {}), ema=ema)
