"""Max pooling that also returns where each maximum came from, and the unpooling that puts values back there.

This is the "fixed demaxpool" of SegNet (Badrinarayanan et al., 2017) and DeconvNet (Noh et al., 2015): the
encoder remembers the argmax of every pooling window, the decoder writes each value back to that position and
leaves zeros everywhere else.

Index convention (PyTorch's `max_pool2d(return_indices=True)`): `indices[b, i, j, c]` is the flat position
`h * W + w` of the maximum inside the *unpadded* input plane of shape [H, W], separately for every batch element
and channel. Ties inside a window go to the first position in row-major window order (top row first, then left
to right), which is also what PyTorch's CPU kernel picks.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  v = tuple(int(a) for a in v)
  if len(v) != 2:
    raise ValueError(f"expected an int or a pair (height, width), got {v}")
  return v


def _out_size(n: int, k: int, s: int, ceil_mode: bool) -> int:
  if ceil_mode:
    out = -(-(n - k) // s) + 1
    # As in PyTorch: the last window must start inside the input.
    if (out - 1) * s >= n:
      out -= 1
    return out
  return (n - k) // s + 1


def max_pool_with_argmax(x: jax.Array, window: int | Sequence[int] = 2, stride: int | Sequence[int] | None = None,
                         *, ceil_mode: bool = False) -> tuple[jax.Array, jax.Array]:
  """Max pooling of NHWC `x` that also returns the flat argmax positions.

  Args:
    x: [B, H, W, C], any float dtype.
    window: pooling window (kh, kw) or one int.
    stride: (sh, sw) or one int; defaults to `window`.
    ceil_mode: if True, a partial window at the bottom/right edge is pooled too (Caffe's SegNet rounds up, so
      an odd 45x60 map pools to 23x30); if False it is dropped (floor, as `nn.max_pool(padding='VALID')`).

  Returns:
    (values [B, Ho, Wo, C] with x's dtype, indices [B, Ho, Wo, C] int32 flat positions h * W + w in x).
  """
  if x.ndim != 4:
    raise ValueError(f"max_pool_with_argmax expects NHWC input [B, H, W, C], got shape {x.shape}")
  (kh, kw), (sh, sw) = _pair(window), _pair(window if stride is None else stride)
  b, h, w, c = x.shape
  ho, wo = _out_size(h, kh, sh, ceil_mode), _out_size(w, kw, sw, ceil_mode)
  if ho <= 0 or wo <= 0:
    raise ValueError(f"input {h}x{w} is smaller than the pooling window {kh}x{kw}")
  pad_h, pad_w = max(0, (ho - 1) * sh + kh - h), max(0, (wo - 1) * sw + kw - w)
  if pad_h or pad_w:
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=-jnp.inf)
  # One strided slice per window offset, reduced by a running (max, offset) pair in row-major window order.
  # A strict `>` keeps the first of tied values; NaN wins over numbers, as in jnp.argmax. This is several times
  # faster on XLA:CPU than a stacked argmax + take_along_axis, and `values` is a chain of selects, so its
  # gradient reaches exactly the argmax position (no select-and-scatter, no tie-splitting of jnp.max).
  values, offset = None, None
  for n, (i, j) in enumerate((i, j) for i in range(kh) for j in range(kw)):
    patch = x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
    if values is None:
      values, offset = patch, jnp.zeros(patch.shape, jnp.int32)
      continue
    better = (patch > values) | (jnp.isnan(patch) & ~jnp.isnan(values))
    values = jnp.where(better, patch, values)
    offset = jnp.where(better, jnp.int32(n), offset)
  rows = jnp.arange(ho, dtype=jnp.int32)[:, None, None] * sh + offset // kw
  cols = jnp.arange(wo, dtype=jnp.int32)[None, :, None] * sw + offset % kw
  indices = rows * w + cols
  return values, indices


def _guess_stride(n: int, n_pooled: int) -> int:
  """The window stride s for which n_pooled non-overlapping s-windows (floor or ceil mode) tile n, or its
  nearest guess; only used to pick a fast path whose validity is checked on the data."""
  return max(1, round(n / n_pooled))


def _unpool_blocks(values: jax.Array, indices: jax.Array, h: int, w: int, sh: int, sw: int) -> jax.Array:
  """Unpooling when every index lies in its own window's sh x sw block (checked by the caller).

  Output pixel (r, c) can then only come from pooled cell (r // sh, c // sw): broadcast that cell's value and
  index over its block and keep the value where the index is the pixel's own position. Only broadcasts,
  compares and selects, which XLA fuses, and whose gradient is a select and a block sum.
  """
  b, ho, wo, c = values.shape

  def up(a, fill):
    a = jnp.broadcast_to(a[:, :, None, :, None, :], (b, ho, sh, wo, sw, c)).reshape(b, ho * sh, wo * sw, c)
    # Ceil mode: the last block is partial. Floor mode: rows/columns past the last block belong to no window.
    a = a[:, :h, :w]
    return jnp.pad(a, ((0, 0), (0, h - a.shape[1]), (0, w - a.shape[2]), (0, 0)), constant_values=fill)

  own = (jnp.arange(h, dtype=jnp.int32)[:, None] * w + jnp.arange(w, dtype=jnp.int32)[None, :])[..., None]
  return jnp.where(up(indices, -1) == own, up(values, 0), jnp.zeros((), values.dtype))


def _unpool_scatter(values: jax.Array, indices: jax.Array, h: int, w: int) -> jax.Array:
  """General unpooling by scatter; of several values aimed at one position the last in row-major order wins."""
  b, ho, wo, c = values.shape
  n = ho * wo
  flat_values = values.reshape(b, n, c)
  flat_idx = indices.reshape(b, n, c)
  bi = jnp.arange(b, dtype=jnp.int32)[:, None, None]
  ci = jnp.arange(c, dtype=jnp.int32)[None, None, :]
  ids = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None, :, None], flat_idx.shape)
  # .at[] would wrap negative indices around like Python; send them (and any past the end) out of range.
  flat_idx = jnp.where((flat_idx >= 0) & (flat_idx < h * w), flat_idx, h * w)
  # XLA leaves the winner among duplicate scatter indices unspecified (it differs between backends), so resolve
  # it first: the largest pooled position aimed at each pixel wins, the others are sent out of range (distinct
  # positions past the end, dropped), which leaves unique indices and a gradient that reaches the winner only.
  winner = jnp.full((b, h * w, c), -1, jnp.int32).at[bi, flat_idx, ci].max(ids, mode="drop")
  won = winner.at[bi, flat_idx, ci].get(mode="fill", fill_value=-1) == ids
  flat_idx = jnp.where(won, flat_idx, h * w + ids)
  out = jnp.zeros((b, h * w, c), values.dtype)
  # mode='drop' also ignores an index outside the map (only possible with hand-made indices) instead of
  # clamping it onto a wrong pixel.
  out = out.at[bi, flat_idx, ci].set(flat_values, mode="drop", unique_indices=True)
  return out.reshape(b, h, w, c)


def max_unpool(values: jax.Array, indices: jax.Array, output_shape: Sequence[int]) -> jax.Array:
  """Writes `values` to the flat positions `indices` of a zero map of spatial size `output_shape`.

  The inverse of `max_pool_with_argmax` up to the non-maxima (which become 0). Works under jit, vmap and grad;
  the gradient w.r.t. `values` gathers the incoming gradient at the same positions.

  Overlapping pooling windows (stride < window) can pick the same input position more than once. Then the
  position receives the value of the *last* of those windows in row-major order of the pooled map (PyTorch's
  CPU kernel does the same by writing in that order), and only that window's value receives the gradient.
  For the output of `max_pool_with_argmax` all those values equal the input at that position, so
  `max_unpool(*max_pool_with_argmax(x), x.shape)` keeps exactly the maxima of x and is zero elsewhere, and its
  gradient w.r.t. x is 1 at every kept maximum, not the number of windows that picked it.

  Non-overlapping windows (SegNet's 2x2/2, floor or ceil mode) take a scatter-free path: if every index lies
  inside its own window's block (checked on the data with a `lax.cond`, so any indices stay correct) each
  output pixel has one candidate, and the unpooled map is a broadcast + compare + select. On XLA:CPU at
  [8, 128, 128, 64] this took 29 ms against the scatter's 68 ms forward, and the pool + unpool round trip
  83 ms against 185 ms with its gradient (bench/unpool.py); at small sizes the check costs about what it
  saves. Otherwise a scatter is used. Under vmap the cond becomes a select and both paths run.

  Args:
    values: [B, Ho, Wo, C].
    indices: [B, Ho, Wo, C] int flat positions `h * W + w` (as returned by `max_pool_with_argmax`).
    output_shape: (H, W) of the unpooled map, or a full (B, H, W, C) shape (B and C must match `values`).

  Returns:
    [B, H, W, C] with values' dtype.
  """
  if values.ndim != 4 or values.shape != indices.shape:
    raise ValueError(f"max_unpool expects values and indices of the same NHWC shape, got {values.shape} and "
                     f"{indices.shape}")
  b, ho, wo, c = values.shape
  output_shape = tuple(int(s) for s in output_shape)
  if len(output_shape) == 4:
    if (output_shape[0], output_shape[3]) != (b, c):
      raise ValueError(f"output_shape {output_shape} does not match values of shape {values.shape}")
    output_shape = output_shape[1:3]
  if len(output_shape) != 2:
    raise ValueError(f"output_shape must be (H, W) or (B, H, W, C), got {output_shape}")
  h, w = output_shape
  indices = indices.astype(jnp.int32)
  sh, sw = _guess_stride(h, ho), _guess_stride(w, wo)
  rows, cols = indices // w, indices % w
  in_block = ((indices >= 0) & (indices < h * w)
              & (rows // sh == jnp.arange(ho, dtype=jnp.int32)[:, None, None])
              & (cols // sw == jnp.arange(wo, dtype=jnp.int32)[None, :, None]))
  return jax.lax.cond(jnp.all(in_block), functools.partial(_unpool_blocks, h=h, w=w, sh=sh, sw=sw),
                      functools.partial(_unpool_scatter, h=h, w=w), values, indices)
