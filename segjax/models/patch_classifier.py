"""Sliding-window segmentation: a CNN that classifies the centre pixel of a patch, slid over every pixel.

The pre-FCN baseline of the lecture, as in Ciresan, Giusti, Gambardella, Schmidhuber, "Deep Neural Networks
Segment Neuronal Membranes in Electron Microscopy Images", NIPS 2012: "the label of each pixel is predicted from
raw pixel values in a square window centered on it". The default classifier is their network N4 (Table 1,
window w = 65):

  input 1 x 65 x 65 -> conv 4x4, 48 maps (62) -> max-pool 2x2 (31) -> conv 4x4, 48 (28) -> max-pool (14)
  -> conv 3x3, 48 (12) -> max-pool (6) -> conv 3x3, 48 (4) -> max-pool (2) -> fully connected 200 -> 2 outputs

Convolutions are unpadded; a pooling of an odd map drops the last row/column (floor). IDSIA's networks of the
time use a scaled tanh (Ciresan et al., CVPR 2012); `activation='tanh'` is plain tanh (the scale only rescales
the initialisation), 'relu' is offered too. Max-pooling and these monotone activations commute, so their order
does not matter.

Dense prediction evaluates the classifier once per pixel on a patch of the image mirror-padded by
patch_size // 2 (reflection without repeating the edge, like U-Net's overlap-tile padding), chunk by chunk so
that memory stays bounded; `stride` > 1 classifies one pixel per stride x stride block and copies its scores to
the block (nearest-neighbour upsampling), the usual speed trade-off. This costs ~H*W full classifier passes:
that redundancy is what FCNs remove, and why this model is a baseline.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from segjax.models.layers import Dtype, check_images, max_pool_2x2
from segjax.ops.conv import Conv

_ACTIVATIONS = {"tanh": jnp.tanh, "relu": nn.relu}


def window_anchors(size: int, stride: int) -> np.ndarray:
  """The pixels classified along one axis: the centre of every stride-long block (clipped to the image).

  With stride 1 every pixel; otherwise pixel i takes the scores of anchor i // stride, which lies at most
  stride // 2 pixels away inside the same block.
  """
  return np.minimum(np.arange(0, size, stride) + (stride - 1) // 2, size - 1)


def sliding_window_predict(classify_fn: Callable[[jax.Array], jax.Array], image: jax.Array, patch_size: int,
                           stride: int = 1, chunk_size: int = 512) -> jax.Array:
  """Dense scores of a centre-pixel patch classifier slid over every pixel of `image`.

  Args:
    classify_fn: patches [N, patch_size, patch_size, C] -> scores [N, K].
    image: [B, H, W, C]; any H, W >= 1.
    patch_size: side of the square patch; the pixel sits at index patch_size // 2 of it (for an even size the
      patch extends one pixel further up/left than down/right).
    stride: 1 classifies every pixel; s > 1 classifies one pixel per s x s block (`window_anchors`) and
      nearest-upsamples.
    chunk_size: patches per classifier call; the last chunk is padded with copies of the first patch.

  Returns:
    scores [B, H, W, K], dtype of classify_fn's output.
  """
  if image.ndim != 4:
    raise ValueError(f"sliding_window_predict expects images [B, H, W, C], got shape {image.shape}")
  if patch_size < 1 or stride < 1 or chunk_size < 1:
    raise ValueError(f"patch_size, stride and chunk_size must be >= 1, got {patch_size}, {stride}, {chunk_size}")
  b, h, w, c = image.shape
  before = patch_size // 2
  after = patch_size - 1 - before
  padded = jnp.pad(image, ((0, 0), (before, after), (before, after), (0, 0)), mode="reflect")
  rows, cols = window_anchors(h, stride), window_anchors(w, stride)
  # Patch (n, r, c) of the padded image starts at (r, c): its centre is pixel (r, c) of the original.
  index = np.stack(np.meshgrid(np.arange(b), rows, cols, indexing="ij"), axis=-1).reshape(-1, 3)
  total = index.shape[0]
  chunk_size = min(chunk_size, total)
  chunks = -(-total // chunk_size)
  index = np.concatenate([index, np.zeros((chunks * chunk_size - total, 3), index.dtype)])
  index = jnp.asarray(index.reshape(chunks, chunk_size, 3), jnp.int32)

  def one_patch(i):
    return lax.dynamic_slice(padded, (i[0], i[1], i[2], 0), (1, patch_size, patch_size, c))[0]

  # Recompute each chunk in the backward pass instead of keeping every patch's activations alive.
  @jax.checkpoint
  def classify_chunk(chunk_index):
    return classify_fn(jax.vmap(one_patch)(chunk_index))

  scores = lax.map(classify_chunk, index)
  scores = scores.reshape(chunks * chunk_size, -1)[:total].reshape(b, len(rows), len(cols), -1)
  if stride > 1:
    scores = jnp.repeat(jnp.repeat(scores, stride, axis=1), stride, axis=2)[:, :h, :w]
  return scores


class PatchNet(nn.Module):
  """Centre-pixel classifier: patches [N, p, p, C] -> scores [N, K] (Ciresan et al. 2012, Table 1).

  Attributes:
    num_classes: K.
    features: output maps of each unpadded convolution, each followed by a 2x2 max-pooling.
    kernel_sizes: kernel side of each convolution.
    hidden: width of the fully connected hidden layer.
    activation: 'tanh' or 'relu'.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int
  features: tuple[int, ...] = (48, 48, 48, 48)
  kernel_sizes: tuple[int, ...] = (4, 4, 3, 3)
  hidden: int = 200
  activation: str = "tanh"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = _ACTIVATIONS[self.activation]
    for i, (features, k) in enumerate(zip(self.features, self.kernel_sizes)):
      x = Conv(features, (k, k), padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype,
               name=f"conv{i}")(x)
      _, h, w, _ = x.shape
      x = act(max_pool_2x2(x[:, :h // 2 * 2, :w // 2 * 2]))
    x = x.reshape(x.shape[0], -1)
    x = act(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x))
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="classifier")(x)


def patch_feature_sides(patch_size: int, kernel_sizes: tuple[int, ...]) -> list[int]:
  """Side of the map after each conv + 2x2 pooling stage (floor), e.g. 65, (4, 4, 3, 3) -> [31, 14, 6, 2]."""
  sides, side = [], patch_size
  for k in kernel_sizes:
    side = (side - k + 1) // 2
    sides.append(side)
  return sides


class PatchClassifier(nn.Module):
  """Sliding-window segmenter: [B, H, W, C] -> logits [B, H, W, K] float32, any H, W.

  The logit of pixel (i, j) is `PatchNet` applied to the patch_size x patch_size patch centred on it (or on its
  block's anchor when stride > 1), from the image mirror-padded by patch_size // 2.

  Attributes:
    num_classes: K.
    patch_size: window side (Ciresan N4: 65).
    features: maps of each convolution stage (N4: four of 48).
    kernel_sizes: kernels of each convolution stage (N4: 4, 4, 3, 3).
    hidden: fully connected width (N4: 200).
    activation: 'tanh' (paper) or 'relu'.
    stride: classify every stride-th pixel in each direction and nearest-upsample (1: every pixel).
    chunk_size: patches per classifier call; bounds memory to about chunk_size x one patch's activations
      (N4: 0.74 MB per patch for the first layer, so ~380 MB at 512).
    dtype: compute dtype; parameters stay `param_dtype`.
    param_dtype: parameter dtype.
  """

  num_classes: int
  patch_size: int = 65
  features: tuple[int, ...] = (48, 48, 48, 48)
  kernel_sizes: tuple[int, ...] = (4, 4, 3, 3)
  hidden: int = 200
  activation: str = "tanh"
  stride: int = 1
  chunk_size: int = 512
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _check(self) -> None:
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f"PatchClassifier.activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
    if len(self.features) != len(self.kernel_sizes):
      raise ValueError(f"PatchClassifier.features {self.features} and kernel_sizes {self.kernel_sizes} must "
                       f"have the same length")
    sides = patch_feature_sides(self.patch_size, tuple(self.kernel_sizes))
    if min(sides, default=self.patch_size) < 1:
      raise ValueError(f"patch_size {self.patch_size} is too small for kernels {self.kernel_sizes}: the maps after "
                       f"each conv + pool stage would be {sides}; use a larger patch_size")

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train  # no BatchNorm or dropout
    check_images(x, "PatchClassifier")
    self._check()
    net = PatchNet(self.num_classes, tuple(self.features), tuple(self.kernel_sizes), self.hidden, self.activation,
                   dtype=self.dtype, param_dtype=self.param_dtype, name="net")
    # Run once on one patch so the parameters exist (init) and are bound (apply); under jit the unused result
    # is dropped. The sliding window then calls an unbound copy: Flax modules cannot be called inside lax.map.
    net(jnp.zeros((1, self.patch_size, self.patch_size, x.shape[-1]), self.dtype))
    variables = net.variables
    unbound = net.clone(parent=None, name=None)
    logits = sliding_window_predict(lambda patches: unbound.apply(variables, patches), x.astype(self.dtype),
                                    self.patch_size, self.stride, self.chunk_size)
    return logits.astype(jnp.float32)
