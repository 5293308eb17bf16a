"""Model FLOP utilisation of segjax's training step: XLA's FLOP count / step time / the chip's peak.

    python bench/mfu.py                                       # U-Net (bench/throughput.py's), f32 and bf16
    python bench/mfu.py --models unet segnet fcn8s --size 352 480 --batch 16
    python bench/mfu.py --peak-tflops 989 --dtypes bfloat16   # a chip not in PEAK_TFLOPS (dense TFLOP/s)

The FLOPs are XLA's own count for the compiled step (`compiled.cost_analysis()["flops"]`: forward, backward and
the optimiser update, per device), the time the median of --repeats steps after warm-up, with the batch split
over every local device (segjax's data-parallel mesh). MFU = FLOPs per step and device / step seconds / peak.
The peak is --peak-tflops, else PEAK_TFLOPS for the device kind and dtype (dense, no sparsity; float32 on
NVIDIA GPUs means XLA's default TF32 matmuls), else MFU is not printed: on a CPU the script reports achieved
TFLOP/s only, unless given a peak.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from segjax import platform  # noqa: E402  (imports no JAX)

platform.configure_xla_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import _experiment  # noqa: E402
import _timing  # noqa: E402
from segjax import models, summary  # noqa: E402
from segjax.training import steps  # noqa: E402

# Dense peak TFLOP/s from the vendors' data sheets (SXM parts), by jax's device_kind.
PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": {"float32": 494.7, "bfloat16": 989.4},
    "NVIDIA H200": {"float32": 494.7, "bfloat16": 989.4},
    "NVIDIA A100-SXM4-80GB": {"float32": 156.0, "bfloat16": 312.0},
    "NVIDIA A100-SXM4-40GB": {"float32": 156.0, "bfloat16": 312.0},
    "TPU v4": {"float32": 275.0, "bfloat16": 275.0},
    "TPU v5 lite": {"float32": 197.0, "bfloat16": 197.0},
    "TPU v5": {"float32": 459.0, "bfloat16": 459.0},
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", nargs="+", default=["unet"], choices=["unet", "segnet", "fcn8s"])
  p.add_argument("--size", nargs=2, type=int, default=[128, 128], metavar=("H", "W"))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--classes", type=int, default=11)
  p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--conv-backend", default="auto", choices=["auto", "xla", "onednn"],
                 help="segjax's convolution kernels for the timed step (FLOPs are always XLA's count of the step)")
  p.add_argument("--peak-tflops", type=float, default=0.0, help="the device's dense peak (overrides the table)")
  return p.parse_args(argv)


def measure(name: str, dtype: str, args) -> dict:
  import torch_models  # pylint: disable=import-outside-toplevel  (the networks bench/throughput.py times)
  h, w = args.size
  model = models.build_model(name, args.classes, dtype=jnp.dtype(dtype), **dict(torch_models.SEGJAX_KWARGS[name]))

  def experiment(conv_backend):  # the step of bench/throughput.py: inputs / 255, Adam 1e-3, cross-entropy
    return _experiment.build(model, batch=args.batch, size=(h, w), mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0),
                             conv_backend=conv_backend)

  def jitted(exp):
    return jax.jit(functools.partial(steps.train_step, exp=exp), donate_argnums=0)

  # XLA's cost analysis cannot see inside the oneDNN custom calls: count the FLOPs of the same step on XLA's
  # kernels, time the step on the backend asked for. Both Experiments have the same state (arrays only).
  exp_xla, exp = experiment("xla"), experiment(args.conv_backend)
  state = exp.init_state()
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(0, 255, (args.batch, h, w, 3)).astype(np.float32),
           "label": rng.integers(0, args.classes, (args.batch, h, w)).astype(np.int32),
           "weight": np.ones((args.batch, h, w), np.float32)}
  batch = _experiment.place(exp, batch)
  flops = summary.compiled_flops(jitted(exp_xla).lower(state, batch).compile())
  compiled = jitted(exp).lower(state, batch).compile()
  holder = {"state": state}

  def one():
    holder["state"], metrics = compiled(holder["state"], batch)
    return metrics

  seconds = _timing.median_seconds(one, repeats=args.repeats, warmup=2)
  return {"flops": flops, "seconds": seconds}


def main(args) -> None:
  device = jax.devices()[0]
  print(f"{device.platform} x {jax.device_count()}: {device.device_kind}; jax {jax.__version__}; "
        f"batch {args.batch} x {args.size[0]}x{args.size[1]}")
  print(f"{'network':8} {'dtype':9} {'GFLOP/step/dev':>15} {'step ms':>9} {'img/s':>8} {'TFLOP/s/dev':>12} "
        f"{'peak':>7} {'MFU':>7}")
  for name in args.models:
    for dtype in args.dtypes:
      r = measure(name, dtype, args)
      achieved = r["flops"] / r["seconds"] / 1e12
      peak = args.peak_tflops or PEAK_TFLOPS.get(device.device_kind, {}).get(dtype, 0.0)
      mfu = f"{100 * achieved / peak:6.1f}%" if peak else f"{'-':>7}"
      print(f"{name:8} {dtype:9} {r['flops'] / 1e9:15.1f} {1e3 * r['seconds']:9.1f} "
            f"{args.batch / r['seconds']:8.2f} {achieved:12.4f} {peak or '-':>7} {mfu}", flush=True)


if __name__ == "__main__":
  main(parse_args())
