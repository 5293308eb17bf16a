"""Every 3x3 convolution of the benchmark U-Net, forward + both gradients, on XLA's kernels, on oneDNN's (segjax's
CPU backend) and in PyTorch, side by side.

    python bench/conv_layers.py                 # U-Net 4 levels / base 32 at batch 8 x 128x128 (bench/throughput.py's)
    python bench/conv_layers.py --batch 2 --size 64

For each distinct layer shape (input side, in -> out channels, how many layers of the net have it): the median time
of one jitted call that runs the convolution and its vjp (output, input gradient, kernel gradient; the first layer
has no input gradient, as in training), for segjax with `conv_backend` "xla" and "onednn" (segjax.ops.conv), and for
PyTorch's `conv2d` forward + backward in NCHW (eager's default) and channels_last memory formats. Totals weight each
shape by its number of layers, so they are the convolution part of one training step measured layer by layer. The
oneDNN outputs are checked against XLA's before timing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from segjax import platform  # noqa: E402  (imports no JAX)

platform.configure_xla_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from segjax.ops import conv  # noqa: E402

import _timing  # noqa: E402


def unet_layers(size: int, base: int, depth: int, in_channels: int = 3) -> dict[tuple[int, int, int], int]:
  """(side, in, out) -> how many 3x3 convolutions of a same-padded U-Net have that shape."""
  counts: dict[tuple[int, int, int], int] = {}

  def add(key):
    counts[key] = counts.get(key, 0) + 1

  c = in_channels
  for level in range(depth + 1):
    side, f = size // 2**level, base * 2**level
    add((side, c, f))
    add((side, f, f))
    c = f
  for level in reversed(range(depth)):
    side, f = size // 2**level, base * 2**level
    add((side, 2 * f, f))  # the concatenation of the skip and the up-convolution
    add((side, f, f))
  return counts


def _jax_call(backend: str, first: bool):
  def fn(x, w, g):
    with conv.backend(backend):
      y, vjp = jax.vjp(lambda x, w: conv.conv_general_dilated(x, w, (1, 1), "SAME",
                                                            dimension_numbers=("NHWC", "HWIO", "NHWC")), x, w)
    dx, dw = vjp(g)
    return (y, dw) if first else (y, dx, dw)
  return jax.jit(fn)


def _torch_ms(torch, x, w, g, channels_last: bool, first: bool, repeats: int) -> float:
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
  gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous()
  if channels_last:
    xt, wt, gt = (t.contiguous(memory_format=torch.channels_last) for t in (xt, wt, gt))
  mask = [not first, True, False]

  def step():
    torch.nn.functional.conv2d(xt, wt, padding=1)
    torch.ops.aten.convolution_backward(gt, xt, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

  for _ in range(2):
    step()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--base", type=int, default=32)
  p.add_argument("--depth", type=int, default=4)
  p.add_argument("--repeats", type=int, default=10)
  args = p.parse_args()
  ok, reason = conv.available()
  if not ok:
    sys.exit(f"oneDNN backend unavailable: {reason}")
  try:
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(os.cpu_count())
  except ImportError:
    torch = None
  print(f"{os.cpu_count()} CPU threads; jax {jax.__version__}; torch {torch.__version__ if torch else '-'}; "
        f"batch {args.batch}, U-Net depth {args.depth}, base {args.base}, {args.size}x{args.size}; median of "
        f"{args.repeats}, ms per layer (forward + input gradient + kernel gradient)")
  cols = ["xla", "onednn"] + (["torch NCHW", "torch channels_last"] if torch else [])
  print(f"{'side':>5} {'in->out':>9} {'layers':>6} " + " ".join(f"{c:>19}" for c in cols) + f" {'xla/onednn':>10}")
  totals = dict.fromkeys(cols, 0.0)
  rng = np.random.default_rng(0)
  for (side, cin, cout), n in unet_layers(args.size, args.base, args.depth).items():
    first = cin == 3
    x = rng.normal(size=(args.batch, side, side, cin)).astype(np.float32)
    w = (rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
    g = rng.normal(size=(args.batch, side, side, cout)).astype(np.float32)
    row = {}
    outs = {}
    for backend in ("xla", "onednn"):
      fn = _jax_call(backend, first)
      outs[backend] = fn(x, w, g)
      row[backend] = _timing.median_ms(fn, x, w, g, repeats=args.repeats, warmup=1)
    for a, b in zip(outs["onednn"], outs["xla"]):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * float(jnp.abs(b).max()))
    if torch:
      row["torch NCHW"] = _torch_ms(torch, x, w, g, False, first, args.repeats)
      row["torch channels_last"] = _torch_ms(torch, x, w, g, True, first, args.repeats)
    for c in cols:
      totals[c] += n * row[c]
    print(f"{side:>5} {f'{cin}->{cout}':>9} {n:>6} " + " ".join(f"{row[c]:>19.1f}" for c in cols)
          + f" {row['xla'] / row['onednn']:>10.2f}", flush=True)
  print(f"{'total':>5} {'':>9} {'':>6} " + " ".join(f"{totals[c]:>19.1f}" for c in cols)
        + f" {totals['xla'] / totals['onednn']:>10.2f}")


if __name__ == "__main__":
  main()
