"""Input pipeline: tfds data source -> grain -> per-process numpy batches -> global sharded jax.Arrays.

The host decodes, pads and crops; augmentation runs on device (segjax.data.augment).

A batch is a dict of
  image  uint8   [B, H, W, C]  normalised on device, so the host->device copy moves 1 byte per channel;
  label  int32   [B, H, W]     class ids; ignored pixels hold 0 and are masked by `weight`;
  weight float32 [B, H, W]     1 for labelled pixels, 0 for the ignore label, padding and padded examples;
and for evaluation also
  index  int32   [B]           position of the example in its split, -1 for padding examples.
The ignore label becomes weight 0 here, at the boundary, so no loss or metric ever sees a magic id.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Iterator, Sequence

import grain
import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from segjax import sharding as sharding_lib
from segjax.data import datasets


@dataclasses.dataclass(frozen=True)
class Example:
  image: np.ndarray  # uint8 [H, W, C]
  label: np.ndarray  # int32 [H, W]
  weight: np.ndarray  # float32 [H, W]


def to_example(raw: dict[str, Any], ignore_label: int | None, num_classes: int,
               reduce_zero_label: bool = False) -> Example:
  """Converts a decoded tfds example into (image, label, weight), masking the ignore label.

  Args:
    raw: a decoded example (`image`, `label`, optionally `filename`).
    ignore_label: raw id meaning "not labelled", or None.
    num_classes: K.
    reduce_zero_label: MMSegmentation's reduce_zero_label (ADE20K-style masks): raw 0 is ignored and raw c
      becomes class c - 1, so the raw ids 1..K are the K classes (and the ignore label stays ignored).

  Raises:
    ValueError: naming the example, the sizes or the id and how many pixels hold it, and the fix: an image and
      label of different sizes, or a label id outside the class range that is not the ignore label.
  """
  image = np.asarray(raw["image"])
  label = np.asarray(raw["label"])
  if label.ndim == 3:
    label = label[..., 0]
  # Builders check this while preparing; a source that skipped it must not reach a crop (or a silent broadcast).
  afresh = "and prepare the dataset afresh (delete its prepared copy under --config.dataset.data_dir)"
  if image.shape[:2] != label.shape:
    raise ValueError(f"Example {_name(raw)}: image is {image.shape[0]}x{image.shape[1]} but its label is "
                     f"{label.shape[0]}x{label.shape[1]} (HxW); image and mask must have the same height and "
                     f"width: re-export the mask at the image's size {afresh}.")
  valid = np.ones(label.shape, bool) if ignore_label is None else label != ignore_label
  # int32 first: uint8 would wrap 0 - 1 to 255.
  label = label.astype(np.int32)
  first = 0
  if reduce_zero_label:
    valid &= label != 0
    label = label - 1
    first = 1
  out_of_range = valid & (label >= num_classes)
  if out_of_range.any():
    bad = int(label[out_of_range].max()) + first
    ignore = "this dataset has no ignore label" if ignore_label is None else f"the ignore label is {ignore_label}"
    reduced = (f"; reduce_zero_label is on: raw 0 is ignored and raw 1..{num_classes} are the classes"
               if reduce_zero_label else "")
    raise ValueError(f"Example {_name(raw)}: label id {bad} ({int(out_of_range.sum())} pixels with ids >= "
                     f"{num_classes + first}) is outside {first}..{num_classes - 1 + first} ({num_classes} "
                     f"classes; {ignore}{reduced}): fix the mask or the dataset's class list {afresh}.")
  return Example(image=image, label=np.where(valid, label, 0).astype(np.int32),
                 weight=valid.astype(np.float32))


def _name(raw: dict[str, Any]) -> str:
  name = raw.get("filename", "?")
  return name.decode() if isinstance(name, bytes) else str(name)


def pad_to(ex: Example, height: int, width: int) -> Example:
  """Pads bottom/right to (height, width) with zeros and weight 0."""
  h, w = ex.label.shape
  if h == height and w == width:
    return ex
  pad = ((0, height - h), (0, width - w))
  return Example(image=np.pad(ex.image, pad + ((0, 0),)), label=np.pad(ex.label, pad),
                 weight=np.pad(ex.weight, pad))


def _linear_taps(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source rows (lo, hi) and weights of hi for bilinear resizing with half-pixel centres along one axis."""
  src = np.clip((np.arange(n_out) + 0.5) / scale - 0.5, 0, n_in - 1)
  lo = np.floor(src).astype(np.int64)
  return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)


