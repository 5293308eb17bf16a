"""Training throughput of segjax against the same network in PyTorch, measured side by side in one run.

    python bench/throughput.py                                  # U-Net 4 levels, base 32, BN, 8 x 128x128
    python bench/throughput.py --models segnet fcn8s --size 352 480 --batch 2 --repeats 3
    python bench/throughput.py --jax-devices 1 --torch eager    # segjax on one XLA CPU device
    python bench/throughput.py --profile /tmp/prof              # + a per-op profile of the segjax step

Both sides run one full optimiser step per call on the same batch: forward with BatchNorm in training mode,
softmax cross-entropy over every pixel, backward, Adam update. segjax's side is the real train step
(`segjax.training.steps.jit_train_step` of an Experiment whose recipe is set to this network and batch,
bench/_experiment.py: the jitted, sharded, donated step `train.py` runs, with its normalisation and no
augmentation); PyTorch's is the twin network of `bench/torch_models.py` (identical layers,
tests/models/test_torch_reference.py) stepped by `torch.optim.Adam`, in the modes asked for:
- eager: the default NCHW memory format;
- channels_last: the same, with the model and the input in NHWC memory format (oneDNN's preferred layout);
- compile: `torch.compile` of the whole step function (Inductor), after its compilation.

segjax on CPU: `--jax-devices N` (default: one per core) makes XLA expose N host devices and the step splits
the batch over them (the data axis of segjax's mesh). XLA:CPU runs each device's program on its own thread with
a share of the intra-op pool, so the many small, poorly parallelised ops of a U-Net step (BatchNorm reductions,
element-wise fusions, the small deep-level convolutions) run concurrently; see BENCHMARKS.md for the profile.

Printed: per network and mode, the median step time over `--repeats` steps after warm-up (compilation
excluded and reported apart), images per second, and the ratio segjax / reference in images per second
(> 1: segjax is faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", nargs="+", default=["unet"], choices=["unet", "segnet", "fcn8s"])
  p.add_argument("--size", nargs=2, type=int, default=[128, 128], metavar=("H", "W"))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--classes", type=int, default=11)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--torch", nargs="*", default=["eager", "channels_last", "compile"],
                 choices=["eager", "channels_last", "compile"], help="PyTorch modes (none: segjax only)")
  p.add_argument("--jax-devices", type=int, default=1, help="XLA host devices the batch is split over")
  p.add_argument("--stock-xla", action="store_true",
                 help="XLA:CPU's own defaults instead of segjax.platform's flags (the 'before' of BENCHMARKS.md)")
  p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for the segjax side")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="segjax compute dtype")
  p.add_argument("--conv-backend", default="auto", choices=["auto", "xla", "onednn"],
                 help="segjax's convolution kernels (config.conv_backend; auto: oneDNN on one CPU device if built)")
  p.add_argument("--profile", default="", help="write a jax.profiler trace of 3 segjax steps to this folder")
  return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # XLA reads its flags once, when jax initialises its CPU backend: set them before importing it
  os.environ["XLA_FLAGS"] = " ".join(f for f in (
      os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={ARGS.jax_devices}", ARGS.xla_flags) if f)
  if not ARGS.stock_xla:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from segjax import platform as _platform  # imports no JAX
    _platform.configure_xla_cpu()

import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from segjax import models  # noqa: E402
from segjax.ops import conv as conv_lib  # noqa: E402
from segjax.training import steps  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _experiment  # noqa: E402  pylint: disable=wrong-import-position
import _timing  # noqa: E402  pylint: disable=wrong-import-position


def _batch(b: int, h: int, w: int, k: int):
  rng = np.random.default_rng(0)
  return (rng.uniform(0, 255, (b, h, w, 3)).astype(np.float32), rng.integers(0, k, (b, h, w)).astype(np.int32))


def segjax_step(name: str, args) -> dict:
  """Median seconds of segjax's jitted train step on a batch over every host device."""
  import torch_models  # pylint: disable=import-outside-toplevel  (its SEGJAX_KWARGS: the twin's arguments)
  h, w = args.size
  kwargs = dict(torch_models.SEGJAX_KWARGS[name])
  model = models.build_model(name, args.classes, dtype=jnp.dtype(args.dtype), **kwargs)
  # Inputs scaled to 0..1 as the PyTorch side's (x / 255); Adam 1e-3, cross-entropy, no augmentation.
  exp = _experiment.build(model, batch=args.batch, size=(h, w), mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0),
                          conv_backend=args.conv_backend)
  fn = steps.jit_train_step(exp)
  image, label = _batch(args.batch, h, w, args.classes)
  batch = _experiment.place(exp, {"image": image, "label": label, "weight": np.ones(label.shape, np.float32)})
  holder = {"state": exp.init_state()}

  def one_step():
    holder["state"], metrics = fn(holder["state"], batch)
    return metrics

  start = time.perf_counter()
  jax.block_until_ready(one_step())
  first = time.perf_counter() - start
  seconds = _timing.median_seconds(one_step, repeats=args.repeats, warmup=args.warmup - 1)
  params = sum(x.size for x in jax.tree.leaves(holder["state"].params))
  if args.profile:
    jax.profiler.start_trace(os.path.join(args.profile, name))
    for _ in range(3):
      jax.block_until_ready(one_step())
    jax.profiler.stop_trace()
  return {"seconds": seconds, "first": first, "params": params}


