"""A test-only second task: find the boxes of the shapes in an image.

It exists to prove that the shared core (loop, checkpointing and exact resume, the guard, accumulation, mesh,
global batching, metrics.jsonl) is task-agnostic: it trains through the unchanged `train_and_evaluate` with
`config.task = "tests.tasks.box_task:BoxTask"`.

What makes it a different task:
- its batch holds a padded, variable number of boxes per image: `boxes` float32 [B, MAX_BOXES, 4] (y0, x0, y1,
  x1, pixels, end exclusive) and `box_valid` float32 [B, MAX_BOXES] (1 for a box, 0 for padding), made on the
  host from the label (one box per shape class present in the crop: 0 to 5 of them);
- its device augmentation moves the boxes with the image (a horizontal flip);
- its model predicts one objectness logit per pixel, its loss is binary cross-entropy against the boxes
  rasterised on device;
- its metric is computed on the host from the gathered predictions and the padded boxes: the fraction of
  ground-truth boxes whose centre pixel is predicted inside an object ("centre recall") and the IoU of the
  predicted foreground with the union of the boxes.
"""

from __future__ import annotations

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from segjax import sharding
from segjax.data import pipeline
from segjax.evaluation import loop as eval_loop
from segjax.tasks import Task

MAX_BOXES = 6


def boxes_of(label: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """One box per labelled non-background class present: (boxes [MAX_BOXES, 4], valid [MAX_BOXES]), padded."""
  boxes = np.zeros((MAX_BOXES, 4), np.float32)
  valid = np.zeros((MAX_BOXES,), np.float32)
  present = [c for c in np.unique(label[weight > 0]) if c != 0][:MAX_BOXES]
  for i, c in enumerate(present):
    rows, cols = np.nonzero((label == c) & (weight > 0))
    boxes[i] = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
    valid[i] = 1.0
  return boxes, valid


def rasterise(boxes: jax.Array, valid: jax.Array, height: int, width: int) -> jax.Array:
  """[B, N, 4] boxes -> [B, H, W] float 1 inside any valid box."""
  r = jnp.arange(height, dtype=jnp.float32)[None, None, :, None]
  c = jnp.arange(width, dtype=jnp.float32)[None, None, None, :]
  y0, x0, y1, x1 = (boxes[..., i][..., None, None] for i in range(4))
  inside = (r >= y0) & (r < y1) & (c >= x0) & (c < x1) & (valid[..., None, None] > 0)
  return inside.any(axis=1).astype(jnp.float32)


class BoxCrop(grain.transforms.RandomMap):
  """The semantic crop, then the boxes of the crop's label."""

  def __init__(self, crop: pipeline.RandomCrop):
    self.crop = crop

  def random_map(self, element, rng):
    ex = self.crop.random_map(element, rng)
    boxes, valid = boxes_of(ex["label"], ex["weight"])
    return {"image": ex["image"], "boxes": boxes, "box_valid": valid}


class Objectness(nn.Module):
  """Two 3x3 convolutions and a 1x1 head: one objectness logit per pixel."""

  features: int = 8

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = nn.relu(nn.Conv(self.features, (3, 3))(x))
    x = nn.relu(nn.Conv(self.features, (3, 3))(x))
    return nn.Conv(1, (1, 1))(x)[..., 0]


class BoxTask(Task):
  name = "boxes"

  def build_model(self, spec):
    return Objectness()

  def batch_specs(self, exp):
    return {"image": sharding.batch_spec(4), "boxes": P(sharding.DATA_AXIS), "box_valid": P(sharding.DATA_AXIS)}

  def train_transform(self, exp):
    spec, d = exp.spec, exp.config.dataset
    return BoxCrop(pipeline.RandomCrop(d.crop_size, spec.ignore_label, spec.num_classes, spec.reduce_zero_label))

  def augment(self, exp, key, batch):
    image, boxes = batch["image"].astype(jnp.float32), batch["boxes"]
    width = image.shape[2]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(image.shape[0]))
    flip = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5))(keys)
    flipped = jnp.stack([boxes[..., 0], width - boxes[..., 3], boxes[..., 2], width - boxes[..., 1]], -1)
    return {"image": jnp.where(flip[:, None, None, None], image[:, :, ::-1], image),
            "boxes": jnp.where(flip[:, None, None], flipped, boxes), "box_valid": batch["box_valid"]}

  def loss(self, exp, outputs, aux, batch):
    target = rasterise(batch["boxes"], batch["box_valid"], *outputs.shape[1:3])
    loss = jnp.mean(jnp.logaddexp(0.0, outputs) - target * outputs)  # binary cross-entropy with logits
    return loss, {"boxes": batch["box_valid"].sum(), "images": jnp.float32(outputs.shape[0])}

  def train_metrics(self, stats, num_microbatches):
    return {"boxes_per_image": stats["boxes"] / stats["images"]}

  def evaluator(self, exp):
    return BoxEvaluator(exp)