def rescale(ex: Example, scale: float) -> Example:
  """The example resized by `scale`: the image bilinearly, label and weight by their nearest pixel.

  The image resize is the one multi-scale inference applies on device (`inference._resize`: half-pixel
  centres, no antialiasing, as cv2's INTER_LINEAR), so a model trained on `train_scale` s and evaluated with
  `inference.scales=(s,)` sees the same kind of pixels in both.
  """
  h, w = ex.label.shape
  oh, ow = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
  if (oh, ow) == (h, w):
    return ex
  r0, r1, fr = _linear_taps(h, oh, oh / h)
  c0, c1, fc = _linear_taps(w, ow, ow / w)
  x = ex.image.astype(np.float32)
  x = x[r0] * (1 - fr)[:, None, None] + x[r1] * fr[:, None, None]
  x = x[:, c0] * (1 - fc)[None, :, None] + x[:, c1] * fc[None, :, None]
  if np.issubdtype(ex.image.dtype, np.integer):
    info = np.iinfo(ex.image.dtype)
    x = np.clip(np.rint(x), info.min, info.max)
  rows = np.minimum(((np.arange(oh) + 0.5) * h / oh).astype(np.int64), h - 1)
  cols = np.minimum(((np.arange(ow) + 0.5) * w / ow).astype(np.int64), w - 1)
  return Example(image=x.astype(ex.image.dtype), label=ex.label[np.ix_(rows, cols)],
                 weight=ex.weight[np.ix_(rows, cols)])


class RandomCrop(grain.transforms.RandomMap):
  """Random crop to a fixed size, padding smaller images first (padding gets weight 0), joint on image and mask.

  With `scale_range` (lo, hi) other than (1, 1) each example is first resized by a factor drawn uniformly from
  it (MMSegmentation's RandomResize ratio_range): (0.5, 0.5) trains on half-resolution frames.

  The host only decodes, rescales and crops, so every batch has one shape; flips and every other augmentation run on
  device (segjax.data.augment). grain seeds `rng` from the sampler seed and the record's position in the
  sampled sequence, so the crop depends only on (seed, step), not on worker count or timing.
  """

  def __init__(self, crop_size: Sequence[int], ignore_label: int | None, num_classes: int,
               reduce_zero_label: bool = False, scale_range: Sequence[float] = (1.0, 1.0)):
    self.crop_h, self.crop_w = crop_size
    self.scale_range = tuple(float(s) for s in scale_range)
    self.ignore_label = ignore_label
    self.num_classes = num_classes
    self.reduce_zero_label = reduce_zero_label

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    ex = to_example(element, self.ignore_label, self.num_classes, self.reduce_zero_label)
    if self.scale_range != (1.0, 1.0):
      lo, hi = self.scale_range
      ex = rescale(ex, lo if lo == hi else float(rng.uniform(lo, hi)))
    h, w = ex.label.shape
    ex = pad_to(ex, max(h, self.crop_h), max(w, self.crop_w))
    h, w = ex.label.shape
    top = int(rng.integers(0, h - self.crop_h + 1))
    left = int(rng.integers(0, w - self.crop_w + 1))
    window = (slice(top, top + self.crop_h), slice(left, left + self.crop_w))
    return {"image": np.ascontiguousarray(ex.image[window]), "label": np.ascontiguousarray(ex.label[window]),
            "weight": np.ascontiguousarray(ex.weight[window])}


def _check_rows(rows: np.ndarray | None, batch_size: int) -> np.ndarray:
  rows = np.arange(batch_size) if rows is None else np.asarray(rows, np.int64)
  if not len(rows) or rows.min() < 0 or rows.max() >= batch_size or len(np.unique(rows)) != len(rows):
    raise ValueError(f"rows={rows.tolist()} must be distinct rows of a batch of {batch_size}.")
  return rows


class _GlobalRows:
  """Maps this process's k-th example to the global stream: row rows[k % L] of global batch k // L."""

  def __init__(self, stream: grain.MapDataset, batch_size: int, rows: np.ndarray):
    self.stream, self.batch_size, self.rows = stream, batch_size, rows

  def __call__(self, k: int):
    batch, j = divmod(int(k), len(self.rows))
    return self.stream[batch * self.batch_size + int(self.rows[j])]


