"""`config.instance`, the keys an instance recipe sets beside the shared ones (config.task="instance").

Kept apart from segjax.tasks.instance so the recipe schema (segjax.config) imports no model or dataset code.
"""

from __future__ import annotations

import ml_collections

LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
# Options config.instance.dataset may set, by dataset (segjax.data.instance.registry documents them).
DATASET_OPTIONS = {
    "instance_shapes": (),
    "coco": ("splits", "name"),
    "instance_folder": ("images_dir", "masks_dir", "class_names", "classes_dir", "id_classes",
                        "validation_fraction", "split_files", "name"),
}


def config_block() -> ml_collections.ConfigDict:
  """`config.instance` with its defaults."""
  b = ml_collections.ConfigDict()
  # Ground-truth rows per image; an image with more instances is an error naming it (raise this key).
  b.max_instances = 16
  # Device augmentation (segjax.data.instance.augment): flips, scale jitter then a crop at the training size;
  # boxes are recomputed from the moved masks and instances the crop empties are dropped.
  b.hflip_prob = 0.5
  b.scale_range = (1.0, 1.0)
  # Weights of torchvision's five losses (all 1 in torchvision and Detectron2).
  b.loss_weights = ml_collections.ConfigDict({k: 1.0 for k in LOSSES})
  # Evaluation resizes images to fit dataset.eval_size as training resizes them (True), scoring the detections
  # mapped back to the stored image; False pads only (an image larger than eval_size is then an error).
  b.eval_resize = False
  # Detections drawn in overlays and written by predict.py's instance-id PNG (COCO AP uses every detection).
  b.score_threshold = 0.5
  # Options of the dataset: COCO-format files, instance-id mask folders (None: not given).
  b.dataset = ml_collections.ConfigDict({k: ml_collections.FieldReference(None, field_type=object)
                                         for k in sorted({o for v in DATASET_OPTIONS.values() for o in v})})
  return b
