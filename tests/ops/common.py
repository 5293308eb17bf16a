"""numpy loop references and helpers shared by the tests of segjax.ops."""

import jax
import numpy as np

from segjax.ops import max_pool_with_argmax, max_unpool


def np_pool_out_size(n, k, s, ceil_mode):
  # PyTorch's MaxPool2d output size (torch.nn.MaxPool2d docs, padding 0, dilation 1).
  out = (-(-(n - k) // s) if ceil_mode else (n - k) // s) + 1
  if ceil_mode and (out - 1) * s >= n:
    out -= 1
  return out


def np_max_pool_with_argmax(x, k, s, ceil_mode):
  x = np.asarray(x, np.float64)
  b, h, w, c = x.shape
  ho, wo = np_pool_out_size(h, k, s, ceil_mode), np_pool_out_size(w, k, s, ceil_mode)
  values, indices = np.zeros((b, ho, wo, c)), np.zeros((b, ho, wo, c), np.int64)
  for n in range(b):
    for ch in range(c):
      for i in range(ho):
        for j in range(wo):
          best, arg = -np.inf, None
          for r in range(i * s, min(i * s + k, h)):  # row-major window order, first maximum kept
            for q in range(j * s, min(j * s + k, w)):
              if arg is None or x[n, r, q, ch] > best:
                best, arg = x[n, r, q, ch], r * w + q
          values[n, i, j, ch], indices[n, i, j, ch] = best, arg
  return values, indices


def np_max_unpool(values, indices, hw):
  values = np.asarray(values, np.float64)
  b, ho, wo, c = values.shape
  h, w = hw
  out = np.zeros((b, h, w, c))
  for n in range(b):
    for ch in range(c):
      for i in range(ho):  # writes in row-major pooled order: the last write to a position wins
        for j in range(wo):
          idx = int(indices[n, i, j, ch])
          if 0 <= idx < h * w:  # an index outside the map is dropped
            out[n, idx // w, idx % w, ch] = values[n, i, j, ch]
  return out


def distinct(shape, seed=0, dtype=np.float32):
  """Values with no ties and gaps of at least 1/size (finite differences never flip an argmax)."""
  n = int(np.prod(shape))
  return (np.random.default_rng(seed).permutation(n).reshape(shape) / n).astype(dtype)


# Jitted once per shape: eager dispatch of the per-window ops compiles each of them separately.
pool_jit = jax.jit(max_pool_with_argmax, static_argnums=(1, 2), static_argnames="ceil_mode")
unpool_jit = jax.jit(max_unpool, static_argnums=2)