def train_dataset(source, transform: grain.transforms.RandomMap, *, batch_size: int, seed: int,
                  rows: Sequence[int] | None = None, name: str = "the dataset") -> grain.MapDataset:
  """This process's endless training batches: element s holds rows `rows` of the global batch of step s + 1.

  The global batch of step s + 1 is examples [s * B, (s + 1) * B) of one stream: the split shuffled from `seed`,
  reshuffled every epoch, each example mapped by the task's `transform` (e.g. `RandomCrop`) with an rng grain
  derives from `seed` and the example's position in the stream. So a batch is a pure function of (source, seed,
  s), independent of how many processes or devices share it and of how many workers decode: the step alone is the
  data position, and 1 process with 8 devices trains on exactly the batches 2 processes with 4 devices each do.

  Each process reads only its own rows (`rows`, from `sharding.process_rows`: the rows its devices hold; default
  all of them, one process), so the per-process input cost is B / (number of processes) examples a step.
  """
  if len(source) == 0:
    raise ValueError(f"The training split of {name} is empty (0 examples): check "
                     "--config.dataset.train_split (a slice like 'train[10:10]' selects nothing) and the data.")
  rows = _check_rows(rows, batch_size)
  stream = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None).random_map(transform, seed=seed)
  local = grain.MapDataset.range(len(rows) * (len(stream) // batch_size))
  return local.map(_GlobalRows(stream, batch_size, rows)).batch(len(rows), drop_remainder=True)


def train_iterator(dataset: grain.MapDataset, *, start_step: int = 0, worker_count: int = 0,
                   num_threads: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """Iterates `train_dataset` from the batch of step `start_step + 1`.

  With `worker_count` > 0, worker processes prepare whole batches in turn (worker w makes batches w, w + n, ...)
  and grain interleaves them back in order, so the batches are the same for any worker count.
  """
  ds = dataset[start_step:].to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                              prefetch_buffer_size=max(2, num_threads)))
  if worker_count > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(ds)


def round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def eval_size(source, requested: Sequence[int] | str | None, divisor: int) -> tuple[int, int]:
  """The (height, width) every eval image is padded to: `requested`, or example 0's size, rounded up.

  Raises:
    ValueError: `requested` is "per_image", which has no one size (evaluators that pad to one size call this).
  """
  if isinstance(requested, str):
    raise ValueError(f"config.dataset.eval_size={requested!r} evaluates each image at its own size, which this "
                     "task's evaluator does not do (it pads every image to one size): give (height, width).")
  if requested is None:
    requested = np.asarray(source[0]["label"]).shape[:2]
  return round_up(int(requested[0]), divisor), round_up(int(requested[1]), divisor)


def num_eval_batches(num_examples: int, batch_size: int) -> int:
  return math.ceil(num_examples / batch_size)


class _EvalExample:
  """This process's k-th eval example: row rows[k % L] of global batch k // L, or padding past the split's end."""

  def __init__(self, source, example: Callable[[dict[str, Any], int], dict[str, np.ndarray]],
               padding: Callable[[], dict[str, np.ndarray]], batch_size: int, rows: np.ndarray):
    self.source, self.example, self.padding, self.batch_size, self.rows = source, example, padding, batch_size, rows

  def __call__(self, k: int) -> dict[str, np.ndarray]:
    batch, j = divmod(int(k), len(self.rows))
    index = batch * self.batch_size + int(self.rows[j])
    if index >= len(self.source):
      return {**self.padding(), "index": np.int32(-1)}
    return {**self.example(self.source[index], index), "index": np.int32(index)}


def eval_batches(source, *, example: Callable[[dict[str, Any], int], dict[str, np.ndarray]],
                 padding: Callable[[], dict[str, np.ndarray]], batch_size: int, rows: Sequence[int] | None = None,
                 num_threads: int = 4) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's rows of each global eval batch; together the processes cover every example once.

  Global batch b holds examples [b * B, (b + 1) * B) of the split, each made by the task's `example(raw, index)`
  (fixed shapes), the last batch filled with `padding()` examples (index -1, which the task gives weight 0);
  there are ceil(N / B) batches on every process (collectives need the same count). Nothing is dropped, and the
  result does not depend on how processes and devices share the batch. Each example carries its `index` in the
  split.
  """
  rows = _check_rows(rows, batch_size)
  count = num_eval_batches(len(source), batch_size) * len(rows)
  ds = grain.MapDataset.range(count).map(_EvalExample(source, example, padding, batch_size, rows))
  ds = ds.batch(len(rows), drop_remainder=False)
  yield from ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2, num_threads)))


def semantic_eval_example(spec: datasets.DatasetSpec, size: Sequence[int]
                          ) -> Callable[[dict[str, Any], int], dict[str, np.ndarray]]:
  """`eval_batches`' example function of semantic segmentation: image, label and weight padded (bottom/right,
  weight 0) to `size`."""
  height, width = size

  def example(raw: dict[str, Any], index: int) -> dict[str, np.ndarray]:
    del index
    ex = to_example(raw, spec.ignore_label, spec.num_classes, spec.reduce_zero_label)
    h, w = ex.label.shape
    if h > height or w > width:
      raise ValueError(f"Example {_name(raw)} of {spec.name} is {h}x{w}, larger than the eval size "
                       f"{height}x{width} (the first example's size unless config.dataset.eval_size is set): set "
                       "--config.dataset.eval_size=per_image to evaluate each image at its own size (splits of "
                       f"mixed sizes), or --config.dataset.eval_size=({round_up(h, 32)}, {round_up(w, 32)}).")
    ex = pad_to(ex, height, width)
    return {"image": ex.image, "label": ex.label, "weight": ex.weight}
  return example


def semantic_padding(spec: datasets.DatasetSpec, size: Sequence[int]) -> Callable[[], dict[str, np.ndarray]]:
  """`eval_batches`' padding example of semantic segmentation: zeros, weight 0."""
  height, width = size
  return lambda: {"image": np.zeros((height, width, spec.num_channels), np.uint8),
                  "label": np.zeros((height, width), np.int32), "weight": np.zeros((height, width), np.float32)}


