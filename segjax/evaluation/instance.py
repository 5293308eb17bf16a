"""Instance evaluation: detections on device, COCO box and mask AP on the host (segjax.evaluation.coco).

The eval step is one jitted function per run: the model's inference forward pass (a fixed `detections_per_img`
rows per image, a `valid` flag for padding) on a global batch padded to one size. Its outputs and the batch's
ground-truth fields come back replicated, so every process holds every image's result and the same evaluator
(only process 0 writes): no host-to-host gather. The 28x28 masks are pasted into the image on the host at the
image's true size (torchvision's paste_masks_in_image), then scored by pycocotools.

With `config.instance.eval_resize` the images are resized to fit the eval size (as training resizes them); the
detections are then mapped back to the stored image (boxes divided by the scale; a box-relative 28x28 mask needs
nothing) and scored against the stored ground truth, decoded again at its own resolution, so AP and the COCO
size ranges (small < 32^2 px, large > 96^2) are the stored image's, as in COCO's own evaluation.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable

import jax
import numpy as np
from PIL import Image

from segjax import forward as forward_lib
from segjax import sharding
from segjax.data.instance import features
from segjax.data.instance import pipeline as inst_pipeline
from segjax.evaluation import coco, instance_viz
from segjax.evaluation import loop as loop_lib

GT_KEYS = ("boxes", "classes", "masks", "valid", "crowd", "image_size", "image_id", "scale", "example_index")
EVAL_FIELDS = ("image_size", "image_id", "scale", "example_index")


def detect(exp, variables, images, image_sizes):
  """The model's detections (inference mode) for [B, H, W, 3] images in 0..255 whose true sizes are
  `image_sizes` [B, 2] (the rest is padding, which proposals and boxes are clipped away from)."""
  return exp.forward.model.apply(variables, exp.forward.normalize(images), train=False, image_sizes=image_sizes)


def eval_functions(size, max_instances: int, name: str, *, fit: bool) -> tuple[Callable, Callable]:
  """(example, padding) of `pipeline.eval_batches`: the data's eval fields plus the example's index in the split
  (to decode its stored ground truth again when `fit` resized it)."""
  example = inst_pipeline.eval_example(size, max_instances, name, fit=fit)
  padding = inst_pipeline.eval_padding(size, max_instances)
  return (lambda raw, index: {**example(raw, index), "example_index": np.int64(index)},
          lambda: {**padding(), "example_index": np.int64(-1)})


def to_stored_image(detections: dict[str, np.ndarray], scale) -> dict[str, np.ndarray]:
  """Detections of an image resized by `scale` (sy, sx) in the stored image's pixels."""
  sy, sx = (float(v) for v in np.asarray(scale))
  if (sy, sx) == (1.0, 1.0):
    return detections
  return {**detections, "boxes": np.asarray(detections["boxes"], np.float32) / np.array([sx, sy, sx, sy], np.float32)}


def stored_example(raw: dict[str, Any]) -> dict[str, np.ndarray]:
  """The ground truth of a stored record at its own resolution, as evaluation fields (no padding rows)."""
  inst = features.decode(raw)
  n = len(inst.classes)
  return {"image": inst.image, "boxes": inst.boxes, "classes": inst.classes, "masks": inst.masks,
          "valid": np.ones(n, np.float32), "crowd": inst.crowd.astype(np.float32),
          "image_size": np.array(inst.image.shape[:2], np.int32), "image_id": np.int64(inst.image_id)}


class Evaluator:
  """Built once per run (the step compiles once per batch shape); `evaluate` scores a split."""

  def __init__(self, exp):
    self.exp = exp

    def instance_eval_step(variables, batch):
      detections = detect(exp, variables, batch["image"], batch["image_size"])
      return detections, {k: batch[k] for k in GT_KEYS}

    self.step = jax.jit(instance_eval_step, out_shardings=sharding.replicated(exp.mesh))

  def evaluate(self, state, split: str, *, num_visualizations: int = 0, progress: bool = True,
               score_threshold: float = 0.5) -> loop_lib.EvalResult:
    """COCO AP of `state` on `split`. `details`: {"result": CocoEvaluator.summarize(), "evaluator": it};
    `overlays`: up to `num_visualizations` (name, ground truth | prediction panel) pairs."""
    exp = self.exp
    task, config = exp.task, exp.config
    source = task.data_source(split)
    fit = bool(config.instance.eval_resize)
    example, padding = eval_functions(task.eval_size(exp), config.instance.max_instances, exp.spec.name, fit=fit)
    variables = forward_lib.variables(state.eval_params, state.batch_stats)
    names = task.object_class_names(exp.spec)
    evaluator = coco.CocoEvaluator(names, category_ids=_category_ids(exp.spec),
                                   iou_types=("bbox", "segm") if exp.model.mask_head else ("bbox",))
    kept: list[tuple[int, dict[str, np.ndarray]]] = []

    def collect(b, local, outputs):
      del b, local  # every process reads the replicated global batch
      detections, truth = jax.tree.map(np.asarray, outputs)
      for i in np.flatnonzero(truth["example_index"] >= 0):
        row = {k: v[i] for k, v in truth.items()}
        dets = {k: v[i] for k, v in detections.items()}
        if fit:
          dets = to_stored_image(dets, row["scale"])
          row = stored_example(source[int(row["example_index"])])
        evaluator.add(row, dets)
        if len(kept) < num_visualizations:
          kept.append((int(truth["example_index"][i]), dets))

    loop_lib.run_batches(exp, source, example=example, padding=padding, batch_size=config.eval_batch_size,
                         step=lambda batch: self.step(variables, batch), collect=collect,
                         specs=task.batch_specs(exp, eval_fields=True), desc=f"eval {split}", progress=progress)
    result = evaluator.summarize()
    overlays = []
    for index, dets in kept:  # only these few are decoded again, with their images
      ex = stored_example(source[index]) if fit else example(source[index], index)
      overlays.append((f"{index:05d}_image{int(ex['image_id'])}",
                       instance_viz.panel(ex, dets, names, score_threshold=score_threshold)))
    return loop_lib.EvalResult(scalars=scalars_of(result), headline=headline_of(result), overlays=overlays or None,
                               details={"result": result, "evaluator": evaluator})


def _category_ids(spec):
  ids = getattr(spec, "category_ids", None)
  return None if ids is None else tuple(ids[1:])


def scalars_of(result: dict[str, Any]) -> dict[str, float]:
  """box_AP, box_AP50, ..., mask_AP, ... of a summarize() result (NaN ones left out), for metrics.jsonl."""
  out = {}
  for key in ("box", "mask"):
    for name, value in result.get(key, {}).items():
      if value is not None and np.isfinite(value):
        out[f"{key}_{name}"] = float(value)
  return out


def headline_of(result: dict[str, Any]) -> str:
  parts = []
  for key in ("mask", "box"):
    if key in result:
      parts.append(f"{key} AP {result[key]['AP']:.4f}, AP50 {result[key]['AP50']:.4f}")
  return "; ".join(parts)


def write_overlays(out_dir: pathlib.Path, overlays) -> list[pathlib.Path]:
  """Writes (name, picture) overlays as PNGs under `out_dir`; returns the paths."""
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for name, picture in overlays or ():
    path = out_dir / f"{name}.png"
    Image.fromarray(picture).save(path, format="PNG")
    paths.append(path)
  return paths
