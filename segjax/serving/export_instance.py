"""Exports an instance checkpoint (Mask R-CNN / Faster R-CNN) as serialized StableHLO (jax.export).

The exported function takes uint8 images [B, H, W, 3] at one fixed size (H, W multiples of 32: the recipe's eval
size unless --height/--width say otherwise; smaller images are zero-padded bottom/right by the caller, which
passes their true sizes) and image_sizes int32 [B, 2] (height, width before padding), and returns the model's
fixed-count detections: boxes float32 [B, D, 4] (x1, y1, x2, y2 pixels), scores [B, D], classes int32 [B, D]
(1..K), valid bool [B, D] and, with the mask head, masks float32 [B, D, 28, 28] (box-relative probabilities, to
paste into the image as torchvision's paste_masks_in_image does: segjax.evaluation.coco.paste_masks, threshold
0.5). `segjax.serving.load` returns an ExportedDetector for it. D is the recipe's detections_per_img: the
proposal and detection counts are static, so the artifact has no data-dependent shapes. The normalisation is
inside and the parameters are baked in as constants, as for semantic exports (docs/export.md).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import experiment
from segjax import forward as forward_lib
from segjax.ops import conv as conv_lib
from segjax.serving import export as export_lib
from segjax.serving import serving


def detection_function(exp: experiment.Experiment, variables: dict[str, Any]):
  """(images uint8 [B, H, W, 3], image_sizes int32 [B, 2]) -> the model's detections, `variables` closed over."""

  def detect(images: jax.Array, image_sizes: jax.Array) -> dict[str, jax.Array]:
    with conv_lib.backend("xla"):  # the oneDNN custom call is CPU-only and not serializable
      x = exp.forward.normalize(images)
      return exp.forward.model.apply(variables, x, train=False, image_sizes=image_sizes)
  return detect


def export_checkpoint(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, out_dir: str | pathlib.Path,
                      *, step: int | None = None, batch: str | int = 1, height: int | None = None,
                      width: int | None = None, platforms: Sequence[str] = ("cpu",),
                      recipe: str | None = None) -> pathlib.Path:
  """Restores checkpoint `step` (default the latest) of `workdir` and writes out_dir/model.jaxexport + model.json.

  Raises:
    ValueError: a size that is not a positive multiple of 32, unknown platforms, or a batch that cannot be
      symbolic (naming the fix).
  """
  platforms = export_lib._check_choices("platforms", platforms, export_lib.PLATFORMS)  # pylint: disable=protected-access
  exp, state, step = experiment.restore(config, workdir, step, purpose="export")
  default = exp.task.eval_size(exp)
  size = (int(height or default[0]), int(width or default[1]))
  if any(s <= 0 or s % 32 for s in size):
    raise ValueError(f"--height/--width {size}: give positive multiples of 32 (the FPN's coarsest stride).")
  variables = jax.device_get(forward_lib.variables(state.eval_params, state.batch_stats))
  b = batch if isinstance(batch, int) else (int(batch) if str(batch).isdigit() else jax.export.symbolic_shape(batch)[0])
  args = (jax.ShapeDtypeStruct((b, *size, 3), jnp.uint8), jax.ShapeDtypeStruct((b, 2), jnp.int32))
  try:
    exported = jax.export.export(jax.jit(detection_function(exp, variables)), platforms=platforms)(*args)
  except Exception as e:  # pylint: disable=broad-except  (shape polymorphism fails with several types)
    if isinstance(b, int):
      raise
    raise ValueError(f"{type(exp.model).__name__} could not be exported with a symbolic batch ({type(e).__name__}: "
                     f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}): export a fixed batch "
                     "(--batch=1).") from e
  blob = exported.serialize()
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / serving.EXPORTED_FILE).write_bytes(blob)
  leaves = jax.tree.leaves(variables)
  spec = exp.spec
  meta = {
      "format": serving.FORMAT,
      "format_version": serving.FORMAT_VERSION,
      "task": "instance",
      "files": {"exported": serving.EXPORTED_FILE},
      "class_names": list(spec.class_names[1:]),
      "category_ids": list(spec.category_ids[1:]) if getattr(spec, "category_ids", None) else None,
      "palette": [list(map(int, c)) for c in spec.palette],
      "input": {"dtype": "uint8", "layout": "NHWC", "channels": 3, "shape": [str(d) for d in args[0].shape],
                "batch": b if isinstance(b, int) else "any", "height": {"fixed": size[0]},
                "width": {"fixed": size[1]}, "image_sizes": "int32 [B, 2]: (height, width) before padding"},
      "outputs": {k: {"dtype": str(a.dtype), "shape": [str(d) for d in a.shape]}
                  for k, a in jax.tree.unflatten(exported.out_tree, exported.out_avals).items()},
      "normalization": {"method": exp.normalization, "mean": list(exp.mean), "std": list(exp.std), "baked_in": True},
      "recipe": json.loads(json.dumps({"name": recipe, "model": config.model.to_dict(), "dataset": spec.name,
                                       "workdir": str(pathlib.Path(workdir).absolute()), "checkpoint_step": step},
                                      default=str)),
      "parameters": {"baked_in_as_constants": True, "count": int(sum(np.size(x) for x in leaves)),
                     "bytes": int(sum(np.asarray(x).nbytes for x in leaves))},
      "exported_bytes": len(blob),
      "platforms": list(exported.platforms),
      "calling_convention_version": exported.calling_convention_version,
      "segjax_version": export_lib._segjax_version(),  # pylint: disable=protected-access
      "jax_version": jax.__version__,
  }
  tmp = out_dir / (serving.META_FILE + ".tmp")  # model.json last, by rename: a loader finds both or neither
  tmp.write_text(json.dumps(meta, indent=2) + "\n")
  tmp.replace(out_dir / serving.META_FILE)
  return out_dir
