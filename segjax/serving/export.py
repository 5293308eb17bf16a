"""Exports a trained checkpoint as serialized StableHLO (jax.export) that `segjax.serving` runs without segjax.

python export.py --config=configs/quickstart.py --workdir=runs/quickstart --out=exported/quickstart

writes OUT/model.jaxexport (the serialized `jax.export.Exported`) and OUT/model.json (format version, classes,
palette, input channels and size rules, recipe, versions, platforms). The exported function takes uint8 images
[B, H, W, C] and returns {"labels": int32 [B, H, W], "probs": float32 [B, H, W, K]}: the recipe's normalisation and
the model's padding (segjax.forward) are inside it, and the parameters are baked in as constants, so the file is
about as large as the float parameters (4 bytes each in float32). docs/export.md has the details.
"""

from __future__ import annotations

import importlib.metadata
import json
import pathlib
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import experiment, models
from segjax import forward as forward_lib
from segjax.data import datasets
from segjax.ops import conv as conv_lib
from segjax.serving import serving

OUTPUTS = ("labels", "probs", "logits")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def inference_function(model: flax.linen.Module, variables: dict[str, Any], *, mean: Sequence[float],
                       std: Sequence[float], normalization: str = "mean_std",
                       outputs: Sequence[str] = ("labels", "probs")) -> Callable[[jax.Array], dict[str, jax.Array]]:
  """images uint8 [B, H, W, C] -> {"labels": int32 [B, H, W], "probs": float32 [B, H, W, K], "logits": ...}.

  The forward pass of training and evaluation (segjax.forward: normalisation, and the padding the model needs)
  with `variables` ({"params", "batch_stats"}) closed over, so exporting bakes them in as constants.
  """
  fwd = forward_lib.Forward(model, mean, std, normalization)

  def predict(images: jax.Array) -> dict[str, jax.Array]:
    with conv_lib.backend("xla"):  # the oneDNN custom call is CPU-only and not serializable
      logits = fwd(variables, images)
    out = {"labels": jnp.argmax(logits, axis=-1).astype(jnp.int32),
           "probs": jax.nn.softmax(logits.astype(jnp.float32), axis=-1),
           "logits": logits.astype(jnp.float32)}
    return {k: out[k] for k in outputs}

  return predict