class BoxEvaluator:
  """Objectness maps on device; the metric on the host, from the gathered maps and padded boxes."""

  def __init__(self, exp):
    self.exp = exp
    fwd = exp.forward

    def box_eval_step(variables, batch):
      return jax.nn.sigmoid(fwd(variables, batch["image"]))

    self.step = jax.jit(box_eval_step, out_shardings=sharding.batch_sharding(exp.mesh, 3))

  def _example(self, size):
    spec = self.exp.spec
    height, width = size

    def example(raw, index):
      del index
      ex = pipeline.pad_to(pipeline.to_example(raw, spec.ignore_label, spec.num_classes), height, width)
      boxes, valid = boxes_of(ex.label, ex.weight)
      return {"image": ex.image, "boxes": boxes, "box_valid": valid}

    def padding():
      return {"image": np.zeros((height, width, spec.num_channels), np.uint8),
              "boxes": np.zeros((MAX_BOXES, 4), np.float32), "box_valid": np.zeros((MAX_BOXES,), np.float32)}
    return example, padding

  def evaluate(self, state, split, *, num_visualizations=0, progress=True) -> eval_loop.EvalResult:
    del num_visualizations
    from segjax import forward  # pylint: disable=import-outside-toplevel
    from segjax.data import datasets  # pylint: disable=import-outside-toplevel

    exp = self.exp
    source = datasets.data_source(exp.config.dataset, split)
    size = pipeline.eval_size(source, exp.config.dataset.eval_size, 1)
    example, padding = self._example(size)
    variables = forward.variables(state.params, state.batch_stats)
    rows = pipeline.GlobalBatches.rows(exp.mesh, exp.config.eval_batch_size)
    totals = {"hit": 0, "boxes": 0, "inter": 0, "union": 0, "images": 0}

    def collect(b, local, probs):
      del b
      probs = pipeline.local_rows(probs, rows)
      for i, index in enumerate(local["index"]):
        if index < 0:
          continue
        fg = probs[i] > 0.5
        truth = host_rasterise(local["boxes"][i], local["box_valid"][i], fg.shape)
        for box, ok in zip(local["boxes"][i], local["box_valid"][i]):
          if ok:
            cy, cx = int((box[0] + box[2] - 1) // 2), int((box[1] + box[3] - 1) // 2)
            totals["hit"] += int(fg[cy, cx])
            totals["boxes"] += 1
        totals["inter"] += int((fg & truth).sum())
        totals["union"] += int((fg | truth).sum())
        totals["images"] += 1

    eval_loop.run_batches(exp, source, example=example, padding=padding, batch_size=exp.config.eval_batch_size,
                          step=lambda batch: self.step(variables, batch), collect=collect,
                          specs=exp.task.batch_specs(exp), desc=f"eval {split}", progress=progress)
    scalars = {"centre_recall": totals["hit"] / max(totals["boxes"], 1),
               "foreground_iou": totals["inter"] / max(totals["union"], 1)}
    return eval_loop.EvalResult(scalars=scalars, details=totals,
                                headline=f"centre recall {scalars['centre_recall']:.4f} over {totals['images']} images")


def host_rasterise(boxes: np.ndarray, valid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """`rasterise` of one image in numpy, by a loop over the boxes (the independent reference)."""
  out = np.zeros(shape, bool)
  for box, ok in zip(boxes, valid):
    if ok:
      y0, x0, y1, x1 = (int(v) for v in box)
      out[y0:y1, x0:x1] = True
  return out
