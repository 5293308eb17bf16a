"""Forward and forward+backward time of 2x2 max pooling with argmax and of max unpooling, several ways.

    python bench/unpool.py [--repeats 10] [--shapes 8,64,64,32 8,128,128,64]

SegNet's decoder (Badrinarayanan et al., 2017) writes every value back to the argmax position of its pooling
window. `jax.lax` has no argmax-pool primitive, so segjax builds one (`max_pool_with_argmax`) and unpools with a
scatter (`max_unpool`). This script compares, on the same inputs:
- `nn.max_pool` 2x2 (the reference all ratios are taken against) and `max_pool_with_argmax`;
- three unpooling formulations of the same map: the scatter (`.at[].set`, what `max_unpool` falls back to), a
  one-hot of the window offset times the value followed by depth-to-space, and a gather of every output pixel's
  owning window (`jnp.take_along_axis`) compared with the pixel's own position;
- `segjax.ops.max_unpool` itself, which takes the owner-window path when the indices allow it;
- pool + unpool round trips.
Every alternative is checked to give identical outputs and gradients before anything is timed.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.ops import max_pool_with_argmax, max_unpool

import _timing  # bench/_timing.py (this folder is on sys.path when a script runs)


def unpool_scatter(values, indices, hw):
  """The plain scatter: every pooled value written at its flat index."""
  b, ho, wo, c = values.shape
  h, w = hw
  bi = jnp.arange(b)[:, None, None]
  ci = jnp.arange(c)[None, None, :]
  out = jnp.zeros((b, h * w, c), values.dtype)
  out = out.at[bi, indices.reshape(b, ho * wo, c), ci].set(values.reshape(b, ho * wo, c), mode="drop")
  return out.reshape(b, h, w, c)


def unpool_one_hot(values, indices, hw):
  """2x2 windows only: one-hot of the offset inside the window times the value, then depth-to-space."""
  b, ho, wo, c = values.shape
  h, w = hw
  rows = indices // w - 2 * jnp.arange(ho)[:, None, None]
  cols = indices % w - 2 * jnp.arange(wo)[None, :, None]
  onehot = jax.nn.one_hot(rows * 2 + cols, 4, dtype=values.dtype, axis=3)  # [B, Ho, Wo, 4, C]
  y = (onehot * values[:, :, :, None, :]).reshape(b, ho, wo, 2, 2, c)
  return y.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * ho, 2 * wo, c)


def unpool_gather(values, indices, hw):
  """2x2 windows only: every output pixel gathers its window's value and index, and keeps the value if the
  index is its own position."""
  b, ho, wo, c = values.shape
  h, w = hw
  r, s = np.arange(h), np.arange(w)
  owner = ((r // 2)[:, None] * wo + (s // 2)[None, :]).reshape(1, h * w, 1)
  up_v = jnp.take_along_axis(values.reshape(b, ho * wo, c), owner, axis=1)
  up_i = jnp.take_along_axis(indices.reshape(b, ho * wo, c), owner, axis=1)
  own = jnp.asarray((r[:, None] * w + s[None, :]).reshape(1, h * w, 1), jnp.int32)
  return jnp.where(up_i == own, up_v, 0).reshape(b, h, w, c)


def bench_shape(shape, repeats):
  b, h, w, c = shape
  rng = np.random.default_rng(0)
  # Distinct values (no ties), so every formulation's argmax is the same and outputs must agree exactly.
  x = jnp.asarray(rng.permutation(b * h * w * c).reshape(shape) / (b * h * w * c), jnp.float32)
  v, idx = jax.jit(max_pool_with_argmax)(x)
  ct_pool = jnp.asarray(rng.standard_normal(v.shape), jnp.float32)
  ct_full = jnp.asarray(rng.standard_normal(shape), jnp.float32)

  unpools = {
      "max_unpool (segjax)": lambda v, i: max_unpool(v, i, (h, w)),
      "unpool scatter": lambda v, i: unpool_scatter(v, i, (h, w)),
      "unpool one-hot": lambda v, i: unpool_one_hot(v, i, (h, w)),
      "unpool gather": lambda v, i: unpool_gather(v, i, (h, w)),
  }
  ref_out = np.asarray(unpool_scatter(v, idx, (h, w)))
  ref_grad = np.asarray(jax.grad(lambda v: (unpool_scatter(v, idx, (h, w)) * ct_full).sum())(v))
  for name, fn in unpools.items():
    np.testing.assert_array_equal(np.asarray(jax.jit(fn)(v, idx)), ref_out, err_msg=name)
    g = jax.jit(jax.grad(lambda v, i, fn=fn: (fn(v, i) * ct_full).sum()))(v, idx)
    np.testing.assert_array_equal(np.asarray(g), ref_grad, err_msg=name)
  np.testing.assert_array_equal(np.asarray(nn.max_pool(x, (2, 2), (2, 2))), np.asarray(v))

  rows = []

  def add(name, f, ct):
    fwd = _timing.median_ms(jax.jit(f), x, repeats=repeats, warmup=2)
    bwd = _timing.median_ms(jax.jit(jax.grad(lambda x: (f(x) * ct).sum())), x, repeats=repeats, warmup=2)
    rows.append((name, fwd, bwd))

  add("nn.max_pool 2x2 (reference)", lambda x: nn.max_pool(x, (2, 2), (2, 2)), ct_pool)
  add("max_pool_with_argmax", lambda x: max_pool_with_argmax(x)[0], ct_pool)
  # Unpooling alone: differentiate w.r.t. the pooled values (the indices are integer data).
  for name, fn in unpools.items():
    fwd = _timing.median_ms(jax.jit(fn), v, idx, repeats=repeats, warmup=2)
    bwd = _timing.median_ms(jax.jit(jax.grad(lambda v, i, fn=fn: (fn(v, i) * ct_full).sum())), v, idx, repeats=repeats, warmup=2)
    rows.append((name, fwd, bwd))
  for name, fn in unpools.items():
    add(f"pool + {name}", lambda x, fn=fn: fn(*max_pool_with_argmax(x)), ct_full)

  ref_fwd, ref_bwd = rows[0][1], rows[0][2]
  print(f"\ninput {shape} float32, median of {repeats}; ratio = time / nn.max_pool's")
  print(f"{'op':<38} {'fwd ms':>9} {'ratio':>7} {'fwd+bwd ms':>11} {'ratio':>7}")
  for name, fwd, bwd in rows:
    print(f"{name:<38} {fwd:9.2f} {fwd / ref_fwd:7.2f} {bwd:11.2f} {bwd / ref_bwd:7.2f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--shapes", nargs="+", default=["8,64,64,32", "8,128,128,64"],
                      help="NHWC shapes, comma-separated, H and W even")
  args = parser.parse_args()
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0].device_kind}")
  for s in args.shapes:
    bench_shape(tuple(int(d) for d in s.split(",")), args.repeats)


if __name__ == "__main__":
  main()
