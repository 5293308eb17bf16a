"""XLA:CPU settings segjax runs with: `configure_xla_cpu()` is called by train.py, eval.py and predict.py.

XLA:CPU (jaxlib 0.10) hands convolutions to YNNPACK fusions by default. On the U-Net training step those ran
on one core, and a kernel gradient (a convolution contracting the batch over the whole feature map) ran at
17-20 GFLOP/s; with YNN fusions off, XLA runs convolutions with its Eigen kernels on the intra-op thread pool
and the whole step took 1.8-1.9 s instead of 2.3-2.9 s (bench/throughput.py, bench/profile_step.py; the
profiles before and after are in BENCHMARKS.md). The flag only concerns the CPU backend.
"""

from __future__ import annotations

import os

# flag -> value; an XLA_FLAGS that already names the flag wins, so a user can turn YNN fusions back on.
CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": ""}


def configure_xla_cpu(environ=os.environ) -> str:
  """Appends segjax's XLA:CPU flags to XLA_FLAGS, unless already set there; returns the new XLA_FLAGS.

  XLA reads XLA_FLAGS when JAX first initialises a backend, so call this before any JAX computation.
  """
  current = environ.get("XLA_FLAGS", "")
  extra = [f"{flag}={value}" for flag, value in CPU_FLAGS.items() if flag not in current]
  environ["XLA_FLAGS"] = " ".join(f for f in (current, *extra) if f)
  return environ["XLA_FLAGS"]
