"""Panoptic segmentation: every pixel a class, every thing its own id (Panoptic FPN).

Model: segjax.models.detection.MaskRCNN with `semantic_classes` = S + 1 (Detectron2's semantic branch on the same
FPN: the S stuff classes plus one "things" class), so this task is the instance task (segjax.tasks.instance)
plus that branch:
- batch (segjax.data.panoptic.pipeline): the instance fields of the thing segments (classes 1..K in ascending
  thing-category id) plus `sem_seg` uint8 [B, H, W] (0 things, 1..S stuff, 255 void), augmented on device with
  the masks (segjax.data.instance.augment);
- loss: config.panoptic.instance_loss_weight * (torchvision's five terms weighted by config.instance.loss_weights)
  + config.panoptic.semantic_loss_weight * loss_sem_seg (Detectron2: 1.0 and 0.5);
- evaluation (segjax.evaluation.panoptic): the fusion on the host (config.panoptic.fusion), COCO's Panoptic
  Quality and the semantic metrics of the fused map.
config.instance keeps its meaning here (max_instances, hflip_prob, scale_range, loss_weights, eval_resize).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from jax.sharding import PartitionSpec as P

from segjax import models, sharding
from segjax.data.instance import pipeline as inst_pipeline
from segjax.data.panoptic import pipeline as pan_pipeline
from segjax.data.panoptic import registry
from segjax.evaluation import panoptic as panoptic_eval
from segjax.evaluation import panoptic_fusion
from segjax.models.detection import mask_rcnn
from segjax.tasks import instance
from segjax.tasks.panoptic_config import DATASET_OPTIONS

MODELS = ("panoptic_fpn",)
SEMANTIC_OPTIONS = ("semantic_conv_dims", "semantic_norm", "semantic_num_groups", "semantic_ignore")


def model_config(name: str = "panoptic_fpn", **overrides: Any) -> ml_collections.ConfigDict:
  """A `config.model` block for "panoptic_fpn": MaskRCNN's options (torchvision's defaults) and the semantic
  branch's (Detectron2's); the class counts come from the dataset."""
  if name not in MODELS:
    raise ValueError(f"Unknown panoptic model {name!r}; choose one of {list(MODELS)}.")
  return models.config_block(name, mask_rcnn.MaskRCNN, skip=("mask_head", "semantic_classes"), **overrides)


def dataset_options(config) -> dict[str, Any]:
  """The registry keywords of `config.dataset` / `config.panoptic.dataset` for the recipe's dataset."""
  name = config.dataset.name
  options = {k: config.panoptic.dataset[k] for k in DATASET_OPTIONS.get(name, ())
             if config.panoptic.dataset[k] is not None}
  if isinstance(options.get("splits"), (ml_collections.ConfigDict, dict)):
    options["splits"] = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(options["splits"]).items()}
  return {"data_dir": config.dataset.data_dir, "manual_dir": config.dataset.manual_dir, **options}


class PanopticTask(instance.InstanceTask):
  """Panoptic FPN on the shared core; see segjax.tasks.Task for what each method is for."""

  name = "panoptic"

  @classmethod
  def dataset_spec(cls, config):
    name = config.dataset.name
    if name not in registry.NAMES:
      raise ValueError(f"config.dataset.name={name!r}: panoptic datasets are {list(registry.NAMES)}")
    if name == registry.SHAPES:  # known without preparing the data
      from segjax.data.panoptic import shapes  # pylint: disable=import-outside-toplevel
      return registry.PanopticSpec(
          name=name, tfds_name="segjax_panoptic_shapes",
          categories=tuple(registry.Category(c["id"], c["name"], c["isthing"]) for c in shapes.CATEGORIES),
          splits=tuple(shapes.SPLIT_SIZES), max_objects={s: shapes.shapes.MAX_OBJECTS for s in shapes.SPLIT_SIZES})
    return registry.get_spec(name, **dataset_options(config))

  @classmethod
  def check_config(cls, config, spec, fail) -> None:
    if config.model.name not in MODELS:
      fail("model.name", config.model.name, f"choose one of {list(MODELS)} for config.task='panoptic'")
    if not spec.thing_ids or not spec.stuff_ids:
      fail("dataset.name", spec.name, "Panoptic FPN needs thing and stuff categories; this dataset has "
           f"{len(spec.thing_ids)} thing and {len(spec.stuff_ids)} stuff categories")
    for key in ("instance_loss_weight", "semantic_loss_weight"):
      if config.panoptic[key] < 0:
        fail(f"panoptic.{key}", config.panoptic[key], "give a weight >= 0")
    try:
      panoptic_fusion.FusionConfig.from_dict(dict(config.panoptic.fusion))
    except (ValueError, TypeError) as e:
      fail("panoptic.fusion", dict(config.panoptic.fusion), str(e))
    instance.check_instance_keys(config, fail)

  # ------------------------------------------------------------------------------------------- model and data

  def build_model(self, spec):
    return mask_rcnn.MaskRCNN(num_classes=spec.num_object_classes, mask_head=True,
                              semantic_classes=spec.num_semantic_classes, **instance.model_kwargs(self.config))

  def batch_specs(self, exp, eval_fields: bool = False):
    specs = super().batch_specs(exp, eval_fields)
    specs["sem_seg"] = P(sharding.DATA_AXIS)
    return specs

  def data_source(self, split: str):
    return registry.data_source(self.config.dataset.name, split, **dataset_options(self.config))

  def check_training_data(self, exp, source, workdir, say) -> None:
    del source, workdir, say
    inst_pipeline.check_max_instances(exp.spec.max_objects, self.config.dataset.train_split,
                                      self.config.instance.max_instances, exp.spec.name)

  def train_transform(self, exp):
    return pan_pipeline.TrainTransform(exp.spec, exp.config.dataset.crop_size, exp.config.instance.max_instances)

  # ------------------------------------------------------------------------------------------- training, on device

  def train_apply(self, exp, variables, batch, key, mutable):
    dropout_key, sampling_key = jax.random.split(key)
    targets = {"boxes": batch["boxes"], "classes": batch["classes"], "masks": batch["masks"],
               "valid": batch["valid"] * (1.0 - batch["crowd"]), "sem_seg": batch["sem_seg"]}
    return exp.forward.model.apply(variables, batch["image"], train=True, targets=targets,
                                   rngs={"dropout": dropout_key, "sampling": sampling_key}, mutable=mutable)

  def loss(self, exp, outputs, aux, batch):
    instance_loss, stats = super().loss(exp, outputs, aux, batch)
    pan = exp.config.panoptic
    loss = pan.instance_loss_weight * instance_loss + pan.semantic_loss_weight * outputs["loss_sem_seg"]
    return loss, {**stats, "loss_sem_seg": outputs["loss_sem_seg"]}

  # ------------------------------------------------------------------------------------------- evaluation

  def evaluator(self, exp):
    return panoptic_eval.Evaluator(exp)

