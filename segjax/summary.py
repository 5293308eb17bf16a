"""Model summary: parameters, forward FLOPs and output shape of a recipe's model (like MMSegmentation's get_flops).

    python -m segjax.summary --config=configs/quickstart.py [--height=H --width=W] [--batch=1]
    python -m segjax.summary --config=configs/quickstart.py --all      # every registry model at one size
    python -m segjax.summary --config=configs/quickstart.py --models=unet,segnet --height=360 --width=480

Two FLOP counts are printed, because toolkits disagree on what a "FLOP" is:
- GFLOPs (XLA): `jax.jit(forward).lower(...).compile().cost_analysis()["flops"]`, XLA's count of the compiled
  forward pass. A multiply-add counts as 2 FLOPs, elementwise work (bias, BatchNorm, ReLU, resizes) counts too,
  and a "SAME" convolution's taps over its zero padding do not (tests/test_summary.py checks both).
- GMACs: multiply-accumulates of the convolutions and matrix products only, counted from the traced program
  (`conv_mac_count`). fvcore and MMSegmentation's get_flops call this number "GFLOPs" (fvcore counts exactly
  this; mmcv's counter adds the small elementwise terms), so compare a get_flops figure with this column.
Both are per image at the given input size (the batch's count divided by the batch), with segjax's XLA
convolution kernels (cost analysis does not see into oneDNN custom calls). Parameters do not depend on the size.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from segjax import models
from segjax.ops import conv as conv_lib


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays (or `jax.ShapeDtypeStruct`s)."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def params_by_submodule(params: Mapping[str, Any]) -> dict[str, int]:
  """{top-level submodule name: its parameter count}, in the parameter tree's order."""
  return {name: count_params(sub) for name, sub in params.items()}


