"""Look at a dataset before training: a grid of augmented training examples with their masks overlaid.

    python -m segjax.browse --config=configs/folder.py --config.dataset.folder.images_dir=... [--num=16]
        [--out=browse.png] [--start_step=0] [--columns=4] [--max_side=192]

The examples are exactly what the first training steps of the recipe see: the task's host transform (random
resize and crop, `exp.task.train_transform`) through `pipeline.train_dataset`, then the task's device augmentation
with each step's augmentation key, as segjax.training.steps derives it. Each cell shows the augmented image and
the same image with the mask overlaid in the dataset's palette; ignored pixels (void, outside a validity mask,
padding, pixels a warp moved in from outside the image) show `viz.unscored_pattern` instead of a class colour. A
legend above the grid names each colour.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segjax import viz
from segjax.data import datasets, pipeline

GAP = viz.SEPARATOR  # white pixels between the two panels of a cell and between cells
SWATCH = 12  # side of a legend colour square


def augmented_examples(exp, num: int, start_step: int = 0) -> list[dict[str, Any]]:
  """The first `num` training examples from step `start_step + 1` on, augmented as the train step does.

  Returns:
    dicts of image uint8 [H, W, C] (the augmented image, rounded and clipped to 0..255), label int32 [H, W],
    weight float32 [H, W], step (1-based training step) and row (position in that step's global batch).
  """
  config, loop = exp.config, exp.settings.loop
  source = datasets.data_source(config.dataset, config.dataset.train_split)
  batches = pipeline.train_dataset(source, exp.task.train_transform(exp), batch_size=loop.batch_size,
                                   seed=loop.seed, name=exp.spec.name)
  augment = jax.jit(lambda key, batch: exp.task.augment(exp, key, batch))
  out = []
  step = start_step
  while len(out) < num:
    batch = batches[step]  # element s holds the batch of step s + 1
    # steps.train_step: the state's step before the update (s) keys the step; its first half keys augmentation.
    augment_key, _ = jax.random.split(jax.random.fold_in(jax.random.key(loop.seed), step))
    augmented = jax.device_get(augment(augment_key, {k: np.asarray(v) for k, v in batch.items()}))
    for row in range(min(loop.batch_size, num - len(out))):
      out.append({"image": np.clip(np.round(augmented["image"][row]), 0, 255).astype(np.uint8),
                  "label": np.asarray(augmented["label"][row], np.int32),
                  "weight": np.asarray(augmented["weight"][row], np.float32), "step": step + 1, "row": row})
    step += 1
  return out


def display_size(height: int, width: int, max_side: int) -> tuple[int, int]:
  """Cell panel size: the longer side brought to at most `max_side`, small crops enlarged by a whole factor."""
  if max(height, width) > max_side:
    return viz.scaled_size(height, width, max_side)
  factor = max(1, max_side // max(height, width))
  return height * factor, width * factor


def cell_panels(example: dict[str, Any], palette: Sequence[Sequence[int]],
                size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """(image, mask overlaid) of one example at `size`, RGB uint8: the mask is resized by nearest pixel, never
  blended between classes; unscored pixels overlay the neutral stripes."""
  image = viz.resize_image(example["image"], size)
  label, weight = (viz.resize_nearest(np.asarray(example[k]), size) for k in ("label", "weight"))
  return image, viz.overlay(image, viz.colorize(label, palette, weight))


def legend(class_names: Sequence[str], palette: Sequence[Sequence[int]], width: int) -> np.ndarray:
  """One or more rows of colour squares and class names ("ignored" with the unscored stripes), `width` wide."""
  entries = [(np.full((SWATCH, SWATCH, 3), c, np.uint8), f"{i} {name}")
             for i, (name, c) in enumerate(zip(class_names, palette))]
  entries.append((viz.unscored_pattern(SWATCH, SWATCH), "ignored"))
  line = max(SWATCH, viz.text_size("Ag")[1]) + GAP
  rows, x, y, placed = 1, GAP, GAP, []
  for swatch, text in entries:
    w = SWATCH + 3 + viz.text_size(text)[0] + 3 * GAP
    if x + w > width and x > GAP:
      rows, x, y = rows + 1, GAP, y + line
    placed.append((x, y, swatch, text))
    x += w
  canvas = Image.new("RGB", (width, rows * line + GAP), (255, 255, 255))
  draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
  for x, y, swatch, text in placed:
    canvas.paste(Image.fromarray(swatch), (x, y))
    # An outline, so that a white or very light class colour still shows on the white page.
    draw.rectangle((x - 1, y - 1, x + SWATCH, y + SWATCH), outline=(96, 96, 96))
    draw.text((x + SWATCH + 3, y), text, fill=(0, 0, 0), font=font)
  return np.asarray(canvas)


def grid(examples: Sequence[dict[str, Any]], class_names: Sequence[str], palette: Sequence[Sequence[int]], *,
         columns: int | None = None, max_side: int = 192) -> tuple[np.ndarray, list[dict[str, tuple]]]:
  """The browse image and where each example's panels lie in it.

  Cells of [image | GAP | overlay] under a caption "step s, #row", `columns` to a row (default ceil(sqrt(n))),
  GAP white pixels apart, below a legend.

  Returns:
    (uint8 [H, W, 3], per example {"image": box, "overlay": box}, box = (top, left, bottom, right)).
  """
  if not examples:
    raise ValueError("browse: no examples to draw (--num must be positive).")
  columns = columns or math.ceil(math.sqrt(len(examples)))
  size = display_size(*np.asarray(examples[0]["label"]).shape, max_side)
  strip = viz.caption_height("step 1, #0")
  cell_h, cell_w = strip + size[0], 2 * size[1] + GAP
  rows = math.ceil(len(examples) / columns)
  width = columns * cell_w + (columns + 1) * GAP
  key = legend(class_names, palette, width)
  top0 = key.shape[0]
  canvas = np.full((top0 + rows * (cell_h + GAP), width, 3), 255, np.uint8)
  canvas[:top0] = key
  boxes = []
  for n, example in enumerate(examples):
    r, c = divmod(n, columns)
    top, left = top0 + r * (cell_h + GAP), GAP + c * (cell_w + GAP)
    image, overlaid = cell_panels(example, palette, size)
    text = f"step {example['step']}, #{example['row']}"
    cell = viz.caption(np.concatenate([image, np.full((size[0], GAP, 3), 255, np.uint8), overlaid], axis=1), text,
                       width=cell_w)[:, :cell_w]
    canvas[top:top + cell.shape[0], left:left + cell_w] = cell
    body = top + cell.shape[0] - size[0]
    boxes.append({"image": (body, left, body + size[0], left + size[1]),
                  "overlay": (body, left + size[1] + GAP, body + size[0], left + cell_w)})
  return canvas, boxes


def browse(config: ml_collections.ConfigDict, out: str | pathlib.Path, *, num: int = 16, start_step: int = 0,
           columns: int | None = None, max_side: int = 192) -> pathlib.Path:
  """Writes the browse grid of `config`'s first `num` augmented training examples to `out` (a PNG)."""
  from segjax import experiment  # pylint: disable=import-outside-toplevel
  if num <= 0 or start_step < 0 or max_side <= 0:
    raise ValueError(f"--num={num}, --start_step={start_step}, --max_side={max_side}: give num > 0, start_step "
                     ">= 0 and max_side > 0.")
  config = config.copy_and_resolve_references()
  # One device: the augmentation keys depend on an example's position in the global batch only, not on the mesh.
  config.mesh.data, config.mesh.spatial, config.mesh.model = -1, 1, 1
  exp = experiment.build(config, devices=jax.local_devices()[:1])
  examples = augmented_examples(exp, num, start_step)
  image, _ = grid(examples, exp.spec.class_names, exp.spec.palette, columns=columns, max_side=max_side)
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image).save(out)
  return out


