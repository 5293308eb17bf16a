"""Inference over images of any size: whole image, sliding window, overlap-tile; test-time augmentation; ensembles.

Modes (`config.inference.mode`, docs/inference.md compares them with MMSegmentation and nnU-Net):
- "whole": the image in one call; a padded net sees it zero-padded (after normalisation) at the bottom/right up
  to its `size_divisor`, a valid-convolution net mirror-padded by its margin (segjax.forward); the
  scores are cropped back to H x W.
- "slide": MMSegmentation's `slide_inference`: windows of `tile_size` at `stride`, the last window of a row or
  column aligned to the border, each window's logits summed into the image and divided by the count map
  ("mean"), or weighted by a separable Gaussian of sigma = gaussian_sigma * tile side and divided by the summed
  weights ("gaussian", nnU-Net). An image smaller than a tile is zero-padded (after normalisation) to a tile.
- "overlap_tile" (U-Net, Fig. 2), for valid-convolution nets only: the image is mirror-padded by the net's
  margin; output tiles of `tile_size` (input windows tile + 2 margin) cover it. Tile offsets are multiples of
  the net's pooling grid (the step between its valid input sizes, 2**depth for UNetValid), so every tile sees
  the pooling windows the whole padded image would: the result equals whole-image valid inference exactly.

Test-time augmentation: for every scale s the image is resized by s (bilinear, no antialiasing, as cv2 and
PyTorch's interpolate), the mode runs on it and on each flipped copy (`hflip`, `vflip` and, with both, the
doubly flipped one: the four views of the flip group, as nnU-Net's mirroring), each view's logits are flipped
back and resized to H x W (bilinear), then turned into probabilities (merge="probs": softmax, as MMSegmentation's
SegTTAModel) or kept as logits (merge="logits"), and averaged. An ensemble averages over its members the same
way, each member with its own normalisation. Every (scale, flip, member) term has equal weight.

Streaming (`Segmenter.predict_image`, modes slide and overlap_tile at scale 1): windows are sent to the devices
`tile_batch` at a time, in the order of their top row; the host keeps only the band of rows some unprocessed
window still touches. Finished rows are normalised, merged, argmaxed and dropped, so neither the devices nor the
host ever hold full-resolution scores. Multi-scale TTA resizes the whole image and is not streamed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from segjax import forward as forward_lib
from segjax import sharding
from segjax.evaluation import tiling
from segjax.evaluation.inference_config import InferenceParams, MERGES, MODES, WEIGHTINGS  # noqa: F401  (API)
from segjax.ops import conv as conv_lib


@dataclasses.dataclass(frozen=True)
class Member:
  """One network of an ensemble.

  Attributes:
    model: the Flax module.
    variables: {"params": ..., ["batch_stats": ...]}.
    mean: per-channel mean (0..255 units) for "mean_std" normalisation.
    std: per-channel std.
    normalization: "mean_std" or "per_image" (segjax.forward).
  """
  model: flax.linen.Module
  variables: dict
  mean: tuple[float, ...]
  std: tuple[float, ...]
  normalization: str = "mean_std"

  @property
  def forward(self) -> forward_lib.Forward:
    """The member's forward pass (segjax.forward): its normalisation, padding and model."""
    return forward_lib.Forward(self.model, self.mean, self.std, self.normalization)


def check_same_classes(spec, where: str, other) -> None:
  """Refuses an ensemble member (trained in `where`) whose dataset spec `other` has another class list."""
  if tuple(other.class_names) != tuple(spec.class_names):
    raise ValueError(f"Ensemble member {where} predicts classes {list(other.class_names)}, but the recipe has "
                     f"{list(spec.class_names)}: every member must be trained on the same class list.")


def _resize(x: jax.Array, height: int, width: int) -> jax.Array:
  # No antialiasing: the bilinear interpolation of cv2.resize / torch interpolate(align_corners=False), which
  # MMSegmentation uses for images and logits alike.
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), "bilinear", antialias=False)


def _flip(x: jax.Array, flip: tuple[bool, bool], axes=(1, 2)) -> jax.Array:
  for do, axis in zip(flip, axes):
    if do:
      x = jnp.flip(x, axis)
  return x


def _to_merge(logits, merge: str, xp=jnp):
  if merge == "logits":
    return logits
  if xp is jnp:
    return jax.nn.softmax(logits, axis=-1)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------------------------------- segmenter


