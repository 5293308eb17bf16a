"""The jitted train step: a pure function of (state, global batch), sharded over the mesh, for any task.

What is task-specific (the augmentation, the loss, the logged values) comes from `exp.task` (segjax.tasks); the
forward pass from `exp.forward` (segjax.forward); the convolution kernels from `exp.conv_backend`
(segjax.ops.conv). The step knows nothing else about the task.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from segjax import forward as forward_lib
from segjax import sharding
from segjax import state as state_lib
from segjax.ops import conv as conv_lib
from segjax.state import TrainState

Batch = dict[str, jax.Array]


def _split_microbatches(x: jax.Array, k: int) -> jax.Array:
  """[B, ...] -> [k, B / k, ...] with microbatch j = rows j, j + k, ...: every device's block of rows holds an
  equal share of each microbatch, so splitting moves no data between devices."""
  return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def train_step(state: TrainState, batch: Batch, *, exp: Any) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step of `exp` (a segjax.experiment.Experiment) on a global batch.

  Randomness is `fold_in(key(seed), step)`: no hidden RNG state. The batch is augmented first (every field
  jointly, one key per example: the task's `augment`), on the devices that hold it, then normalised.

  With `config.grad_accum_steps` k > 1 the augmented batch is split into k microbatches that run one after another
  (`lax.scan`, so only one microbatch's activations are live), BatchNorm statistics carried through them in
  order; the update uses the mean of their gradients and the reported loss is the mean of their losses. Each
  microbatch's loss is normalised over its own pixels (as PyTorch's accumulation and optax.MultiSteps do), so
  the gradient equals the full batch's when every microbatch has as many labelled pixels and the loss is plain
  or class-weighted cross-entropy without ignored pixels; Dice, a loss over the whole batch, differs.
  """
  with conv_lib.backend(exp.conv_backend):
    return _train_step(state, batch, exp)


def _train_step(state, batch, exp):
  task, fwd, loop = exp.task, exp.forward, exp.settings.loop
  step_key = jax.random.fold_in(jax.random.key(loop.seed), state.step)
  augment_key, dropout_key = jax.random.split(step_key)
  batch = dict(task.augment(exp, augment_key, batch))
  image = fwd.normalize(batch["image"])
  # Keep the augmented batch laid out like the input (data and spatial axes).
  batch["image"] = jax.lax.with_sharding_constraint(image, jax.sharding.NamedSharding(
      exp.mesh, task.batch_specs(exp)["image"]))

  def loss_fn(params, batch_stats, batch, key):
    outputs, updates = task.train_apply(exp, forward_lib.variables(params, batch_stats), batch, key,
                                        mutable=["batch_stats", "aux"])
    loss, stats = task.loss(exp, outputs, updates.get("aux", {}), batch)
    return loss, (updates.get("batch_stats", batch_stats), stats)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  k = loop.grad_accum_steps
  if k == 1:
    (loss, (batch_stats, stats)), grads = grad_fn(state.params, state.batch_stats, batch, dropout_key)
  else:
    micro = jax.tree.map(lambda a: _split_microbatches(a, k), batch)

    def accumulate(carry, xs):
      grad_sum, batch_stats, loss_sum, stats_sum = carry
      j, mb = xs
      (loss, (batch_stats, stats)), grads = grad_fn(state.params, batch_stats, mb,
                                                       jax.random.fold_in(dropout_key, j))
      return (jax.tree.map(jnp.add, grad_sum, grads), batch_stats, loss_sum + loss,
              jax.tree.map(jnp.add, stats_sum, stats)), None

    first = jax.tree.map(lambda a: a[0], micro)
    stats_shape = jax.eval_shape(lambda: grad_fn(state.params, state.batch_stats, first, dropout_key)[0][1][1])
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    stats0 = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), stats_shape)
    (grads, batch_stats, loss, stats), _ = jax.lax.scan(
        accumulate, (zeros, state.batch_stats, jnp.zeros((), jnp.float32), stats0), (jnp.arange(k), micro))
    grads = jax.tree.map(lambda g: g / k, grads)
    loss = loss / k

  grad_norm = jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads)))
  # A NaN or inf anywhere in the gradients makes their norm non-finite. Such an update is never applied: the
  # state keeps its parameters, optimiser state and BatchNorm statistics (only the step advances), and the loop
  # stops or carries on as config.on_nonfinite says.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updated = state.apply_gradients(exp.tx, grads, batch_stats=batch_stats)
  if state.ema_params is not None:
    # The average of the parameters after each update (`config.ema`); a skipped (non-finite) step keeps it too.
    decay, warmup = state_lib.ema_decay(exp.config)
    updated = updated.replace(ema_params=state_lib.update_ema(
        state.ema_params, updated.params, state_lib.ema_rate(decay, warmup, updated.step)))
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated,
                           state.replace(step=updated.step))
  return new_state, {"loss": loss, **task.train_metrics(stats, k), "grad_norm": grad_norm, "finite": finite}


def jit_train_step(exp: Any) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """`train_step` of `exp` jitted with the state in its rule-derived shardings (`Experiment.state_sharding`), the
  batch laid out by the task's `batch_specs`, and the input state donated."""
  batch = {key: jax.sharding.NamedSharding(exp.mesh, spec) for key, spec in exp.task.batch_specs(exp).items()}

  def step(state, batch):
    return train_step(state, batch, exp=exp)

  return jax.jit(step, in_shardings=(exp.state_sharding, batch),
                 out_shardings=(exp.state_sharding, sharding.replicated(exp.mesh)), donate_argnums=0)
