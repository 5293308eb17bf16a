"""Instance segmentation: every object its own class and mask (Mask R-CNN; Faster R-CNN for boxes alone).

Batch (segjax.data.instance.pipeline): image uint8 [B, H, W, 3]; per image N = `config.instance.max_instances`
rows of boxes float32 [B, N, 4] (x1, y1, x2, y2 pixels), classes int32 [B, N] (1..K, 0 padding), masks uint8
[B, N, H, W], valid and crowd float32 [B, N]. Crowd regions are never training targets (torchvision trains on
none; Detectron2 drops them); COCO evaluation ignores detections on them. Images without objects train as
negatives.

Model: segjax.models.detection.MaskRCNN, whose training forward pass needs the ground truth (RoIs are sampled
against it between the two stages), so this task's `train_apply` passes the targets and a "sampling" key derived
from the step key: a resumed run samples the same anchors and RoIs. Loss: torchvision's five terms, each with a
weight from `config.instance.loss_weights`. Evaluation: COCO box and mask AP with pycocotools
(segjax.evaluation.instance).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec as P

from segjax import models, sharding
from segjax.data.instance import pipeline as inst_pipeline
from segjax.data.instance import registry
from segjax.evaluation import instance as instance_eval
from segjax.models.detection import mask_rcnn
from segjax.tasks import Task
from segjax.tasks.instance_config import DATASET_OPTIONS, LOSSES

MODELS = {"mask_rcnn": True, "faster_rcnn": False}  # name -> mask head
SEMANTIC_KEYS = ("semantic_classes", "semantic_conv_dims", "semantic_norm", "semantic_num_groups",
                 "semantic_ignore")  # panoptic only
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def model_config(name: str = "mask_rcnn", **overrides: Any) -> ml_collections.ConfigDict:
  """A `config.model` block for "mask_rcnn" or "faster_rcnn": MaskRCNN's options with torchvision's defaults."""
  if name not in MODELS:
    raise ValueError(f"Unknown instance model {name!r}; choose one of {sorted(MODELS)}.")
  return models.config_block(name, mask_rcnn.MaskRCNN, skip=("mask_head",) + SEMANTIC_KEYS, **overrides)


def dataset_options(config) -> dict[str, Any]:
  """The registry keywords of `config.dataset` / `config.instance.dataset` for the recipe's dataset."""
  name = config.dataset.name
  options = {k: config.instance.dataset[k] for k in DATASET_OPTIONS.get(name, ())
             if config.instance.dataset[k] is not None}
  for k, v in options.items():
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      options[k] = {kk: tuple(vv) if isinstance(vv, list) else vv for kk, vv in dict(v).items()}
  return {"data_dir": config.dataset.data_dir, "manual_dir": config.dataset.manual_dir, **options}


def model_kwargs(config) -> dict[str, Any]:
  """MaskRCNN's keywords from `config.model` (dtype names as dtypes, lists as tuples)."""
  kwargs = models.model_kwargs(config.model)
  if isinstance(kwargs.get("dtype"), str):
    kwargs["dtype"] = _DTYPES[kwargs["dtype"]]
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def check_instance_keys(config, fail) -> None:
  """The config.instance and size keys (shared with the panoptic task); `fail(key, value, fix)` raises."""
  if config.instance.max_instances < 1:
    fail("instance.max_instances", config.instance.max_instances, "must be >= 1")
  for key, size in (("dataset.crop_size", config.dataset.crop_size), ("dataset.eval_size", config.dataset.eval_size)):
    if isinstance(size, (tuple, list)) and any(int(s) % 32 for s in size):
      fail(key, tuple(size), "give sides that are multiples of 32 (the FPN's coarsest stride)")
  if config.dataset.eval_size == "per_image":
    fail("dataset.eval_size", "per_image", "instance evaluation batches images at one size: give (h, w) or None")
  unknown = set(config.instance.loss_weights) - set(LOSSES)
  if unknown:
    fail("instance.loss_weights", sorted(unknown), f"the losses are {list(LOSSES)}")
  lo, hi = config.instance.scale_range
  if not 0 < lo <= hi:
    fail("instance.scale_range", (lo, hi), "give (min, max) with 0 < min <= max")