def compiled_flops(compiled: Any) -> float:
  """`flops` of a compiled computation's cost analysis (`jax.stages.Compiled`), NaN when XLA gives none."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", float("nan")))


def _sub_jaxprs(params: Mapping[str, Any]):
  for value in params.values():
    for v in value if isinstance(value, (list, tuple)) else (value,):
      if hasattr(v, "eqns"):
        yield v
      elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
        yield v.jaxpr


def _jaxpr_macs(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
      out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
      # Each output element: one multiply-add per kernel tap and input channel of its group.
      total += math.prod(out.shape) * (math.prod(rhs.shape) // out_features)
    elif name == "dot_general":
      lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
      (contract, _), _ = eqn.params["dimension_numbers"]
      total += math.prod(out.shape) * math.prod(lhs.shape[d] for d in contract)
    else:
      times = int(eqn.params.get("length", 1)) if name == "scan" else 1
      total += times * sum(_jaxpr_macs(sub) for sub in _sub_jaxprs(eqn.params))
  return total


def conv_mac_count(fn, *args) -> int:
  """Multiply-accumulates of every convolution and dot product `fn(*args)` traces (fvcore's "FLOPs").

  A transposed convolution is counted as XLA runs it, a convolution over the zero-dilated input.
  """
  return _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def accepted_size(model: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
  """`size` rounded up to a side the model accepts (valid-conv nets: the input whose output covers it)."""
  if models.is_valid_conv(model):
    return tuple(model.input_size_for(s) for s in size)
  d = models.size_divisor(model)
  return tuple(max(-(-s // d) * d, models.init_size(model)) for s in size)


def summarize(model: nn.Module, height: int, width: int, channels: int = 3, batch: int = 1) -> dict[str, Any]:
  """Parameters, forward FLOPs per image and output shape of `model` on [batch, H, W, channels] float32 input.

  Nothing is computed on real data: the variables are abstract (`jax.eval_shape`) and the forward pass is only
  compiled, for XLA's cost analysis. (H, W) is first rounded up to a size the model accepts (`accepted_size`).

  Returns:
    {"requested": (height, width), "input": (batch, H, W, C) as compiled, "output": shape, "trainable":
    parameters ("params"), "state": other variables
    (BatchNorm statistics: not trained), "total", "by_submodule": {name: count}, "flops": XLA FLOPs per image
    (multiply-add = 2; a convolution's taps over its zero padding are not counted), "macs": convolution and dot
    multiply-accumulates per image (padding taps included, as fvcore), "gflops", "gmacs": the same / 1e9}.
  """
  h, w = accepted_size(model, (height, width))
  x = jax.ShapeDtypeStruct((batch, h, w, channels), jnp.float32)
  keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  init_x = jax.ShapeDtypeStruct((1, *accepted_size(model, (models.init_size(model),) * 2), channels), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(keys, jnp.zeros(init_x.shape, init_x.dtype), train=False))

  def forward(variables, x):
    with conv_lib.backend("xla"):
      return model.apply(variables, x, train=False)

  out = jax.eval_shape(forward, variables, x)
  flops = compiled_flops(jax.jit(forward).lower(variables, x).compile())
  macs = conv_mac_count(forward, variables, x)
  params = variables["params"]
  trainable = count_params(params)
  state = count_params({k: v for k, v in variables.items() if k != "params"})
  return {"requested": (height, width), "input": x.shape, "output": tuple(out.shape), "trainable": trainable,
          "state": state,
          "total": trainable + state, "by_submodule": params_by_submodule(params), "flops": flops / batch,
          "macs": macs / batch, "gflops": flops / batch / 1e9, "gmacs": macs / batch / 1e9}


def format_summary(name: str, s: Mapping[str, Any]) -> str:
  """The one-model report `python -m segjax.summary` prints."""
  b, h, w, c = s["input"]
  lines = [f"model: {name}",
           f"input: {b} x {h} x {w} x {c} (batch x height x width x channels), output: "
           f"{' x '.join(str(d) for d in s['output'])} (logits)"
           + ("" if tuple(s.get("requested", (h, w))) == (h, w) else
              f"; {s['requested'][0]}x{s['requested'][1]} was asked for: the nearest input the model takes that "
              "covers it"),
           f"parameters: {s['total']:,} total = {s['trainable']:,} trainable + {s['state']:,} BatchNorm statistics "
           "(not trained)"]
  width = max([len(k) for k in s["by_submodule"]] + [9])
  for k, v in s["by_submodule"].items():
    lines.append(f"  {k:<{width}} {v:>14,}  {100 * v / max(s['trainable'], 1):5.1f}%")
  lines += [f"forward, per image at {h}x{w}:",
            f"  {s['gflops']:10.3f} GFLOPs (XLA cost analysis, a multiply-add = 2 FLOPs, elementwise ops included)",
            f"  {s['gmacs']:10.3f} GMACs  (convolution/dot multiply-adds; what MMSegmentation's get_flops and fvcore "
            "call 'GFLOPs')"]
  return "\n".join(lines)


TABLE_HEADER = f"{'model':<22}{'input':>11}{'output':>11}{'params':>14}{'GFLOPs(XLA)':>13}{'GMACs':>10}"


def format_row(name: str, s: Mapping[str, Any]) -> str:
  """One row of the `--all` table (columns as `TABLE_HEADER`)."""
  return (f"{name:<22}{s['input'][1]:>5}x{s['input'][2]:<5}{s['output'][1]:>5}x{s['output'][2]:<5}"
          f"{s['trainable']:>14,}{s['gflops']:>13.2f}{s['gmacs']:>10.2f}")


def _define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "Recipe file in configs/.", lock_config=True)
  flags.DEFINE_integer("height", None, "Input height (default: the recipe's dataset.crop_size).")
  flags.DEFINE_integer("width", None, "Input width (default: the recipe's dataset.crop_size).")
  flags.DEFINE_integer("batch", 1, "Batch to compile for (FLOPs are reported per image).")
  flags.DEFINE_bool("all", False, "Tabulate every registry model (its default, published configuration) with the "
                    "recipe's classes and channels at the input size, instead of the recipe's model.")
  flags.DEFINE_list("models", None, "Tabulate only these registry models (comma-separated), as --all.")
  flags.mark_flags_as_required(["config"])
  return flags.FLAGS


def main(argv, flags_) -> None:
  from absl import app  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel
  from segjax.data import datasets  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  config = flags_.config
  crop = tuple(config.dataset.crop_size)
  height = crop[0] if flags_.height is None else flags_.height
  width = crop[1] if flags_.width is None else flags_.width
  if min(height, width, flags_.batch) <= 0:
    raise ValueError(f"--height, --width and --batch must be positive, not {height}, {width}, {flags_.batch}.")
  names = sorted(models.MODELS) if flags_.models is None else flags_.models
  unknown = sorted(set(names) - set(models.MODELS))
  if unknown:
    raise ValueError(f"--models: unknown model(s) {unknown}; known models: {sorted(models.MODELS)}.")
  spec = datasets.get_spec(config.dataset)
  if not flags_.all and flags_.models is None:
    model = models.build_model(config.model.name, spec.num_classes, **models.model_kwargs(config.model))
    print(format_summary(config.model.name, summarize(model, height, width, spec.num_channels, flags_.batch)))
    return
  print(f"Every registry model at its default configuration, {spec.num_classes} classes, {spec.num_channels} "
        f"channel(s), requested input {height}x{width} (rounded up to a size each model accepts); per image, "
        "GFLOPs: XLA (multiply-add = 2), GMACs: convolution/dot multiply-adds (get_flops' 'GFLOPs').")
  print(TABLE_HEADER)
  for name in names:
    model = models.build_model(name, spec.num_classes, **models.model_kwargs(models.model_config(name)))
    print(format_row(name, summarize(model, height, width, spec.num_channels, flags_.batch)), flush=True)


if __name__ == "__main__":
  _FLAGS = _define_flags()
  from segjax import cli, platform  # pylint: disable=import-outside-toplevel
  platform.configure_xla_cpu()
  cli.run(lambda argv: main(argv, _FLAGS))
