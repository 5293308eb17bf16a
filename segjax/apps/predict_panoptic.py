"""predict.py for a panoptic recipe (config.task="panoptic"): a panoptic segmentation of each image file.

Per input image `x.jpg` it writes
  panoptic/x.png   the segment-id map in COCO panoptic's RGB encoding (id = R + 256 G + 256^2 B, 0 void), as
                   panopticapi's pq_compute and the COCO evaluation server read it (segjax.evaluation.panoptic_io);
  overlays/x.png   the image with stuff tinted by category and each thing by a colour of its own, outlined and
                   named (segjax.evaluation.panoptic_viz.overlay);
and for the whole run
  predictions.json COCO panoptic's result JSON: per image its segments_info (id, category_id in the dataset's ids,
                   area, bbox, score for things), the dataset's categories, and an "images" list (id = the input's
                   position in the sorted input list, file name, height, width).
Two panoptic/ and overlays/ folders rather than predict.py's `x.png` / `x_overlay.png` side by side: COCO's tools
take a folder holding only the panoptic PNGs, named as predictions.json lists them.

As instance predict (segjax.apps.predict_instance), each image runs at its own size, never resized, padded to a
multiple of 32 (one compilation per distinct padded size); the masks are pasted and fused with the semantic argmax
at the image's size by the evaluation's own `segjax.evaluation.panoptic.predict_image`, so predict and eval.py fuse
alike. Inputs sharing a stem (x.png, x.jpg) are named by their whole file name (panoptic/x.png.png, ...), as in
segjax.apps.predict.plan_outputs.
"""

from __future__ import annotations

import errno
import os
import pathlib
import sys
import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from PIL import Image

from segjax import experiment
from segjax import forward as forward_lib
from segjax.apps import predict, predict_instance
from segjax.evaluation import panoptic as panoptic_eval
from segjax.evaluation import instance as instance_eval
from segjax.evaluation import panoptic_io, panoptic_viz

PANOPTIC_DIR, OVERLAY_DIR, JSON_NAME = "panoptic", "overlays", "predictions.json"


def plan_outputs(files: Sequence[pathlib.Path], out_dir: pathlib.Path, *,
                 overwrite: bool = False) -> dict[pathlib.Path, dict[str, pathlib.Path | str]]:
  """input file -> {"stem": the output name without ".png", "panoptic", "overlay": output path}, checked before
  anything is written (predict.plan_outputs' rules for this layout).

  Raises:
    ValueError: an output would be one of the input files (whatever `overwrite` says), or outputs (the run's JSON
      included) exist already and `overwrite` is off; naming the files and the fix.
  """
  counts: dict[str, int] = {}
  for path in files:
    counts[path.stem] = counts.get(path.stem, 0) + 1
  plan = {}
  for path in files:
    stem = path.stem if counts[path.stem] == 1 else path.name  # x.png and x.jpg must not share panoptic/x.png
    plan[path] = {"stem": stem, "panoptic": out_dir / PANOPTIC_DIR / f"{stem}.png",
                  "overlay": out_dir / OVERLAY_DIR / f"{stem}.png"}
  inputs = {os.path.normcase(os.path.abspath(p)): p for p in files}
  inodes = {predict._inode(p): p for p in files}  # pylint: disable=protected-access
  inodes.pop(None, None)
  for source, outs in plan.items():
    for out in (outs["panoptic"], outs["overlay"]):
      # By name, or by inode (an existing output that links to an input): e.g. --input=OUT/panoptic.
      inode = predict._inode(out)  # pylint: disable=protected-access
      clash = inputs.get(os.path.normcase(os.path.abspath(out))) or inodes.get(inode)
      if clash is not None:
        raise ValueError(f"predict would write {out} (for {source}) over the input image {clash}: give an --output "
                         f"directory apart from the inputs. Inputs are never overwritten, --overwrite included.")
  if not overwrite:
    outputs = [o for outs in plan.values() for o in (outs["panoptic"], outs["overlay"])] + [out_dir / JSON_NAME]
    existing = [o for o in outputs if o.exists() or o.is_symlink()]
    if existing:
      shown = ", ".join(str(p) for p in existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5
                                                          else "")
      raise ValueError(f"{len(existing)} output file{'s' * (len(existing) != 1)} exist already in {out_dir} "
                       f"({shown}): pass --overwrite to replace them, or give another --output directory.")
  return plan