def _define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "Recipe file in configs/.", lock_config=True)
  flags.DEFINE_integer("num", 16, "Augmented training examples to draw.")
  flags.DEFINE_string("out", "browse.png", "PNG to write.")
  flags.DEFINE_integer("start_step", 0, "Draw the examples of training steps start_step + 1, ...")
  flags.DEFINE_integer("columns", None, "Cells per row (default: about a square grid).")
  flags.DEFINE_integer("max_side", 192, "Longer side of each panel in pixels (small crops are enlarged).")
  flags.mark_flags_as_required(["config"])
  return flags.FLAGS


def main(argv, flags_) -> None:
  from absl import app  # pylint: disable=import-outside-toplevel
  from segjax import cli  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.configure_logging()
  config = flags_.config
  out = browse(config, flags_.out, num=flags_.num, start_step=flags_.start_step, columns=flags_.columns,
               max_side=flags_.max_side)
  print(f"Wrote {out}: {flags_.num} augmented training examples of {config.dataset.name} "
        f"({config.dataset.train_split!r}) from step {flags_.start_step + 1} on, as training sees them; ignored "
        "pixels striped grey.")


def run() -> None:
  """The entry point of `python -m segjax.browse` (and of a `segjax-browse` console script)."""
  from segjax import cli, platform  # pylint: disable=import-outside-toplevel
  flags_ = _define_flags()
  platform.configure_xla_cpu()  # before any JAX computation, as the other CLIs
  cli.run(lambda argv: main(argv, flags_))


if __name__ == "__main__":
  run()
