"""predict.py for an instance recipe (config.task="instance"): detections and masks of image files.

Per input image `x.jpg` it writes
  x.png            the instance-id map (0 background, i = the i-th detection by score above
                   config.instance.score_threshold; 8-bit, 16-bit past 255 instances);
  x_overlay.png    the image with each instance's mask tinted and outlined, its box and "class score";
and for the whole run
  detections.json  every detection (all scores) in COCO's results format (bbox [x, y, w, h], score, category_id,
                   RLE segmentation), image_id = the input's position in the sorted input list;
  instances.json   per image: file name, image id, size and what each id of its PNG is (class, score, box).
Each image runs at its own size, padded to a multiple of 32 (one compilation per distinct padded size); the
model's 28x28 masks are pasted into the image at its true size as torchvision pastes them.
"""

from __future__ import annotations

import json
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
from segjax.apps import predict
from segjax.evaluation import coco, instance_viz
from segjax.evaluation import instance as instance_eval

RUN_FILES = ("detections.json", "instances.json")


def padded_size(n: int) -> int:
  """The side an image side of `n` pixels is zero-padded to: a multiple of 32 (the FPN's coarsest level needs
  them), at least 64."""
  return max(64, -(-n // 32) * 32)


def _box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """Faster R-CNN has no masks: each box's pixels stand in for its mask in the id map and overlay."""
  out = np.zeros((len(boxes), height, width), np.uint8)
  for i, box in enumerate(boxes):
    found = instance_viz.box_pixels(box, height, width)
    if found is not None:
      left, top, right, bottom = found
      out[i, top:bottom + 1, left:right + 1] = 1
  return out


def run(config: ml_collections.ConfigDict, workdir: str, inputs: str, output: str, *, members: Sequence = (),
        checkpoint_step: int | None = None, probabilities: bool = False, max_pixels: int = 2**28,
        overwrite: bool = False, progress: bool = True) -> list[tuple[pathlib.Path, str]]:
  """What predict.py does for an instance recipe (arguments as segjax.apps.predict.run). Returns the (file,
  reason) of every image that failed.

  Nothing is written before every output path is known to be safe (`predict.plan_outputs`, plus the two run
  files): inputs are never overwritten and existing outputs are replaced only with `overwrite`.

  Raises:
    ValueError: --member or --probabilities (semantic options), an unsafe --output, a bad recipe.
  """
  if members:
    raise ValueError("--member: ensembles average semantic probabilities; instance recipes predict with one "
                     "checkpoint. Drop --member.")
  if probabilities:
    raise ValueError("--probabilities writes per-class score maps of semantic recipes; instance recipes write "
                     "detections.json with every score. Drop --probabilities.")
  Image.MAX_IMAGE_PIXELS = max_pixels
  warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # up to max_pixels is what was asked for
  files = predict.list_inputs(inputs)
  out_dir = predict.check_output_dir(inputs, output)  # not a file, not the --input folder
  plan = predict.plan_outputs(files, out_dir, overwrite=overwrite)
  run_files = [out_dir / name for name in RUN_FILES]
  if not overwrite and any(p.exists() for p in run_files):
    raise ValueError(f"{', '.join(str(p) for p in run_files if p.exists())} exist already: pass --overwrite to "
                     "replace them, or give another --output directory.")
  config = ml_collections.ConfigDict(config.to_dict())  # inference on one device of this process
  config.mesh.data, config.mesh.spatial, config.mesh.model = -1, 1, 1
  exp, state, _ = experiment.restore(config, workdir, checkpoint_step, "predict with", jax.local_devices()[:1])
  variables = forward_lib.variables(state.eval_params, state.batch_stats)
  names = exp.task.object_class_names(exp.spec)
  category_ids = instance_eval._category_ids(exp.spec)  # pylint: disable=protected-access
  threshold = float(config.instance.score_threshold)
  detect = jax.jit(lambda v, images, sizes: instance_eval.detect(exp, v, images, sizes))
  out_dir.mkdir(parents=True, exist_ok=True)
  results, images, failed = [], [], []
  for image_id, path in enumerate(tqdm.tqdm(files, desc="predict", disable=not progress)):
    outs = plan[path]
    try:
      image = predict.read_image(path, 3)
    except ValueError as e:
      tqdm.tqdm.write(f"skipped: {e}", file=sys.stderr)
      failed.append((path, str(e)))
      continue
    h, w = image.shape[:2]
    padded = np.zeros((padded_size(h), padded_size(w), 3), np.uint8)
    padded[:h, :w] = image
    dets = jax.tree.map(lambda a: np.asarray(a)[0],
                        detect(variables, jnp.asarray(padded[None]), jnp.asarray([[h, w]], jnp.int32)))
    if "masks" in dets:
      masks = coco.paste_masks(dets["masks"], dets["boxes"], (h, w))
    else:
      masks = _box_masks(dets["boxes"], h, w)
    ids, entries = instance_viz.instance_ids(masks, dets["scores"], dets["classes"], boxes=dets["boxes"],
                                             valid=dets["valid"], class_names=names, score_threshold=threshold)
    try:
      with predict._open_output(outs["labels"], overwrite) as f:  # pylint: disable=protected-access
        instance_viz.save_ids(f, ids)
      with predict._open_output(outs["overlay"], overwrite) as f:  # pylint: disable=protected-access
        instance_viz.save_overlay(f, image, dets["boxes"], dets["scores"], dets["classes"], names, masks=masks,
                                  valid=dets["valid"], score_threshold=threshold)
    except FileExistsError as e:
      message = f"{e.filename} appeared while predict ran: not replaced (pass --overwrite to replace it)"
      tqdm.tqdm.write(f"skipped: {path}: {message}", file=sys.stderr)
      failed.append((path, message))
      continue
    results += coco.coco_results(image_id, dets["boxes"], dets["scores"], dets["classes"], valid=dets["valid"],
                                 masks=masks if "masks" in dets else None, category_ids=category_ids)
    images.append({"id": image_id, "file_name": str(path), "height": h, "width": w,
                   "instances": [_jsonable(e) for e in entries]})
  # Created exclusively unless overwrite, as the per-image files: one that appeared during the run is not replaced.
  with predict._open_output(out_dir / "detections.json", overwrite) as f:  # pylint: disable=protected-access
    f.write((json.dumps(results) + "\n").encode())
  with predict._open_output(out_dir / "instances.json", overwrite) as f:  # pylint: disable=protected-access
    f.write(json.dumps({"images": images, "class_names": list(names)}, indent=1).encode())
  print(f"Wrote {len(images)} of {len(files)} images to {out_dir} ({len(results)} detections in "
        f"{out_dir / 'detections.json'})" + (f"; {len(failed)} failed: " + ", ".join(str(p) for p, _ in failed)
                                             if failed else ""))
  return failed


def _jsonable(entry: dict) -> dict:
  return {k: (np.asarray(v).tolist() if isinstance(v, (np.ndarray, np.generic)) else v) for k, v in entry.items()}