def to_global(batch: dict[str, np.ndarray], mesh: Mesh | jax.sharding.Sharding,
              batch_size: int | None = None, specs: dict[str, PartitionSpec] | None = None) -> dict[str, jax.Array]:
  """Assembles each process's rows of a batch into global arrays laid out on `mesh` (`sharding.batch_spec`).

  Args:
    batch: this process's rows of the global batch, in the order of `sharding.process_rows`.
    mesh: the mesh (each array sharded by `specs`, else by its rank), or one sharding for every array.
    batch_size: the global batch size; default: the local one (a single process holds every row).
    specs: the PartitionSpec of fields that are not laid out by their rank (e.g. a task's [B, N, 4] boxes).
  """
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if isinstance(mesh, jax.sharding.Sharding):
      target = mesh
    else:
      target = jax.sharding.NamedSharding(mesh, (specs or {}).get(key, sharding_lib.batch_spec(value.ndim)))
    size = len(value) if batch_size is None else batch_size
    rows = sharding_lib.process_rows(target, size, value.shape[1:])
    if len(rows) != len(value):
      raise ValueError(f"batch[{key!r}] has {len(value)} rows but this process's devices hold {len(rows)} rows of "
                       f"the global batch of {size}.")

    def shard(index, value=value, rows=rows):
      local = np.searchsorted(rows, np.arange(size)[index[0]])
      return value[(local, *index[1:])]
    out[key] = jax.make_array_from_callback((size, *value.shape[1:]), target, shard)
  return out


def local_rows(x: jax.Array, rows: Sequence[int]) -> np.ndarray:
  """This process's rows `rows` of a batch-sharded global array, gathered from its addressable shards."""
  rows = np.asarray(rows)
  out = np.empty((len(rows), *x.shape[1:]), x.dtype)
  for s in x.addressable_shards:
    wanted = np.arange(x.shape[0])[s.index[0]]
    out[(np.searchsorted(rows, wanted), *s.index[1:])] = np.asarray(s.data)
  return out


class GlobalBatches:
  """Global batches on the mesh from this process's rows of them: training and evaluation never see rows.

  Args:
    local: an iterable of this process's rows of each global batch (`train_dataset` / `eval_batches`).
    mesh: the device mesh.
    batch_size: the global batch size.
    specs: the PartitionSpec of each field (default `sharding.batch_spec` of its rank).

  Iterating yields global `jax.Array` dicts; `with_local=True` yields (local numpy batch, global batch) pairs,
  for evaluation, which reads back this process's examples.
  """

  def __init__(self, local: Iterable[dict[str, np.ndarray]], mesh: Mesh, batch_size: int,
               specs: dict[str, PartitionSpec] | None = None, with_local: bool = False):
    self.local, self.mesh, self.batch_size = local, mesh, batch_size
    self.specs, self.with_local = specs or {}, with_local
    self._iter = None

  def __iter__(self):
    self._iter = iter(self.local)
    return self

  def __next__(self):
    if self._iter is None:
      self._iter = iter(self.local)
    batch = next(self._iter)
    glob = to_global(batch, self.mesh, self.batch_size, self.specs)
    return (batch, glob) if self.with_local else glob

  @staticmethod
  def rows(mesh: Mesh, batch_size: int) -> np.ndarray:
    """The rows of a global batch this process's devices hold: what it reads (the "data" axis decides them)."""
    return sharding_lib.process_rows(sharding_lib.batch_sharding(mesh, 1), batch_size)

  def close(self) -> None:
    """Stops grain's worker processes (training with worker_count > 0)."""
    close = getattr(self._iter, "close", None) or getattr(self.local, "close", None)
    if close is not None:
      close()
