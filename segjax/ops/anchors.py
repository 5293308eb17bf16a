"""FPN anchors as torchvision's AnchorGenerator makes them for maskrcnn_resnet50_fpn.

Anchors depend only on static shapes (the padded image size and the feature map sizes), so they are computed
once in numpy at trace time and enter a jitted program as a constant: nothing to vmap or differentiate, and
the same array for every image of a batch (torchvision repeats one list per image).

Order (torchvision's): levels in order; within a level, feature map positions row-major (y, then x); at each
position the level's cell anchors, aspect ratios outer and sizes inner. Cell anchors are zero-centred
[-w/2, -h/2, w/2, h/2] with h/w = aspect ratio, computed in float32 and rounded half to even (torch.round);
positions are shifted by (x * stride_w, y * stride_h) with the integer strides image_size // feature_size.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

# maskrcnn_resnet50_fpn: one size per FPN level P2..P6 and three aspect ratios (height / width) everywhere.
FPN_SIZES = ((32,), (64,), (128,), (256,), (512,))
FPN_ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 5


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
  """Zero-centred anchors of one level, [len(aspect_ratios) * len(sizes), 4] float32 (generate_anchors)."""
  scales = np.asarray(sizes, np.float32)
  ratios = np.asarray(aspect_ratios, np.float32)
  h_ratios = np.sqrt(ratios)
  w_ratios = np.float32(1) / h_ratios
  ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
  # np.round rounds half to even, as torch.round does.
  return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)).astype(np.float32)


def anchor_strides(image_size: Sequence[int], feature_sizes: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
  """(stride_h, stride_w) per level: the padded image size floor-divided by the feature map size."""
  ih, iw = (int(s) for s in image_size)
  return [(ih // int(fh), iw // int(fw)) for fh, fw in feature_sizes]


def anchors_per_level(image_size: Sequence[int], feature_sizes: Sequence[Sequence[int]],
                      sizes: Sequence[Sequence[float]] = FPN_SIZES,
                      aspect_ratios: Sequence[Sequence[float]] = FPN_ASPECT_RATIOS) -> list[np.ndarray]:
  """Anchors of every level, each [H_l * W_l * A_l, 4] float32 numpy.

  Args:
    image_size: (H, W) of the padded image batch (torchvision's image_list.tensors.shape[-2:]).
    feature_sizes: (H_l, W_l) of every feature map, finest first.
    sizes: anchor sizes per level.
    aspect_ratios: aspect ratios (height / width) per level.
  """
  if not len(feature_sizes) == len(sizes) == len(aspect_ratios):
    raise ValueError(f"one entry per level needed: {len(feature_sizes)} feature maps, {len(sizes)} sizes, "
                     f"{len(aspect_ratios)} aspect ratio sets")
  out = []
  for (fh, fw), (sh, sw), size, ratios in zip(feature_sizes, anchor_strides(image_size, feature_sizes), sizes,
                                              aspect_ratios):
    base = cell_anchors(size, ratios)
    shift_y, shift_x = np.meshgrid(np.arange(int(fh)) * sh, np.arange(int(fw)) * sw, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=1).astype(np.float32)
    out.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
  return out


def fpn_anchors(image_size: Sequence[int], feature_sizes: Sequence[Sequence[int]],
                sizes: Sequence[Sequence[float]] = FPN_SIZES,
                aspect_ratios: Sequence[Sequence[float]] = FPN_ASPECT_RATIOS) -> jnp.ndarray:
  """All levels' anchors concatenated, [sum_l H_l * W_l * A_l, 4] float32 (a constant under jit).

  Arguments as `anchors_per_level`; every argument is static (Python ints and tuples).
  """
  return jnp.asarray(np.concatenate(anchors_per_level(image_size, feature_sizes, sizes, aspect_ratios), axis=0))


def num_anchors_per_level(feature_sizes: Sequence[Sequence[int]],
                          sizes: Sequence[Sequence[float]] = FPN_SIZES,
                          aspect_ratios: Sequence[Sequence[float]] = FPN_ASPECT_RATIOS) -> list[int]:
  """H_l * W_l * A_l per level: where each level's anchors start and end in `fpn_anchors`."""
  return [int(fh) * int(fw) * len(s) * len(r) for (fh, fw), s, r in zip(feature_sizes, sizes, aspect_ratios)]
