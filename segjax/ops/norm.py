"""BatchNorm over the channel axis with a hand-written training gradient and an optional fused ReLU.

`BatchNorm` is a drop-in replacement for `flax.linen.BatchNorm` on channels-last activations: the same
parameters (`scale`, `bias`), the same `batch_stats` (`mean`, `var`), the same statistics (float32, the
variance as E[x^2] - E[x]^2 clipped at 0, Flax's default `use_fast_variance`), the same running averages, so
checkpoints and imported weights are interchangeable. What differs is how the training step is computed:

- Flax's layer is differentiated by autodiff, which on XLA:CPU became about ten separate passes over every
  activation (reductions for the statistics and their gradients, each broadcast, the ReLU mask), and XLA:CPU's
  reductions over the leading axes of an [N, C] array with few channels ran at 1-3 GB/s. On the U-Net training
  step of bench/throughput.py BatchNorm cost about 500 ms of a 1.2 s step.
- Here the gradient is the closed form (one pass for two channel sums, one element-wise pass), the ReLU that
  follows almost every BatchNorm is folded in (its mask is read from the saved output), and on the CPU the
  channel sums are taken over a [N * C / 512, 512] view, the shape XLA:CPU reduces at 30+ GB/s. On other
  platforms the sums are plain `jnp.sum` over the leading axes, which their reduction emitters handle well and
  which keeps every sharding of the activation (rows, channels) as it is.

With `use_running_average=True` the layer is the same affine map as Flax's.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any

ACTIVATIONS = (None, "relu")


def _sums_reference(*arrays: jax.Array) -> tuple[jax.Array, ...]:
  """Per-channel sums over every axis but the last: the platform-neutral form (and the test reference)."""
  return tuple(a.sum(tuple(range(a.ndim - 1))) for a in arrays)


def _sums_wide(*arrays: jax.Array, width: int = 512) -> tuple[jax.Array, ...]:
  """The same sums through a [rows, r * C] view with r * C about `width`, then a sum over the r groups.

  A bitcast in row-major order; XLA:CPU's tree reduction handles this wide-row shape several times faster than
  the [N, C] one (bench/bn.py). Reshaping merges the leading axes, which a sharded activation would need to
  be gathered for: only used on the CPU.
  """
  out = []
  for a in arrays:
    c = a.shape[-1]
    n = a.size // c
    r = max(1, width // c)
    while n % r:  # r must divide the number of rows; powers of two divide the sizes that occur
      r //= 2
    out.append(a.reshape(n // r, r * c).sum(0).reshape(r, c).sum(0))
  return tuple(out)


def channel_sums(*arrays: jax.Array) -> tuple[jax.Array, ...]:
  """Sums of each [..., C] array over all axes but the last, in each platform's fastest form."""
  return lax.platform_dependent(*arrays, cpu=_sums_wide, default=_sums_reference)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, activation: str | None,
                     dtype: Dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode BatchNorm [+ ReLU] of [..., C] `x` with batch statistics.

  Args:
    x: activations, any float dtype; statistics are taken over every axis but the last.
    scale, bias: [C] float32.
    epsilon: added to the variance.
    activation: None or "relu", applied to the normalised output.
    dtype: dtype of the output.

  Returns:
    (y, batch mean [C] float32, batch variance [C] float32, biased as Flax's).
  """
  return _forward(x, scale, bias, epsilon, activation, dtype)[0]


def _forward(x, scale, bias, epsilon, activation, dtype):
  x32 = x.astype(jnp.float32)
  n = x.size // x.shape[-1]
  s1, s2 = channel_sums(x32, x32 * x32)
  mean = s1 / n
  var = jnp.maximum(0.0, s2 / n - mean * mean)
  rstd = lax.rsqrt(var + epsilon)
  y = (x32 - mean) * (scale * rstd) + bias
  if activation == "relu":
    y = jnp.maximum(y, 0.0)
  y = y.astype(dtype)
  return (y, mean, var), (x, y, scale, mean, rstd)


def _backward(epsilon, activation, dtype, residuals, cotangents):
  del epsilon, dtype
  x, y, scale, mean, rstd = residuals
  dy, dmean, dvar = cotangents
  n = x.size // x.shape[-1]
  dz = dy.astype(jnp.float32)
  if activation == "relu":
    dz = jnp.where(y > 0, dz, 0.0)  # the output is 0 exactly where the ReLU clipped
  centred = x.astype(jnp.float32) - mean
  # d bias = sum dz; d scale = sum dz * xhat (taken on centred x: no cancellation when |mean| >> std)
  dbias, dcentred = channel_sums(dz, dz * centred)
  dscale = dcentred * rstd
  dx = (scale * rstd) * (dz - dbias / n - centred * (rstd * rstd) * (dcentred / n))
  # The statistics are outputs too (for the running averages); their cotangents are zero in a training step,
  # but the gradient stays exact for any use: d mean / dx = 1/n, d var / dx = 2 (x - mean) / n.
  dx = dx + dmean / n + dvar * (2.0 / n) * centred
  return dx.astype(x.dtype), dscale, dbias


batch_norm_train.defvjp(_forward, _backward)


class BatchNorm(nn.Module):
  """BatchNorm over the last axis, optionally followed by a ReLU: [..., C] -> [..., C].

  Same fields, parameters, statistics and defaults as `flax.linen.BatchNorm` (channels-last only, no
  `axis_name`: under `jax.jit` a batch sharded over devices is normalised with the global statistics, which
  XLA's partitioner computes), plus `activation`.

  Attributes:
    use_running_average: normalise with the running averages (inference) instead of the batch statistics.
    momentum: decay of the running averages.
    epsilon: added to the variance.
    dtype: output dtype (default: x's and the parameters' promoted type, as Flax).
    param_dtype: dtype of `scale` and `bias`.
    use_bias, use_scale: learn a bias / scale.
    bias_init, scale_init: their initialisers.
    activation: None, or "relu" to return relu(BatchNorm(x)) with the ReLU folded into the same passes.
  """

  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Any = nn.initializers.zeros
  scale_init: Any = nn.initializers.ones
  activation: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"BatchNorm.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
    use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
    scale = self.param("scale", self.scale_init, (c,), self.param_dtype) if self.use_scale else None
    bias = self.param("bias", self.bias_init, (c,), self.param_dtype) if self.use_bias else None
    dtype = nn.dtypes.canonicalize_dtype(*(a for a in (x, scale, bias) if a is not None), dtype=self.dtype)
    # Statistics and the affine map in float32 whatever the compute dtype (Flax's force_float32_reductions).
    scale32 = jnp.ones((c,), jnp.float32) if scale is None else scale.astype(jnp.float32)
    bias32 = jnp.zeros((c,), jnp.float32) if bias is None else bias.astype(jnp.float32)

    if use_running_average:
      y = (x.astype(jnp.float32) - ra_mean.value) * (lax.rsqrt(ra_var.value + self.epsilon) * scale32) + bias32
      if self.activation == "relu":
        y = jnp.maximum(y, 0.0)
      return y.astype(dtype)

    y, mean, var = batch_norm_train(x, scale32, bias32, self.epsilon, self.activation, jnp.dtype(dtype))
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y