def torch_step(name: str, mode: str, args) -> dict:
  """Median seconds of the PyTorch twin's training step in `mode`."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch_models  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  h, w = args.size
  net = torch_models.build(name, 3, args.classes).train()
  opt = torch.optim.Adam(net.parameters(), lr=1e-3)
  image, label = _batch(args.batch, h, w, args.classes)
  x = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous() / 255.0
  y = torch.from_numpy(label).long()
  if mode == "channels_last":
    net = net.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)

  def step(x, y):
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return loss

  if mode == "compile":
    step = torch.compile(step)
  start = time.perf_counter()
  step(x, y).item()
  first = time.perf_counter() - start
  seconds = _timing.median_seconds(lambda: step(x, y).item(), repeats=args.repeats, warmup=args.warmup - 1)
  params = sum(p.numel() for p in net.parameters())
  return {"seconds": seconds, "first": first, "params": params}


def main(args) -> None:
  try:
    import torch  # pylint: disable=import-outside-toplevel
    torch_version = torch.__version__
  except ImportError:
    torch, torch_version = None, None
    if args.torch:
      print("PyTorch is not installed (pip install -e '.[test]'): timing segjax only.")
      args.torch = []
  h, w = args.size
  print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPU threads; "
        f"jax {jax.__version__} on {len(jax.devices())} {jax.default_backend()} device(s); torch {torch_version} "
        f"({torch.get_num_threads() if torch else '-'} threads); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"batch {args.batch} x {h}x{w}x3, {args.classes} classes, Adam, cross-entropy; median of {args.repeats} "
        f"steps after {args.warmup} warm-up; segjax dtype {args.dtype}")
  header = f"{'network':8} {'framework':24} {'params':>10} {'first step s':>12} {'step ms':>10} {'img/s':>8} " \
           f"{'segjax / this':>13}"
  print(header)
  print("-" * len(header))
  for name in args.models:
    ours = segjax_step(name, args)
    backend = conv_lib.resolve_backend(args.conv_backend, len(jax.devices()))
    rows = [(f"segjax ({len(jax.devices())} dev, {backend})", ours)]
    for mode in args.torch:
      try:
        rows.append((f"pytorch {mode}", torch_step(name, mode, args)))
      except Exception as e:  # pylint: disable=broad-except  (a compile failure is a result to report, not a crash)
        print(f"{name:8} pytorch {mode:16} failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
    for label, r in rows:
      ratio = r["seconds"] / ours["seconds"]
      print(f"{name:8} {label:24} {r['params']:>10,d} {r['first']:>12.1f} {1e3 * r['seconds']:>10.1f} "
            f"{args.batch / r['seconds']:>8.2f} {ratio:>13.2f}", flush=True)


if __name__ == "__main__":
  main(ARGS)