def run(config: ml_collections.ConfigDict, workdir: str, inputs: str, output: str, *, members: Sequence = (),
        checkpoint_step: int | None = None, probabilities: bool = False, max_pixels: int = 2**28,
        overwrite: bool = False, progress: bool = True) -> list[tuple[pathlib.Path, str]]:
  """What predict.py does for a panoptic recipe (arguments as segjax.apps.predict.run). Returns the (file, reason)
  of every image that failed (skipped; the others are written and listed in predictions.json).

  Nothing is written before every output path is known to be safe (`plan_outputs`): inputs are never overwritten
  and existing outputs are replaced only with `overwrite`.

  Raises:
    ValueError: --member or --probabilities (semantic options), a recipe of another task, an unsafe --output, a
      bad recipe, or a predictions.json that appeared while predict ran (without `overwrite`).
    FileNotFoundError: a missing --input, or a workdir without checkpoints.
  """
  if config.task != "panoptic":
    raise ValueError(f"predict_panoptic.run predicts with a panoptic recipe; this one has task={config.task!r} "
                     "(predict.py picks the right one by config.task).")
  if members:
    raise ValueError("--member: ensembles average semantic probabilities; panoptic recipes predict with one "
                     "checkpoint. Drop --member.")
  if probabilities:
    raise ValueError("--probabilities writes per-class score maps of semantic recipes; panoptic recipes write "
                     "segment maps and predictions.json (with each thing's score). Drop --probabilities.")
  Image.MAX_IMAGE_PIXELS = max_pixels
  warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # up to max_pixels is what was asked for
  files = predict.list_inputs(inputs)
  out_dir = predict.check_output_dir(inputs, output)  # not a file, not the --input folder
  plan = plan_outputs(files, out_dir, overwrite=overwrite)
  config = ml_collections.ConfigDict(config.to_dict())  # inference on one device of this process
  config.mesh.data, config.mesh.spatial, config.mesh.model = -1, 1, 1
  exp, state, _ = experiment.restore(config, workdir, checkpoint_step, "predict with", jax.local_devices()[:1])
  variables = forward_lib.variables(state.eval_params, state.batch_stats)
  spec = exp.spec
  fusion = panoptic_eval.fusion_config(config)
  names = {c.id: c.name for c in spec.categories}
  colours = spec.category_colours

  def infer(v, images, sizes):
    # The evaluation's step (segjax.evaluation.panoptic.Evaluator) without the batch bookkeeping: the argmax on
    # device, so only an int map, not S + 1 float maps, comes back.
    out = instance_eval.detect(exp, v, images, sizes)
    return out, jnp.argmax(out.pop("sem_seg"), axis=-1).astype(jnp.int32)

  infer = jax.jit(infer)
  out_dir.mkdir(parents=True, exist_ok=True)
  annotations, images, failed = [], [], []
  for image_id, path in enumerate(tqdm.tqdm(files, desc="predict", disable=not progress)):
    outs = plan[path]
    try:
      image = predict.read_image(path, 3)
    except ValueError as e:
      tqdm.tqdm.write(f"skipped: {e}", file=sys.stderr)  # above the progress bar, not through it
      failed.append((path, str(e)))
      continue
    h, w = image.shape[:2]
    padded = np.zeros((predict_instance.padded_size(h), predict_instance.padded_size(w), 3), np.uint8)
    padded[:h, :w] = image
    dets, semantic = jax.tree.map(lambda a: np.asarray(a)[0],
                                  infer(variables, jnp.asarray(padded[None]), jnp.asarray([[h, w]], jnp.int32)))
    pan, segments = panoptic_eval.predict_image(spec, dets, semantic, (h, w), (1.0, 1.0), (h, w), fusion)
    try:
      # write_prediction replaces atomically; a panoptic PNG that appeared since the plan is refused here instead.
      if not overwrite and (outs["panoptic"].exists() or outs["panoptic"].is_symlink()):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(outs["panoptic"]))
      outs["overlay"].parent.mkdir(parents=True, exist_ok=True)
      with predict._open_output(outs["overlay"], overwrite) as f:  # pylint: disable=protected-access
        Image.fromarray(panoptic_viz.overlay(image, pan, segments, colours, alpha=0.5, names=names)).save(
            f, format="PNG")
    except FileExistsError as e:
      message = f"{e.filename} appeared while predict ran: not replaced (pass --overwrite to replace it)"
      tqdm.tqdm.write(f"skipped: {path}: {message}", file=sys.stderr)
      failed.append((path, message))
      continue
    annotations.append(panoptic_io.write_prediction(out_dir / PANOPTIC_DIR, outs["stem"], image_id, pan, segments))
    images.append({"id": image_id, "file_name": path.name, "height": h, "width": w})
  categories = [{"id": c.id, "name": c.name, "isthing": c.isthing} for c in spec.categories]
  try:
    panoptic_io.write_json(out_dir / JSON_NAME, annotations, categories, images, overwrite=overwrite)
  except FileExistsError as e:
    raise ValueError(f"{out_dir / JSON_NAME} appeared while predict ran: not replaced; the images' PNGs are in "
                     f"{out_dir}. Pass --overwrite to replace it.") from e
  num_segments = sum(len(a["segments_info"]) for a in annotations)
  print(f"Wrote {len(images)} of {len(files)} images to {out_dir} ({num_segments} segments in "
        f"{out_dir / JSON_NAME})" + (f"; {len(failed)} failed: " + ", ".join(str(p) for p, _ in failed)
                                     if failed else ""))
  return failed
