"""Forward and forward+backward time of every registry model at its published width, on this machine.

    python bench/models.py                      # every model, batch 2, 224x224 (3 channels, 11 classes)
    python bench/models.py --models segnet unet --size 360 480 --batch 1

For each model: parameters, the XLA cost-analysis FLOPs of one training step, the median time of an
inference forward pass and of a full training step's gradient (forward + backward, BatchNorm in training mode,
dropout on), images per second, and the achieved GFLOP/s, which shows where XLA's lowering of an op (not the
amount of arithmetic) is the bottleneck. The last column is the training-step time relative to U-Net's, the
reference network of the zoo. The same step of DeepLabV3/V3+ and the SMP U-Net/FPN against torchvision's and
segmentation_models_pytorch's networks, side by side with a ratio: bench/smp_models.py.
"""

from __future__ import annotations

import argparse

from segjax import platform

platform.configure_xla_cpu()  # train.py's XLA:CPU flags, before JAX starts its CPU backend

import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from segjax import losses, models, summary  # noqa: E402
from segjax.ops import conv as conv_lib  # noqa: E402

import _timing  # noqa: E402  # bench/_timing.py (this folder is on sys.path when a script runs)


def bench(name: str, batch: int, size: tuple[int, int], channels: int, classes: int, repeats: int,
          conv_backend: str = "xla") -> dict:
  model = models.build_model(name, classes)
  h, w = summary.accepted_size(model, size)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, h, w, channels)), jnp.float32)
  with jax.threefry_partitionable(False):  # as segjax.state: much faster to compile on CPU
    variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, x, train=False))(jax.random.key(0))
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  out_h, out_w = models.output_size(model, h), models.output_size(model, w)
  labels = jnp.asarray(rng.integers(0, classes, (batch, out_h, out_w)), jnp.int32)
  weights = jnp.ones(labels.shape, jnp.float32)

  def loss_fn(params, x):
    logits, _ = model.apply({"params": params, **state}, x, train=True, rngs={"dropout": jax.random.key(1)},
                            mutable=["batch_stats", "aux"])
    return losses.cross_entropy(logits, labels, weights)

  def on(backend, fn):
    def traced(*args):
      with conv_lib.backend(backend):
        return fn(*args)
    return jax.jit(traced)

  forward = on(conv_backend, lambda p, x: model.apply({"params": p, **state}, x, train=False))
  grad = on(conv_backend, jax.grad(loss_fn))
  # XLA's cost analysis does not see into oneDNN custom calls: the FLOPs are those of the XLA-kernel step.
  flops = summary.compiled_flops(on("xla", jax.grad(loss_fn)).lower(params, x).compile())
  fwd = _timing.median_ms(forward, params, x, repeats=repeats)
  train = _timing.median_ms(grad, params, x, repeats=repeats)
  n_params = summary.count_params(params)
  return {"name": name, "input": f"{h}x{w}", "params": n_params, "gflop": flops / 1e9, "fwd_ms": fwd,
          "train_ms": train, "img_s": batch / train * 1e3, "gflops": flops / train / 1e6}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="*", default=sorted(models.MODELS))
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--size", type=int, nargs=2, default=(224, 224))
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--classes", type=int, default=11)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--conv-backend", default="auto", choices=["auto", "xla", "onednn"],
                      help="segjax's convolution kernels (config.conv_backend)")
  args = parser.parse_args()
  backend = conv_lib.resolve_backend(args.conv_backend, jax.device_count())
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s): "
        f"{jax.devices()[0].device_kind}; batch {args.batch}, requested size {args.size[0]}x{args.size[1]}, "
        f"{args.classes} classes; convolutions: {backend}")
  rows = []
  header = (f"{'model':<22}{'input':>10}{'params':>14}{'GFLOP/step':>12}{'fwd ms':>10}{'fwd+bwd ms':>12}"
            f"{'img/s':>8}{'GFLOP/s':>9}{'vs unet':>9}")
  print(header)
  for name in args.models:
    row = bench(name, args.batch, tuple(args.size), args.channels, args.classes, args.repeats, backend)
    rows.append(row)
    print(f"{row['name']:<22}{row['input']:>10}{row['params']:>14,}{row['gflop']:>12.1f}{row['fwd_ms']:>10.0f}"
          f"{row['train_ms']:>12.0f}{row['img_s']:>8.2f}{row['gflops']:>9.1f}", flush=True)
  ref = next((r for r in rows if r["name"] == "unet"), None)
  if ref is not None:
    print("\ntraining-step time relative to unet (same batch and requested size):")
    for r in rows:
      print(f"  {r['name']:<22}{r['train_ms'] / ref['train_ms']:>8.2f}x")


if __name__ == "__main__":
  main()
