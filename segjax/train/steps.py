"""The jitted train and eval steps: pure functions of (state, batch), sharded over the mesh."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from segjax import losses, metrics, models, sharding
from segjax.data import augment as augment_lib
from segjax.models import unet
from segjax.train.state import TrainState

Batch = dict[str, jax.Array]


def normalize(image: jax.Array, mean: Sequence[float], std: Sequence[float],
              normalization: str = "mean_std") -> jax.Array:
  """[B, H, W, C] in 0..255 -> float32 model input.

  "mean_std": (x - mean) / std per channel (mean/std in 0..255 units); "per_image": each image to zero mean and
  unit variance (tf.image.per_image_standardization). Training and inference use the same one.
  """
  if normalization == "per_image":
    return augment_lib.standardize_per_image(image)
  return (image.astype(jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _variables(state: TrainState, params) -> dict[str, Any]:
  variables = {"params": params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def train_step(state: TrainState, batch: Batch, *, model: flax.linen.Module, seed: int,
               mean: Sequence[float], std: Sequence[float], ce_weight: float, dice_weight: float,
               class_weights: Sequence[float] | None,
               aux_weight: float = 0.4, augment: augment_lib.AugmentConfig = augment_lib.AugmentConfig(),
               normalization: str = "mean_std") -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a global batch. Randomness is `fold_in(key(seed), step)`: no hidden RNG state.

  The batch is augmented first (image, label and weight jointly, one key per example), on the devices that
  hold it.

  A valid-convolution net predicts only the centre of its input; labels and weights are centre-cropped to the
  logits (the U-Net paper's 572 -> 388 tiles). Auxiliary logits a model sows into the "aux" collection add
  `aux_weight` times the same loss.
  """
  step_key = jax.random.fold_in(jax.random.key(seed), state.step)
  augment_key, dropout_key = jax.random.split(step_key)
  images, labels, weight = augment_lib.augment_batch(augment, augment_key, batch["image"], batch["label"],
                                                     batch["weight"])
  images = normalize(images, mean, std, normalization)
  cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
  loss_of = functools.partial(losses.segmentation_loss, ce_weight=ce_weight, dice_weight=dice_weight,
                              class_weights=cw)

  def loss_fn(params):
    logits, updates = model.apply(_variables(state, params), images, train=True,
                                  rngs={"dropout": dropout_key}, mutable=["batch_stats", "aux"])
    target, target_weight = labels, weight
    if logits.shape[1:3] != labels.shape[1:3]:
      target, target_weight = (unet.center_crop(a, logits.shape[1:3]) for a in (labels, weight))
    loss = main_loss = loss_of(logits, target, target_weight)
    for aux_logits in jax.tree.leaves(updates.get("aux", {})):
      loss = loss + aux_weight * loss_of(aux_logits, labels, weight)
    return loss, (logits, target, target_weight, main_loss, updates)

  (loss, (logits, labels, weight, main_loss, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  grad_norm = jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads)))
  # A NaN or inf anywhere in the gradients makes their norm non-finite. Such an update is never applied: the
  # state keeps its parameters, optimiser state and BatchNorm statistics (only the step advances), and the loop
  # stops or carries on as config.on_nonfinite says.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updated = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated,
                           state.replace(step=updated.step))
  correct = (jnp.argmax(logits, -1) == labels) * weight
  out = {"loss": loss, "pixel_accuracy": correct.sum() / jnp.maximum(weight.sum(), 1.0), "grad_norm": grad_norm,
         "finite": finite}
  if "aux" in updates:
    out["main_loss"] = main_loss
  return new_state, out


def predict(state: TrainState, images: jax.Array, *, model: flax.linen.Module, mean: Sequence[float],
            std: Sequence[float], normalization: str = "mean_std") -> jax.Array:
  """Logits [B, H, W, K] float32 in inference mode (BatchNorm running averages, no dropout).

  A valid-convolution net sees the image mirror-padded by its margin (and up to its next valid input size),
  the U-Net paper's overlap-tile strategy for a single tile; its output is cropped back to H x W.
  """
  x = normalize(images, mean, std, normalization)
  if not models.is_valid_conv(model):
    return model.apply(_variables(state, state.params), x, train=False)
  h, w = x.shape[1:3]
  margin = int(model.input_margin)
  size_h, size_w = model.input_size_for(h), model.input_size_for(w)
  x = jnp.pad(x, ((0, 0), (margin, size_h - h - margin), (margin, size_w - w - margin), (0, 0)), mode="reflect")
  logits = model.apply(_variables(state, state.params), x, train=False)
  return logits[:, :h, :w]


def eval_step(state: TrainState, batch: Batch, *, model: flax.linen.Module, num_classes: int,
              mean: Sequence[float], std: Sequence[float],
              normalization: str = "mean_std") -> tuple[jax.Array, jax.Array]:
  """Returns (confusion matrix [K, K] int32 summed over the global batch, predictions [B, H, W] int32)."""
  logits = predict(state, batch["image"], model=model, mean=mean, std=std, normalization=normalization)
  preds = jnp.argmax(logits, axis=-1).astype(jnp.int32)
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
