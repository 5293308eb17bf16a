"""The jitted train and eval steps: pure functions of (state, batch), sharded over the mesh."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from segjax import losses, metrics, sharding
from segjax.train.state import TrainState

Batch = dict[str, jax.Array]


def normalize(image: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 [B, H, W, C] -> float32, (x - mean) / std per channel (mean/std in 0..255 units)."""
  return (image.astype(jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _variables(state: TrainState, params) -> dict[str, Any]:
  variables = {"params": params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def train_step(state: TrainState, batch: Batch, *, model: flax.linen.Module, seed: int,
               mean: Sequence[float], std: Sequence[float], ce_weight: float, dice_weight: float,
               class_weights: Sequence[float] | None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a global batch. Randomness is `fold_in(key(seed), step)`: no hidden RNG state."""
  step_key = jax.random.fold_in(jax.random.key(seed), state.step)
  images = normalize(batch["image"], mean, std)
  cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

  def loss_fn(params):
    logits, updates = model.apply(_variables(state, params), images, train=True,
                                  rngs={"dropout": step_key}, mutable=["batch_stats"])
    loss = losses.segmentation_loss(logits, batch["label"], batch["weight"], ce_weight=ce_weight,
                                    dice_weight=dice_weight, class_weights=cw)
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
  weight = batch["weight"]
  correct = (jnp.argmax(logits, -1) == batch["label"]) * weight
  out = {"loss": loss, "pixel_accuracy": correct.sum() / jnp.maximum(weight.sum(), 1.0),
         "grad_norm": jax.numpy.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads)))}
  return new_state, out


def predict(state: TrainState, images: jax.Array, *, model: flax.linen.Module, mean: Sequence[float],
            std: Sequence[float]) -> jax.Array:
  """Logits [B, H, W, K] float32 in inference mode (BatchNorm running averages, no dropout)."""
  return model.apply(_variables(state, state.params), normalize(images, mean, std), train=False)


def eval_step(state: TrainState, batch: Batch, *, model: flax.linen.Module, num_classes: int,
              mean: Sequence[float], std: Sequence[float]) -> tuple[jax.Array, jax.Array]:
  """Returns (confusion matrix [K, K] int32 summed over the global batch, predictions [B, H, W] int32)."""
  preds = jnp.argmax(predict(state, batch["image"], model=model, mean=mean, std=std), axis=-1).astype(jnp.int32)
  cm = metrics.confusion_matrix(batch["label"], preds, batch["weight"], num_classes)
  return cm, preds


def jit_train_step(mesh: Mesh, **kwargs) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """`train_step` jitted with replicated state, batch sharded on "data", and the input state donated."""
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(functools.partial(train_step, **kwargs), in_shardings=(rep, data), out_shardings=(rep, rep),
                 donate_argnums=0)


def jit_eval_step(mesh: Mesh, **kwargs) -> Callable[[TrainState, Batch], tuple[jax.Array, jax.Array]]:
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(functools.partial(eval_step, **kwargs), in_shardings=(rep, data), out_shardings=(rep, data))
