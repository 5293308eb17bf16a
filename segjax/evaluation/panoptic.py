"""Panoptic evaluation: Panoptic FPN's detections and semantic argmax on device, fusion and PQ on the host.

The eval step is one jitted function per run: the model's inference pass (detections with their 28x28 masks and
the semantic logits) and the semantic argmax, on a global batch padded to one size, returned replicated (every
process holds every image's result; only process 0 writes). Per image, on the host (`predict_image`):
  1. the semantic argmax is cropped to the image's true size and, when evaluation resized the image
     (`config.instance.eval_resize`), brought back to the stored size at the nearest pixel; boxes are divided by
     the scale;
  2. the masks are pasted at the stored size (torchvision's paste_masks_in_image, threshold 0.5);
  3. Panoptic FPN's fusion (segjax.evaluation.panoptic_fusion, thresholds from `config.panoptic.fusion`) makes the
     segment map; its classes become the dataset's category ids (things by PanopticSpec.thing_ids, stuff by
     stuff_ids).
The stored ground truth is decoded at its own resolution and scored with COCO's Panoptic Quality
(segjax.evaluation.panoptic_quality: PQ, SQ, RQ for all, things, stuff and per category) and, from the same
predicted map, segjax's semantic metrics over the categories (mIoU etc., segjax.evaluation.metrics): a pixel the
prediction left void is a miss of its ground-truth category; ground-truth void pixels are not scored.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from segjax import forward as forward_lib
from segjax import sharding
from segjax.data.instance import pipeline as inst_pipeline
from segjax.data.panoptic import features
from segjax.data.panoptic import pipeline as pan_pipeline
from segjax.data.panoptic.registry import PanopticSpec
from segjax.evaluation import coco, metrics, panoptic_fusion, panoptic_quality, panoptic_viz
from segjax.evaluation import instance as instance_eval
from segjax.evaluation import loop as loop_lib

# The eval batch's fields: the step reads "image" and hands the others back to `collect`.
EVAL_KEYS = ("image", "image_size", "scale", "image_id", "example_index")


def fusion_config(config) -> panoptic_fusion.FusionConfig:
  """The recipe's `config.panoptic.fusion` (the semantic head's "things" class is 0)."""
  return panoptic_fusion.FusionConfig.from_dict(dict(config.panoptic.fusion), thing_id=0)


def to_categories(segments: list[dict[str, Any]], spec: PanopticSpec) -> list[dict[str, Any]]:
  """Fusion segments with the model's classes (things 1..K, stuff 1..S) turned into the dataset's category ids."""
  out = []
  for s in segments:
    ids = spec.thing_ids if s["isthing"] else spec.stuff_ids
    out.append({**s, "category_id": int(ids[int(s["category_id"]) - 1]), "iscrowd": False})
  return out


def predict_image(spec: PanopticSpec, detections: dict[str, np.ndarray], semantic: np.ndarray, image_size,
                  scale, stored_size, fusion: panoptic_fusion.FusionConfig) -> tuple[np.ndarray, list[dict]]:
  """One image's panoptic prediction at the stored size (module doc, steps 1-3).

  Args:
    spec: the dataset's categories.
    detections: boxes [D, 4], scores [D], classes [D] (1..K), valid [D], masks [D, 28, 28], of the image as the
      model saw it.
    semantic: int [H, W] semantic argmax of the padded image.
    image_size: (h, w) of the image inside the padding; scale: (sy, sx) of that image over the stored one.
    stored_size: (H, W) of the stored image.
    fusion: the thresholds.

  Returns:
    (panoptic int32 [H, W] segment ids, 0 void; segments with dataset category ids, as panoptic_fusion's).
  """
  h, w = (int(v) for v in image_size)
  height, width = (int(v) for v in stored_size)
  sem = np.asarray(semantic)[:h, :w]
  if (h, w) != (height, width):
    sem = inst_pipeline.resize_masks(sem[None], height, width)[0]
  dets = instance_eval.to_stored_image(detections, scale)
  masks = coco.paste_masks(dets["masks"], dets["boxes"], (height, width))
  pan, segments = panoptic_fusion.combine_semantic_and_instance_outputs(
      masks, dets["scores"], dets["classes"], dets["valid"], sem, fusion)
  return pan, to_categories(segments, spec)


def category_map(panoptic: np.ndarray, segments, index: dict[int, int], void: int) -> np.ndarray:
  """int [H, W]: each pixel's contiguous category index (`index`: category id -> 0..C-1), `void` elsewhere."""
  out = np.full(panoptic.shape, void, np.int64)
  for s in segments:
    if s["category_id"] in index:
      out[panoptic == s["id"]] = index[s["category_id"]]
  return out


class SemanticCounts:
  """Accumulates the confusion matrix of predicted vs ground-truth category maps (module doc)."""

  def __init__(self, spec: PanopticSpec):
    self.names = [c.name for c in spec.categories]
    self.index = {c.id: i for i, c in enumerate(spec.categories)}
    n = len(self.names)
    self.cm = np.zeros((n, n + 1), np.int64)  # the last column: predicted void

  def add(self, pred_map, pred_segments, gt_map, gt_segments) -> None:
    n = len(self.names)
    gt = category_map(gt_map, gt_segments, self.index, n)
    pred = category_map(pred_map, pred_segments, self.index, n)
    keep = gt < n
    self.cm += np.bincount(gt[keep] * (n + 1) + pred[keep], minlength=n * (n + 1)).reshape(n, n + 1)

  def summarize(self) -> dict[str, Any]:
    return metrics.compute_metrics(self.cm[:, :-1], self.names, unlabelled=self.cm[:, -1])


class Evaluator:
  """Built once per run (the step compiles once per batch shape); `evaluate` scores a split."""

  def __init__(self, exp):
    self.exp = exp

    def panoptic_eval_step(variables, batch):
      out = instance_eval.detect(exp, variables, batch["image"], batch["image_size"])
      semantic = jnp.argmax(out.pop("sem_seg"), axis=-1).astype(jnp.int32)
      return out, semantic, {k: batch[k] for k in EVAL_KEYS if k != "image"}

    self.step = jax.jit(panoptic_eval_step, out_shardings=sharding.replicated(exp.mesh))

  def evaluate(self, state, split: str, num_visualizations: int = 0, progress: bool = True,
               score_threshold: float | None = None) -> loop_lib.EvalResult:
    """PQ / SQ / RQ and the semantic metrics of `split`, and `num_visualizations` GT | prediction panels."""
    del score_threshold  # the fusion's instances_score_thresh decides which detections are drawn
    exp = self.exp
    task, config, spec = exp.task, exp.config, exp.spec
    source = task.data_source(split)
    fit = bool(config.instance.eval_resize)
    example, padding = pan_pipeline.eval_functions(spec, task.eval_size(exp), fit=fit)
    variables = forward_lib.variables(state.eval_params, state.batch_stats)
    fusion = fusion_config(config)
    pq = panoptic_quality.PanopticEvaluator(spec.categories_by_id)
    semantic_counts = SemanticCounts(spec)
    kept: list[tuple[features.Panoptic, np.ndarray, list[dict]]] = []

    def collect(b, local, outputs):
      del b, local  # every process reads the replicated global batch
      detections, semantic, info = jax.tree.map(np.asarray, outputs)
      for i in np.flatnonzero(info["example_index"] >= 0):
        truth = features.decode(source[int(info["example_index"][i])])
        pan, segments = predict_image(spec, {k: v[i] for k, v in detections.items()}, semantic[i],
                                      info["image_size"][i], info["scale"][i], truth.panoptic.shape, fusion)
        pq.add(pan, {s["id"]: s for s in segments}, truth.panoptic, truth.segments_by_id)
        semantic_counts.add(pan, segments, truth.panoptic, truth.segments)
        if len(kept) < num_visualizations:
          kept.append((truth, pan, segments))

    specs = {k: task.batch_specs(exp)["image"] if k == "image" else jax.sharding.PartitionSpec(sharding.DATA_AXIS)
             for k in EVAL_KEYS}
    loop_lib.run_batches(exp, source, example=example, padding=padding, batch_size=config.eval_batch_size,
                         step=lambda batch: self.step(variables, batch), collect=collect, specs=specs,
                         desc=f"eval {split}", progress=progress)
    result = pq.summarize()
    result["semantic"] = semantic_counts.summarize()
    result["num_images"] = pq.num_images
    colours = spec.category_colours
    names = {c.id: c.name for c in spec.categories}
    overlays = [(f"{t.filename}_image{t.image_id}",
                 panoptic_viz.panel(t.image, t.panoptic, t.segments, pan, segs, colours, names))
                for t, pan, segs in kept]
    return loop_lib.EvalResult(scalars=scalars_of(result), headline=headline_of(result), overlays=overlays or None,
                               details={"result": result})


def scalars_of(result: dict[str, Any]) -> dict[str, float]:
  """PQ, SQ, RQ (all), PQ_th / SQ_th / RQ_th (things), PQ_st / ... (stuff), mIoU and pixel accuracy."""
  out = {}
  for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
    for key in ("pq", "sq", "rq"):
      out[f"{key.upper()}{suffix}"] = float(result[group][key])
  sem = result.get("semantic")
  if sem:
    for key in ("mean_iou", "pixel_accuracy"):
      if np.isfinite(sem[key]):
        out[key] = float(sem[key])
  return out


def headline_of(result: dict[str, Any]) -> str:
  parts = [f"PQ {result['All']['pq']:.4f} (things {result['Things']['pq']:.4f}, stuff {result['Stuff']['pq']:.4f})"]
  sem = result.get("semantic")
  if sem and np.isfinite(sem["mean_iou"]):
    parts.append(f"mIoU {sem['mean_iou']:.4f}")
  return "; ".join(parts)


def json_result(result: dict[str, Any]) -> dict[str, Any]:
  """`evaluate`'s result for metrics.json: category ids as string keys, numpy scalars as numbers, NaN as null."""
  return _nan_to_none({**result, "per_category": {str(k): v for k, v in result["per_category"].items()}})


def _nan_to_none(value):
  if isinstance(value, dict):
    return {k: _nan_to_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_nan_to_none(v) for v in value]
  if isinstance(value, float) and not np.isfinite(value):
    return None
  if isinstance(value, np.generic):
    return _nan_to_none(value.item())
  return value
