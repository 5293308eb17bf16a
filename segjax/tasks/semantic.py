"""Semantic segmentation: every pixel one of K classes.

Batch: image uint8 [B, H, W, C], label int32 [B, H, W], weight float32 [B, H, W] (0 for the ignore label and
padding; segjax.data.pipeline). Loss: the weighted sum of the losses config.loss turns on (cross-entropy, soft Dice,
focal, Lovász-softmax, Tversky, Jaccard, OHEM cross-entropy; segjax.losses_extra.total_loss, docs/losses.md) with
the pixel weights, plus `loss.aux_weight` times the same loss of auxiliary heads a model sows. Evaluation: per-image confusion matrices on
device, the metrics of docs/metrics.md under every toolkit's convention (segjax.evaluation.semantic).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from segjax import losses_extra, models, sharding
from segjax.data import augment as augment_lib
from segjax.data import pipeline
from segjax.evaluation import semantic as semantic_eval
from segjax.models import layers
from segjax.tasks import Task


class SemanticTask(Task):
  """The reference task; see segjax.tasks.Task for what each method is for."""

  name = "semantic"

  def build_model(self, spec):
    config = self.config
    return models.build_model(config.model.name, spec.num_classes, **models.model_kwargs(config.model))

  def check(self, exp) -> None:
    for side in exp.config.dataset.crop_size:
      try:
        models.output_size(exp.model, side)
      except ValueError as e:
        raise ValueError(f"config.dataset.crop_size={tuple(exp.config.dataset.crop_size)}: {e}") from None

  def batch_specs(self, exp):
    return {"image": sharding.batch_spec(4), "label": sharding.batch_spec(3), "weight": sharding.batch_spec(3)}

  def train_transform(self, exp):
    spec, d = exp.spec, exp.config.dataset
    return pipeline.RandomCrop(d.crop_size, spec.ignore_label, spec.num_classes, spec.reduce_zero_label,
                               d.train_scale)

  def augment(self, exp, key, batch):
    image, label, weight = augment_lib.augment_batch(exp.settings.augment, key, batch["image"], batch["label"],
                                                     batch["weight"])
    return {"image": image, "label": label, "weight": weight}

  @functools.cached_property
  def _class_weights(self):
    weights = self.config.loss.class_weights
    return None if weights is None else tuple(float(w) for w in weights)

  def loss(self, exp, outputs, aux, batch):
    """A valid-convolution net predicts only the centre of its input: labels and weights are centre-cropped to the
    logits (the U-Net paper's 572 -> 388 tiles)."""
    settings = exp.settings.loss
    cw = None if self._class_weights is None else jnp.asarray(self._class_weights, jnp.float32)
    loss_of = functools.partial(losses_extra.total_loss, settings=settings, class_weights=cw)
    logits, labels, weight = outputs, batch["label"], batch["weight"]
    target, target_weight = labels, weight
    if logits.shape[1:3] != labels.shape[1:3]:
      target, target_weight = (layers.center_crop(a, logits.shape[1:3]) for a in (labels, weight))
    loss = main_loss = loss_of(logits, target, target_weight)
    for aux_logits in jax.tree.leaves(aux):
      loss = loss + settings.aux_weight * loss_of(aux_logits, labels, weight)
    correct = ((jnp.argmax(logits, -1) == target) * target_weight).sum()
    stats = {"correct": correct, "labelled": target_weight.sum()}
    if jax.tree.leaves(aux):  # reported beside the total when auxiliary heads add to it
      stats["main_loss"] = main_loss
    return loss, stats

  def train_metrics(self, stats, num_microbatches):
    out = {"pixel_accuracy": stats["correct"] / jnp.maximum(stats["labelled"], 1.0)}
    if "main_loss" in stats:
      out["main_loss"] = stats["main_loss"] / num_microbatches
    return out

  def evaluator(self, exp):
    return semantic_eval.Evaluator(exp)
