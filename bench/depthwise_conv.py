"""Depthwise 3x3 convolution, forward + backward, jax (XLA:CPU) against torch on this machine: the suspect in
DeepLabV3+'s 4x gap (bench/smp_models.py), whose ASPP and decoder are depthwise-separable (SMP's).

    python bench/depthwise_conv.py

Each row: one `feature_group_count = C` convolution (the depthwise half of segjax.models.deeplabv3.SeparableConv)
at a DeepLabV3+ shape, the gradient of sum(y^2) with respect to input and kernel; jax jitted, torch eager on
`--threads` threads; median of 5 after a warm-up. Ratio: torch time / jax time (< 1: jax slower).
"""

from __future__ import annotations

import argparse
import os
import time

from segjax import platform

platform.configure_xla_cpu()  # train.py's XLA:CPU flags, before JAX starts its CPU backend

import jax  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402

import _timing  # noqa: E402  # bench/_timing.py

# (channels, spatial side, dilation): DeepLabV3+'s ASPP at output stride 16 of a 224 input, its decoder at stride 4.
SHAPES = ((2048, 14, 12), (2048, 14, 24), (304, 56, 1))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(args.threads)
  print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} ({args.threads} threads), "
        f"batch {args.batch}")
  print(f"{'channels':>9}{'size':>8}{'dilation':>10}{'jax ms':>9}{'torch ms':>10}{'torch/jax':>11}")
  rng = np.random.default_rng(0)
  for c, hw, d in SHAPES:
    x = rng.standard_normal((args.batch, hw, hw, c)).astype(np.float32)
    k = rng.standard_normal((3, 3, 1, c)).astype(np.float32)

    def loss(k, x, c=c, d=d):
      y = jax.lax.conv_general_dilated(x, k, (1, 1), [(d, d), (d, d)], rhs_dilation=(d, d),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)
      return (y ** 2).sum()

    jms = _timing.median_ms(jax.jit(jax.grad(loss, argnums=(0, 1))), k, x, repeats=5)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    conv = torch.nn.Conv2d(c, c, 3, padding=d, dilation=d, groups=c, bias=False)

    def step():
      conv.zero_grad(set_to_none=True)
      tx.grad = None
      (conv(tx) ** 2).sum().backward()

    step()
    times = []
    for _ in range(5):
      start = time.perf_counter()
      step()
      times.append(time.perf_counter() - start)
    tms = 1e3 * float(np.median(times))
    print(f"{c:>9}{f'{hw}x{hw}':>8}{d:>10}{jms:>9.1f}{tms:>10.1f}{tms / jms:>11.2f}", flush=True)


if __name__ == "__main__":
  main()
