"""`config.panoptic`, the keys a panoptic recipe sets beside the shared ones and `config.instance`
(config.task="panoptic": Panoptic FPN reads max_instances, the augmentation, the instance loss weights and
eval_resize from config.instance).

Kept apart from segjax.tasks.panoptic so the recipe schema (segjax.config) imports no model or dataset code.
"""

from __future__ import annotations

import ml_collections

# Options config.panoptic.dataset may set, by dataset (segjax.data.panoptic.registry documents them).
DATASET_OPTIONS = {
    "panoptic_shapes": (),
    "coco_panoptic": ("splits", "name"),
    "cityscapes": ("splits", "name"),
}


def config_block() -> ml_collections.ConfigDict:
  """`config.panoptic` with its defaults (Detectron2's Panoptic FPN)."""
  b = ml_collections.ConfigDict()
  # The joint loss: instance_loss_weight * (the weighted instance losses) + semantic_loss_weight * loss_sem_seg
  # (Detectron2: PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT 1.0, SEM_SEG_HEAD.LOSS_WEIGHT 0.5).
  b.instance_loss_weight = 1.0
  b.semantic_loss_weight = 0.5
  # The fusion of instances and stuff (segjax.evaluation.panoptic_fusion; Detectron2's PANOPTIC_FPN.COMBINE).
  b.fusion = ml_collections.ConfigDict({"overlap_threshold": 0.5, "stuff_area_thresh": 4096,
                                        "instances_score_thresh": 0.5})
  # Options of the dataset: COCO panoptic files, Cityscapes folders (None: not given).
  b.dataset = ml_collections.ConfigDict({k: ml_collections.FieldReference(None, field_type=object)
                                         for k in sorted({o for v in DATASET_OPTIONS.values() for o in v})})
  return b