class Segmenter:
  """Runs one network or an ensemble over images per an InferenceParams.

  Args:
    members: the networks; equal weights.
    num_classes: K, the number of outputs every member has.
    params: how to run them.
    mesh: devices to run on: the members' variables are replicated over it and tile batches split over its
      data axis. None: one device.
    conv_backend: the kernels of the members' convolutions ("xla" or "onednn", segjax.ops.conv); None leaves
      the caller's choice (XLA's unless traced under `conv.backend("onednn")`).
  """

  def __init__(self, members: Sequence[Member], num_classes: int, params: InferenceParams, mesh: Mesh | None = None,
               conv_backend: str | None = None):
    if not members:
      raise ValueError("Segmenter needs at least one member (network).")
    self.members = tuple(members)
    self.num_classes = int(num_classes)
    self.params = params
    self.mesh = mesh
    self.conv_backend = conv_backend
    for member in self.members:
      params.check_model(member.model)
      if member.normalization not in ("mean_std", "per_image"):
        raise ValueError(f"Member normalization={member.normalization!r}: choose 'mean_std' or 'per_image'.")
    if params.mode == "overlap_tile":
      geometry = {(int(m.model.input_margin), tiling.pooling_grid(m.model)) for m in self.members}
      if len(geometry) > 1:
        raise ValueError(f"overlap_tile ensemble of nets with different (margin, pooling grid) {sorted(geometry)}: "
                         "their tiles would differ; use members of one architecture or mode=whole.")
    if mesh is not None:
      target = NamedSharding(mesh, P())
      self._tile_sharding = NamedSharding(mesh, P(sharding.DATA_AXIS))
      n = mesh.shape[sharding.DATA_AXIS]
      self._tile_batch = -(-params.tile_batch // n) * n
    else:
      target = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      self._tile_sharding = target
      self._tile_batch = params.tile_batch
    self._target = target
    self._variables = tuple(jax.device_put(m.variables, target) for m in self.members)
    self._jit_batch = jax.jit(lambda variables, images: self.batch_scores(images, variables))
    self._jit_tiles: dict[Any, Callable] = {}

  def set_variables(self, variables: Sequence[dict]) -> None:
    """New weights for the same members (evaluation during training): the jitted functions are kept, so a new
    state costs no compilation."""
    self._variables = tuple(jax.device_put(v, self._target) for v in variables)

  @property
  def variables(self) -> tuple[dict, ...]:
    """The members' variables as the Segmenter holds them (pass them to `batch_scores` inside a jit)."""
    return self._variables

  @property
  def num_terms(self) -> int:
    """Predictions averaged per pixel: scales x flip views x members."""
    return len(self.params.scales) * len(self.params.flips) * len(self.members)

  # ---------------------------------------------------------------------------------------- whole, batched

  def batch_scores(self, images: jax.Array, variables: Sequence[dict] | None = None) -> jax.Array:
    """Scores [B, H, W, K] float32 of [B, H, W, C] images (0..255) by mode "whole" with the TTA and ensemble.

    Jittable; inside a jit pass `variables` (e.g. `self.variables` as a jit argument) so the parameters are not
    baked into the program as constants. The batch may be sharded over a mesh.
    """
    with conv_lib.backend(self.conv_backend):
      return self._batch_scores(images, self._variables if variables is None else tuple(variables))

  def _batch_scores(self, images: jax.Array, variables: tuple[dict, ...]) -> jax.Array:
    p = self.params
    b, h, w, _ = images.shape
    x = images.astype(jnp.float32)
    stats = forward_lib.per_image_stats(x) if any(m.normalization == "per_image" for m in self.members) else None
    total = jnp.zeros((b, h, w, self.num_classes), jnp.float32)
    for scale in p.scales:
      hs, ws = (h, w) if scale == 1 else (int(h * scale + 0.5), int(w * scale + 0.5))
      xs = x if (hs, ws) == (h, w) else _resize(x, hs, ws)
      for flip in p.flips:
        xv = _flip(xs, flip)
        for member, var in zip(self.members, variables):
          logits = _flip(member.forward.logits(var, member.forward.normalize(xv, stats)), flip)
          if (hs, ws) != (h, w):
            logits = _resize(logits, h, w)
          total = total + _to_merge(logits, p.merge)
    return total / self.num_terms

  # ---------------------------------------------------------------------------------------- one image

  def image_scores(self, image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Scores [H, W, K] float32 on the host of ONE [H, W, C] image (0..255), any size and mode.

    Args:
      image: the image (uint8 or float).
      out: where to write the scores ([H, W, K], e.g. a np.memmap); allocated when None.
    """
    image = self._check_image(image)
    h, w = image.shape[:2]
    if out is None:
      out = np.empty((h, w, self.num_classes), np.float32)
    if self.params.mode == "whole":
      out[...] = np.asarray(self._jit_batch(self._variables, image[None])[0])
      return out
    self._sweep(image, lambda r0, r1, scores: out.__setitem__(slice(r0, r1), scores))
    return out

  def predict_image(self, image: np.ndarray, probs_out: np.ndarray | None = None) -> np.ndarray:
    """Labels [H, W] of ONE [H, W, C] image: uint8 when K <= 256, else int32.

    slide / overlap_tile at scale 1 stream (see the module docstring): host memory ~ image + labels + one band
    of rows. Finished rows are argmaxed and, when `probs_out` ([H, W, K], e.g. a float16 np.memmap) is given,
    their scores copied there. mode="whole" and multi-scale TTA compute the whole score map first.
    """
    image = self._check_image(image)
    h, w = image.shape[:2]
    labels = np.empty((h, w), np.uint8 if self.num_classes <= 256 else np.int32)

    def sink(r0, r1, scores):
      labels[r0:r1] = scores.argmax(-1)
      if probs_out is not None:
        probs_out[r0:r1] = scores

    if self.params.mode == "whole":
      sink(0, h, self.image_scores(image))
    else:
      self._sweep(image, sink)
    return labels

  def _check_image(self, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
      image = image[..., None]
    if image.ndim != 3:
      raise ValueError(f"image of shape {image.shape}: give one image [H, W, C]")
    return image

  # ---------------------------------------------------------------------------------------- tiled, streamed

  def _geometry(self) -> tuple[tuple[int, int], tuple[int, int], int, str]:
    """(input window, output window, margin, padding mode) of the tiled modes."""
    p = self.params
    if p.mode == "slide":
      return tuple(p.tile_size), tuple(p.tile_size), 0, "zero"
    m = int(self.members[0].model.input_margin)
    return tuple(t + 2 * m for t in p.tile_size), tuple(p.tile_size), m, "reflect"

  def _windows(self, h: int, w: int) -> list[tiling.Window]:
    p = self.params
    (oh, ow) = self._geometry()[1]
    if p.mode == "slide":
      rows = tiling.slide_starts(max(h, oh), oh, p.stride[0])
      cols = tiling.slide_starts(max(w, ow), ow, p.stride[1])
    else:
      grid = tiling.pooling_grid(self.members[0].model)
      rows, cols = tiling.tile_starts(h, oh, grid), tiling.tile_starts(w, ow, grid)
    out = []
    for v, (fv, _) in enumerate(p.flips):
      for r in rows:
        top = max(0, h - (r + oh)) if fv else r
        out.extend(tiling.Window(v, r, c, top) for c in cols)
    return sorted(out, key=lambda win: (win.top, win.view, win.row, win.col))

  def _tile_fn(self, in_size, out_size, weighted: bool):
    key = (in_size, out_size, weighted)
    if key not in self._jit_tiles:
      weight = jnp.asarray(tiling.gaussian_weights(out_size, self.params.gaussian_sigma)) if weighted else None
      members = self.members

      def tiles(variables, raw, mask, stats):
        x = raw.astype(jnp.float32)
        outs = []
        with conv_lib.backend(self.conv_backend):
          for member, var in zip(members, variables):
            xn = jnp.where(mask[..., None], member.forward.normalize(x, stats), 0.0)
            logits = member.forward.apply(var, xn).astype(jnp.float32)
            outs.append(logits if weight is None else logits * weight[None, :, :, None])
        return jnp.stack(outs)  # [M, B, oh, ow, K]

      self._jit_tiles[key] = jax.jit(tiles)
    return self._jit_tiles[key]

  def _sweep(self, image: np.ndarray, sink: Callable[[int, int, np.ndarray], None]) -> None:
    """Calls sink(r0, r1, scores [r1 - r0, W, K] float32) for consecutive row bands of the merged scores."""
    p = self.params
    h, w = image.shape[:2]
    stats = None
    if any(m.normalization == "per_image" for m in self.members):
      stats = forward_lib.per_image_stats_host(image)
    if p.scales == (1.0,):
      self._stream(image, stats, lambda r0, r1, terms: sink(r0, r1, self._merge_terms(terms, len(p.scales))))
      return
    total = np.zeros((h, w, self.num_classes), np.float32)
    x = jnp.asarray(image, jnp.float32)[None]
    for scale in p.scales:
      hs, ws = int(h * scale + 0.5), int(w * scale + 0.5)
      scaled = image if (hs, ws) == (h, w) else np.asarray(_resize(x, hs, ws)[0])
      terms = np.zeros((len(p.flips) * len(self.members), hs, ws, self.num_classes), np.float32)
      self._stream(scaled, stats, lambda r0, r1, t: terms.__setitem__((slice(None), slice(r0, r1)), t))
      if (hs, ws) != (h, w):
        terms = np.asarray(_resize(jnp.asarray(terms), h, w))
      total += _to_merge(terms, p.merge, np).sum(0)
    sink(0, h, total / self.num_terms)

  def _merge_terms(self, terms: np.ndarray, num_scales: int) -> np.ndarray:
    return _to_merge(terms, self.params.merge, np).sum(0) / (len(terms) * num_scales)

  def _stream(self, image: np.ndarray, stats, emit: Callable[[int, int, np.ndarray], None]) -> None:
    """Runs every window of every flip view in order of its top row; calls emit(r0, r1, terms) with the
    normalised logits [views * members, r1 - r0, W, K] of rows no remaining window touches."""
    p = self.params
    h, w = image.shape[:2]
    (ih, iw), (oh, ow), margin, padding = self._geometry()
    n_views, n_members, k = len(p.flips), len(self.members), self.num_classes
    weighted = p.mode == "slide" and p.weighting == "gaussian"
    weight = tiling.gaussian_weights((oh, ow), p.gaussian_sigma) if weighted else np.ones((oh, ow), np.float32)
    fn = self._tile_fn((ih, iw), (oh, ow), weighted)
    stats_arr = np.zeros((2,), np.float32) if stats is None else np.asarray(stats, np.float32)
    windows = self._windows(h, w)
    cap = 2 * oh
    acc = np.zeros((n_views, n_members, cap, w, k), np.float32)
    wsum = np.zeros((n_views, cap, w), np.float32)
    base, used = 0, 0  # acc row 0 is image row `base`; rows base..base+used-1 hold partial sums
    tb = self._tile_batch
    for start in range(0, len(windows), tb):
      batch = windows[start:start + tb]
      raw = np.zeros((tb, ih, iw, image.shape[2]), image.dtype)
      mask = np.zeros((tb, ih, iw), bool)
      for i, win in enumerate(batch):
        raw[i], mask[i] = tiling.read_window(image, win, p.flips[win.view], margin, (ih, iw), padding)
      out = np.asarray(fn(self._variables, jax.device_put(raw, self._tile_sharding),
                          jax.device_put(mask, self._tile_sharding), stats_arr))
      for i, win in enumerate(batch):
        fv, fh = p.flips[win.view]
        logits = out[:, i]  # [M, oh, ow, K] in view coordinates
        r0, r1 = win.row, min(win.row + oh, h)  # output rows inside the (view) image
        c0, c1 = win.col, min(win.col + ow, w)
        logits, wt = logits[:, :r1 - r0, :c1 - c0], weight[:r1 - r0, :c1 - c0]
        if fv:
          logits, wt, (r0, r1) = logits[:, ::-1], wt[::-1], (h - r1, h - r0)
        if fh:
          logits, wt, (c0, c1) = logits[:, :, ::-1], wt[:, ::-1], (w - c1, w - c0)
        if r1 - base > acc.shape[2]:  # a batch spanning several rows of windows: grow the band
          grow = r1 - base - acc.shape[2] + cap
          acc = np.concatenate([acc, np.zeros((*acc.shape[:2], grow, w, k), np.float32)], axis=2)
          wsum = np.concatenate([wsum, np.zeros((n_views, grow, w), np.float32)], axis=1)
        acc[win.view, :, r0 - base:r1 - base, c0:c1] += logits
        wsum[win.view, r0 - base:r1 - base, c0:c1] += wt
        used = max(used, r1 - base)
      done = windows[start + tb].top if start + tb < len(windows) else h
      n = done - base
      if n > 0:
        # In chunks of ~256 K scores: the temporaries of the merge (division, softmax) stay small beside the band.
        chunk = max(1, (1 << 18) // (w * k * n_views * n_members))
        for r in range(0, n, chunk):
          e = min(r + chunk, n)
          terms = acc[:, :, r:e] / wsum[:, None, r:e, :, None]
          emit(base + r, base + e, terms.reshape(n_views * n_members, e - r, w, k))
        rest = max(used - n, 0)
        for r in range(0, rest, n):  # shift the band up by n rows, in pieces that do not overlap: no temporary
          c = min(n, rest - r)
          acc[:, :, r:r + c] = acc[:, :, n + r:n + r + c]
          wsum[:, r:r + c] = wsum[:, n + r:n + r + c]
        acc[:, :, rest:used] = 0
        wsum[:, rest:used] = 0
        base, used = done, rest


