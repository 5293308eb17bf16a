"""The jitted train and eval steps: pure functions of (state, batch), sharded over the mesh.

Each step takes `conv_backend` ("xla" or "onednn", see segjax.ops.conv; None keeps the caller's): the kernels its
convolutions are traced with. `Experiment.conv_backend` resolves it from `config.conv_backend` and the mesh.
"""

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
from segjax.ops import conv as conv_lib
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


def _variables(params, batch_stats) -> dict[str, Any]:
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  return variables


def _with_conv_backend(fn: Callable) -> Callable:
  """Adds the keyword `conv_backend` to a step: the convolutions `fn` traces use it (None: left as it is)."""
  @functools.wraps(fn)
  def step(*args, conv_backend: str | None = None, **kwargs):
    with conv_lib.backend(conv_backend):
      return fn(*args, **kwargs)
  return step


def _split_microbatches(x: jax.Array, k: int) -> jax.Array:
  """[B, ...] -> [k, B / k, ...] with microbatch j = rows j, j + k, ...: every device's block of rows holds an
  equal share of each microbatch, so splitting moves no data between devices."""
  return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


@_with_conv_backend
def train_step(state: TrainState, batch: Batch, *, model: flax.linen.Module, seed: int,
               mean: Sequence[float], std: Sequence[float], ce_weight: float, dice_weight: float,
               class_weights: Sequence[float] | None,
               aux_weight: float = 0.4, augment: augment_lib.AugmentConfig = augment_lib.AugmentConfig(),
               normalization: str = "mean_std", grad_accum_steps: int = 1,
               input_sharding: jax.sharding.Sharding | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a global batch. Randomness is `fold_in(key(seed), step)`: no hidden RNG state.

  The batch is augmented first (image, label and weight jointly, one key per example), on the devices that
  hold it.

  A valid-convolution net predicts only the centre of its input; labels and weights are centre-cropped to the
  logits (the U-Net paper's 572 -> 388 tiles). Auxiliary logits a model sows into the "aux" collection add
  `aux_weight` times the same loss.

  With `grad_accum_steps` k > 1 the augmented batch is split into k microbatches that run one after another
  (`lax.scan`, so only one microbatch's activations are live), BatchNorm statistics carried through them in
  order; the update uses the mean of their gradients and the reported loss is the mean of their losses. Each
  microbatch's loss is normalised over its own pixels (as PyTorch's accumulation and optax.MultiSteps do), so
  the gradient equals the full batch's when every microbatch has as many labelled pixels and the loss is plain
  or class-weighted cross-entropy without ignored pixels; Dice, a loss over the whole batch, differs.
  """
  step_key = jax.random.fold_in(jax.random.key(seed), state.step)
  augment_key, dropout_key = jax.random.split(step_key)
  images, labels, weight = augment_lib.augment_batch(augment, augment_key, batch["image"], batch["label"],
                                                     batch["weight"])
  images = normalize(images, mean, std, normalization)
  if input_sharding is not None:  # keep the augmented batch laid out like the input (data and spatial axes)
    images = jax.lax.with_sharding_constraint(images, input_sharding)
  cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
  loss_of = functools.partial(losses.segmentation_loss, ce_weight=ce_weight, dice_weight=dice_weight,
                              class_weights=cw)

  sows_aux = []  # set while tracing: whether the model has auxiliary heads

  def loss_fn(params, batch_stats, images, labels, weight, key):
    logits, updates = model.apply(_variables(params, batch_stats), images, train=True, rngs={"dropout": key},
                                  mutable=["batch_stats", "aux"])
    target, target_weight = labels, weight
    if logits.shape[1:3] != labels.shape[1:3]:
      target, target_weight = (unet.center_crop(a, logits.shape[1:3]) for a in (labels, weight))
    loss = main_loss = loss_of(logits, target, target_weight)
    for aux_logits in jax.tree.leaves(updates.get("aux", {})):
      loss = loss + aux_weight * loss_of(aux_logits, labels, weight)
    correct = ((jnp.argmax(logits, -1) == target) * target_weight).sum()
    stats = {"main_loss": main_loss, "correct": correct, "labelled": target_weight.sum()}
    if "aux" in updates:
      sows_aux.append(True)
    return loss, (updates.get("batch_stats", batch_stats), stats)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (loss, (batch_stats, stats)), grads = grad_fn(state.params, state.batch_stats, images, labels, weight,
                                                  dropout_key)
  else:
    k = grad_accum_steps
    micro = [_split_microbatches(a, k) for a in (images, labels, weight)]

    def accumulate(carry, xs):
      grad_sum, batch_stats, loss_sum, stats_sum = carry
      j, mi, ml, mw = xs
      (loss, (batch_stats, stats)), grads = grad_fn(state.params, batch_stats, mi, ml, mw,
                                                       jax.random.fold_in(dropout_key, j))
      return (jax.tree.map(jnp.add, grad_sum, grads), batch_stats, loss_sum + loss,
              jax.tree.map(jnp.add, stats_sum, stats)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    stats0 = {"main_loss": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.float32),
              "labelled": jnp.zeros((), jnp.float32)}
    (grads, batch_stats, loss, stats), _ = jax.lax.scan(
        accumulate, (zeros, state.batch_stats, jnp.zeros((), jnp.float32), stats0), (jnp.arange(k), *micro))
    grads = jax.tree.map(lambda g: g / k, grads)
    loss = loss / k
    stats = dict(stats, main_loss=stats["main_loss"] / k)

  grad_norm = jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads)))
  # A NaN or inf anywhere in the gradients makes their norm non-finite. Such an update is never applied: the
  # state keeps its parameters, optimiser state and BatchNorm statistics (only the step advances), and the loop
  # stops or carries on as config.on_nonfinite says.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated,
                           state.replace(step=updated.step))
  out = {"loss": loss, "pixel_accuracy": stats["correct"] / jnp.maximum(stats["labelled"], 1.0),
         "grad_norm": grad_norm, "finite": finite}
  if sows_aux:
    out["main_loss"] = stats["main_loss"]
  return new_state, out


@_with_conv_backend
def predict(state: TrainState, images: jax.Array, *, model: flax.linen.Module, mean: Sequence[float],
            std: Sequence[float], normalization: str = "mean_std") -> jax.Array:
  """Logits [B, H, W, K] float32 in inference mode (BatchNorm running averages, no dropout).

  A valid-convolution net sees the image mirror-padded by its margin (and up to its next valid input size),
  the U-Net paper's overlap-tile strategy for a single tile; its output is cropped back to H x W.
  """
  x = normalize(images, mean, std, normalization)
  if not models.is_valid_conv(model):
    return model.apply(_variables(state.params, state.batch_stats), x, train=False)
  h, w = x.shape[1:3]
  margin = int(model.input_margin)
  size_h, size_w = model.input_size_for(h), model.input_size_for(w)
  x = jnp.pad(x, ((0, 0), (margin, size_h - h - margin), (margin, size_w - w - margin), (0, 0)), mode="reflect")
  logits = model.apply(_variables(state.params, state.batch_stats), x, train=False)
  return logits[:, :h, :w]


@_with_conv_backend
def eval_step(state: TrainState, batch: Batch, *, model: flax.linen.Module, num_classes: int,
              mean: Sequence[float], std: Sequence[float],
              normalization: str = "mean_std") -> tuple[jax.Array, jax.Array]:
  """Returns (confusion matrix [K, K] int32 summed over the global batch, predictions [B, H, W] int32)."""
  logits = predict(state, batch["image"], model=model, mean=mean, std=std, normalization=normalization)
  preds = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  cm = metrics.confusion_matrix(batch["label"], preds, batch["weight"], num_classes)
  return cm, preds


class _PerStateStructure:
  """A jitted step whose state shardings follow the structure of the state it is called with.

  A TrainState's tree structure includes its static fields (apply_fn, the optax transformation), so a state
  made by another `Experiment` of the same recipe has equal leaves but another structure, and jit refuses
  shardings of a different structure. The shardings are re-laid onto each new structure (same leaves, same
  order) and one jitted function is kept per structure.
  """

  def __init__(self, make: Callable[[Any], Callable], mesh: Mesh, state_sharding: Any):
    self.make, self.mesh, self.state_sharding = make, mesh, state_sharding
    self.jitted: dict[Any, Callable] = {}

  def _for(self, state):
    treedef = jax.tree.structure(state)
    if treedef not in self.jitted:
      if self.state_sharding is None:
        st = sharding.replicated(self.mesh)
      else:
        st = jax.tree.unflatten(treedef, jax.tree.leaves(self.state_sharding))
      self.jitted[treedef] = self.make(st)
    return self.jitted[treedef]

  def __call__(self, state, batch):
    return self._for(state)(state, batch)

  def lower(self, state, batch):
    return self._for(state).lower(state, batch)


def jit_train_step(mesh: Mesh, state_sharding: Any = None,
                   **kwargs) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """`train_step` jitted with the state in `state_sharding` (default replicated; `Experiment.state_sharding`
  gives the recipe's), the batch laid out by `sharding.batch_spec`, and the input state donated."""
  batch = {k: sharding.batch_sharding(mesh, n) for k, n in (("image", 4), ("label", 3), ("weight", 3))}
  step = functools.partial(train_step, input_sharding=batch["image"], **kwargs)
  return _PerStateStructure(lambda st: jax.jit(step, in_shardings=(st, batch),
                                               out_shardings=(st, sharding.replicated(mesh)), donate_argnums=0),
                            mesh, state_sharding)


def jit_eval_step(mesh: Mesh, state_sharding: Any = None,
                  **kwargs) -> Callable[[TrainState, Batch], tuple[jax.Array, jax.Array]]:
  batch = {k: sharding.batch_sharding(mesh, n) for k, n in (("image", 4), ("label", 3), ("weight", 3), ("index", 1))}
  step = functools.partial(eval_step, **kwargs)
  return _PerStateStructure(lambda st: jax.jit(step, in_shardings=(st, batch), out_shardings=(
      sharding.replicated(mesh), sharding.batch_sharding(mesh, 3))), mesh, state_sharding)