def size_rules(model: flax.linen.Module, height: int | None, width: int | None) -> dict[str, dict[str, int]]:
  """What image heights and widths the export takes: {"height": rule, "width": rule}, each rule {"fixed": n} or
  {"multiple_of": d, "min": m} (a symbolic side).

  Raises:
    ValueError: a valid-convolution net without fixed sizes, or a fixed size the model cannot take.
  """
  rules = {}
  for name, side in (("height", height), ("width", width)):
    if side is None:
      if models.is_valid_conv(model):
        raise ValueError(
            f"{type(model).__name__} is a valid-convolution net: its padding (input_size_for) is computed in Python "
            f"from the image size, so it exports for one fixed size only. Pass --{name} (and the other side), "
            "e.g. the size of the images you will segment.")
      rules[name] = {"multiple_of": models.size_divisor(model), "min": models.init_size(model)}
      continue
    if side < 1:
      raise ValueError(f"--{name}={side}: give a positive number of pixels.")
    if not models.is_valid_conv(model):
      d, low = models.size_divisor(model), models.init_size(model)
      if side % d or side < low:
        up = max(-(-side // d) * d, low)
        raise ValueError(f"--{name}={side}: {type(model).__name__} takes sides that are multiples of {d} and at "
                         f"least {low}; use --{name}={up} (and pad the images), or leave --{name} out for any "
                         "valid size.")
    rules[name] = {"fixed": int(side)}
  return rules


def input_spec(rules: dict[str, dict[str, int]], channels: int, batch: str | int) -> jax.ShapeDtypeStruct:
  """The uint8 [B, H, W, C] argument spec for jax.export: symbolic where `batch` is a name or a side's rule is not
  fixed (side = multiple_of * variable, so divisibility holds by construction)."""
  if isinstance(batch, str) and batch.isdigit():
    batch = int(batch)
  names = {"height": "h", "width": "w"}
  if isinstance(batch, str) and (not batch.isidentifier() or batch in names.values()):
    raise ValueError(f"batch={batch!r}: give an integer (fixed batch) or a dimension name other than 'h' and 'w' "
                     "(symbolic batch, e.g. 'b').")
  dims = [str(batch)]
  for side in ("height", "width"):
    rule = rules[side]
    d = rule.get("multiple_of")
    dims.append(str(rule["fixed"]) if "fixed" in rule else f"{d}*{names[side]}" if d > 1 else names[side])
  shape = jax.export.symbolic_shape(", ".join(dims + [str(channels)]), constraints=_constraints(rules))
  return jax.ShapeDtypeStruct(shape, jnp.uint8)


def _constraints(rules: dict[str, dict[str, int]]) -> list[str]:
  """Lower bounds of the symbolic sides' variables (side = multiple_of * variable; variables are >= 1 anyway)."""
  out = []
  for side, v in (("height", "h"), ("width", "w")):
    rule = rules[side]
    low = -(-rule["min"] // rule["multiple_of"]) if "fixed" not in rule else 1
    if low > 1:
      out.append(f"{v} >= {low}")
  return out


def _segjax_version() -> str:
  try:
    return importlib.metadata.version("segjax")
  except importlib.metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
    import tomllib  # pylint: disable=import-outside-toplevel
    pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
      return tomllib.loads(pyproject.read_text())["project"]["version"] + "+checkout"
    except (OSError, KeyError, tomllib.TOMLDecodeError):
      return "unknown"


def _check_choices(name: str, values: Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
  values = tuple(values)
  bad = [v for v in values if v not in allowed]
  if bad or not values or len(set(values)) != len(values):
    raise ValueError(f"{name}={list(values)}: give one or more distinct values of {list(allowed)} (bad: {bad}).")
  return values


def export_model(model: flax.linen.Module, variables: dict[str, Any], spec: datasets.DatasetSpec,
                 out_dir: str | pathlib.Path, *, mean: Sequence[float] = (127.5,), std: Sequence[float] = (127.5,),
                 normalization: str = "mean_std", batch: str | int = "b", height: int | None = None,
                 width: int | None = None, outputs: Sequence[str] = ("labels", "probs"),
                 platforms: Sequence[str] = ("cpu",), recipe: dict[str, Any] | None = None) -> pathlib.Path:
  """Exports `model` with `variables` (host or device arrays) to out_dir/model.jaxexport + model.json.

  `export_checkpoint` is this for a checkpoint; this form serves models that are in memory.

  Returns:
    `out_dir` as a Path.

  Raises:
    ValueError: bad outputs/platforms/batch/sizes, or a model that cannot be exported with symbolic sizes
      (naming the fix: fixed --height/--width).
  """
  outputs = _check_choices("outputs", outputs, OUTPUTS)
  platforms = _check_choices("platforms", platforms, PLATFORMS)
  variables = jax.device_get(dict(variables))  # host arrays: baked in as constants, no device placement
  rules = size_rules(model, height, width)
  arg = input_spec(rules, spec.num_channels, batch)
  fn = inference_function(model, variables, mean=mean, std=std, normalization=normalization, outputs=outputs)
  try:
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(arg)
  except Exception as e:  # pylint: disable=broad-except  (shape polymorphism fails with several types)
    symbolic = [side for side, rule in rules.items() if "fixed" not in rule]
    symbolic_batch = not isinstance(arg.shape[0], int)
    if not symbolic and not symbolic_batch:
      raise
    first = str(e).strip().splitlines()[0][:400] if str(e).strip() else ""
    d, low = models.size_divisor(model), models.init_size(model)
    example = max(low, -(-64 // d) * d)
    fixes = []
    if symbolic:
      fixes.append(f"fixed sizes: --height and --width (multiples of {d}, at least {low}; e.g. --height={example} "
                   f"--width={example})")
    if symbolic_batch:
      fixes.append("a fixed batch (--batch=1) if fixed sizes alone do not do")
    dims = ", ".join((["batch"] if symbolic_batch else []) + symbolic)
    raise ValueError(
        f"{type(model).__name__} cannot be exported with a symbolic {dims} ({type(e).__name__}: {first}). "
        f"Export {'; or '.join(fixes)}. docs/export.md lists which models take symbolic sizes.") from e
  blob = exported.serialize()
  leaves = jax.tree.leaves(variables)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  exported_file = out_dir / serving.EXPORTED_FILE
  exported_file.write_bytes(blob)
  meta = {
      "format": serving.FORMAT,
      "format_version": serving.FORMAT_VERSION,
      "files": {"exported": serving.EXPORTED_FILE},
      "class_names": list(spec.class_names),
      "palette": [list(map(int, c)) for c in spec.palette],
      "ignore_label": spec.ignore_label,
      "input": {"dtype": "uint8", "layout": "NHWC", "channels": spec.num_channels,
                "shape": [str(d) for d in arg.shape],
                "batch": batch if isinstance(batch, int) else (int(batch) if batch.isdigit() else "any"), **rules},
      "outputs": {k: {"dtype": str(a.dtype), "shape": [str(d) for d in a.shape]}
                  for k, a in jax.tree.unflatten(exported.out_tree, exported.out_avals).items()},
      "normalization": {"method": normalization, "mean": list(mean), "std": list(std), "baked_in": True},
      "recipe": recipe or {"name": None, "model": {"name": type(model).__name__}, "dataset": spec.name},
      "parameters": {"baked_in_as_constants": True, "count": int(sum(np.size(x) for x in leaves)),
                     "bytes": int(sum(np.asarray(x).nbytes for x in leaves))},
      "exported_bytes": len(blob),
      "platforms": list(exported.platforms),
      "calling_convention_version": exported.calling_convention_version,
      "segjax_version": _segjax_version(),
      "jax_version": jax.__version__,
  }
  # model.json last, and by rename: a loader that finds it finds a complete model.jaxexport beside it.
  tmp = out_dir / (serving.META_FILE + ".tmp")
  tmp.write_text(json.dumps(meta, indent=2) + "\n")
  tmp.replace(out_dir / serving.META_FILE)
  return out_dir


def restore(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
            step: int | None = None) -> tuple[experiment.Experiment, dict[str, Any], int]:
  """Restores checkpoint `step` (default the latest) of `workdir` as eval.py does.

  Returns:
    (the Experiment, host variables {"params", "batch_stats"}, the step).
  """
  exp, state, step = experiment.restore(config, workdir, step, purpose="export")
  variables = {"params": jax.device_get(state.eval_params), "batch_stats": jax.device_get(state.batch_stats)}
  return exp, variables, step


def _recipe(config: ml_collections.ConfigDict, recipe: str | None, workdir, step: int) -> dict[str, Any]:
  return json.loads(json.dumps({"name": recipe, "model": config.model.to_dict(), "dataset": config.dataset.name,
                                "workdir": str(pathlib.Path(workdir).absolute()), "checkpoint_step": step},
                               default=str))


def export_checkpoint(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, out_dir: str | pathlib.Path,
                      *, step: int | None = None, batch: str | int = "b", height: int | None = None,
                      width: int | None = None, outputs: Sequence[str] = ("labels", "probs"),
                      platforms: Sequence[str] = ("cpu",), recipe: str | None = None) -> pathlib.Path:
  """Restores a checkpoint of `workdir` and exports it to out_dir/model.jaxexport + out_dir/model.json.

  Args:
    config: the recipe it was trained with.
    workdir: the training directory (holding checkpoints/).
    out_dir: where to write (created).
    step: checkpoint step (default the latest).
    batch: a dimension name (any batch size) or an integer (that batch only).
    height, width: None: any size the model takes (multiples of its size divisor), traced symbolically; an
      integer: that size only (required for valid-convolution nets).
    outputs: which of "labels", "probs", "logits" the function returns.
    platforms: subset of cpu, cuda, rocm, tpu; the artifact runs on each (exported from any machine).
    recipe: the recipe's file name, recorded in model.json.

  Returns:
    `out_dir` as a Path.
  """
  exp, variables, step = restore(config, workdir, step)
  return export_model(exp.model, variables, exp.spec, out_dir, mean=exp.mean, std=exp.std,
                      normalization=exp.normalization, batch=batch, height=height, width=width, outputs=outputs,
                      platforms=platforms, recipe=_recipe(config, recipe, workdir, step))


def export_saved_model(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, out_dir: str | pathlib.Path,
                       *, step: int | None = None, height: int | None = None, width: int | None = None,
                       outputs: Sequence[str] = ("labels", "probs"), platforms: Sequence[str] = ("cpu",)
                       ) -> pathlib.Path:
  """Writes a TensorFlow SavedModel (via jax2tf, StableHLO inside an XlaCallModule op) of a checkpoint.

  Its "serving_default" signature takes `images` uint8 [B, H, W, C] (B any; H, W as for `export_checkpoint`) and
  returns the chosen outputs. Needs TensorFlow (`pip install 'segjax[tf]'`); the parameters are baked in as
  constants as in the jax.export artifact.

  Raises:
    ImportError: TensorFlow is not installed, naming the extra to install.
  """
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"Exporting a TensorFlow SavedModel needs TensorFlow: pip install 'segjax[tf]' ({e}). The "
                      "jax.export artifact (export_checkpoint) needs no TensorFlow.") from e
  outputs = _check_choices("outputs", outputs, OUTPUTS)
  exp, variables, step = restore(config, workdir, step)
  rules = size_rules(exp.model, height, width)
  arg = input_spec(rules, exp.spec.num_channels, "b")
  fn = inference_function(exp.model, variables, mean=exp.mean, std=exp.std, normalization=exp.normalization,
                          outputs=outputs)
  tf_fn = jax2tf.convert(fn, polymorphic_shapes=["(" + ", ".join(str(d) for d in arg.shape) + ")"],
                         polymorphic_constraints=_constraints(rules), with_gradient=False,
                         native_serialization_platforms=tuple(platforms))
  signature = [tf.TensorSpec([None] + [r.get("fixed") for r in (rules["height"], rules["width"])]
                             + [exp.spec.num_channels], tf.uint8, name="images")]
  module = tf.Module()
  module.serve = tf.function(tf_fn, input_signature=signature, autograph=False)
  out_dir = pathlib.Path(out_dir)
  tf.saved_model.save(module, str(out_dir), signatures={"serving_default": module.serve})
  return out_dir