class InstanceTask(Task):
  """Mask R-CNN / Faster R-CNN on the shared core; see segjax.tasks.Task for what each method is for."""

  name = "instance"

  @classmethod
  def dataset_spec(cls, config):
    name = config.dataset.name
    if name not in registry.NAMES:
      raise ValueError(f"config.dataset.name={name!r}: instance datasets are {list(registry.NAMES)}")
    if name == registry.SHAPES:  # known without preparing the data
      from segjax.data.instance import shapes  # pylint: disable=import-outside-toplevel
      return registry.InstanceSpec(name=name, tfds_name="segjax_instance_shapes", class_names=shapes.CLASS_NAMES,
                                   palette=shapes.PALETTE, splits=tuple(shapes.SPLIT_SIZES),
                                   max_objects={s: shapes.MAX_OBJECTS for s in shapes.SPLIT_SIZES})
    return registry.get_spec(name, **dataset_options(config))

  @classmethod
  def check_config(cls, config, spec, fail) -> None:
    if config.model.name not in MODELS:
      fail("model.name", config.model.name, f"choose one of {sorted(MODELS)} for config.task='instance'")
    check_instance_keys(config, fail)

  # ------------------------------------------------------------------------------------------- model and data

  def build_model(self, spec):
    return mask_rcnn.MaskRCNN(num_classes=spec.num_classes - 1, mask_head=MODELS[self.config.model.name],
                              **model_kwargs(self.config))

  @staticmethod
  def object_class_names(spec) -> tuple[str, ...]:
    return tuple(spec.class_names[1:])

  def batch_specs(self, exp, eval_fields: bool = False):
    rows = P(sharding.DATA_AXIS)
    specs = {"image": sharding.batch_spec(4), "boxes": rows, "classes": rows, "masks": rows, "valid": rows,
             "crowd": rows}
    if eval_fields:
      specs.update({k: rows for k in instance_eval.EVAL_FIELDS})
    return specs

  def data_source(self, split: str):
    return registry.data_source(self.config.dataset.name, split, **dataset_options(self.config))

  def check_training_data(self, exp, source, workdir, say) -> None:
    """More instances in an image than max_instances fails here, before anything compiles (the builders checked
    their files when they prepared)."""
    del source, workdir, say
    config = self.config
    inst_pipeline.check_max_instances(exp.spec.max_objects, config.dataset.train_split,
                                      config.instance.max_instances, exp.spec.name)

  def init_shape(self, exp):
    return (1, 64, 64, 3)

  def trainable(self, exp):
    model = exp.model
    return functools.partial(mask_rcnn.trainable_mask, frozen_bn=model.frozen_bn,
                             trainable_layers=model.trainable_layers)

  def train_transform(self, exp):
    return inst_pipeline.TrainTransform(exp.config.dataset.crop_size, exp.config.instance.max_instances,
                                        exp.spec.name)

  def eval_size(self, exp) -> tuple[int, int]:
    size = exp.config.dataset.eval_size
    return tuple(int(s) for s in (size if size is not None else exp.config.dataset.crop_size))

  # ------------------------------------------------------------------------------------------- training, on device

  @functools.cached_property
  def _augment(self):
    from segjax.data.instance import augment as augment_lib  # pylint: disable=import-outside-toplevel
    inst = self.config.instance
    return augment_lib.InstanceAugment(hflip_prob=float(inst.hflip_prob),
                                       scale_range=tuple(float(v) for v in inst.scale_range))

  def augment(self, exp, key, batch):
    from segjax.data.instance import augment as augment_lib  # pylint: disable=import-outside-toplevel
    return augment_lib.augment_instances(self._augment, key, batch)

  def train_apply(self, exp, variables, batch, key, mutable):
    dropout_key, sampling_key = jax.random.split(key)
    targets = {"boxes": batch["boxes"], "classes": batch["classes"], "masks": batch["masks"],
               "valid": batch["valid"] * (1.0 - batch["crowd"])}
    return exp.forward.model.apply(variables, batch["image"], train=True, targets=targets,
                                   rngs={"dropout": dropout_key, "sampling": sampling_key}, mutable=mutable)

  def loss(self, exp, outputs, aux, batch):
    del aux, batch
    weights = exp.config.instance.loss_weights
    terms = {k: outputs[k] for k in LOSSES if k in outputs}
    loss = sum(weights[k] * v for k, v in terms.items())
    stats = {**terms, **{k: jnp.asarray(v, jnp.float32) for k, v in outputs.get("stats", {}).items()}}
    return loss, stats

  def train_metrics(self, stats, num_microbatches):
    return {k: v / num_microbatches for k, v in stats.items()}

  # ------------------------------------------------------------------------------------------- evaluation

  def evaluator(self, exp):
    return instance_eval.Evaluator(exp)
