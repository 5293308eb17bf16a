"""The one timing rule every bench script uses: median wall time of blocking calls after warm-up."""

from __future__ import annotations

import time

import jax
import numpy as np


def median_seconds(fn, *args, repeats: int, warmup: int = 1) -> float:
  """Median seconds per call of `fn(*args)` over `repeats` calls, after `warmup` calls (the first compiles).

  Each call is waited for with `jax.block_until_ready`, so asynchronous dispatch does not hide device time.
  """
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def median_ms(fn, *args, repeats: int, warmup: int = 1) -> float:
  return 1e3 * median_seconds(fn, *args, repeats=repeats, warmup=warmup)
