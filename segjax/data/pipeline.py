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
from typing import Any, Iterator, Sequence

import grain
import jax
import numpy as np

from segjax.data import datasets


@dataclasses.dataclass(frozen=True)
class Example:
  image: np.ndarray  # uint8 [H, W, C]
  label: np.ndarray  # int32 [H, W]
  weight: np.ndarray  # float32 [H, W]


def to_example(raw: dict[str, Any], ignore_label: int | None, num_classes: int) -> Example:
  """Converts a decoded tfds example into (image, label, weight), masking the ignore label.

  Raises:
    ValueError: a label id outside [0, num_classes) that is not the ignore label, naming the example.
  """
  image = np.asarray(raw["image"])
  label = np.asarray(raw["label"])
  if label.ndim == 3:
    label = label[..., 0]
  if image.shape[:2] != label.shape:
    raise ValueError(f"Example {_name(raw)}: image is {image.shape[:2]} but label is {label.shape}; "
                     "image and mask must have the same height and width.")
  valid = np.ones(label.shape, bool) if ignore_label is None else label != ignore_label
  if valid.any() and label[valid].max() >= num_classes:
    bad = int(label[valid].max())
    raise ValueError(f"Example {_name(raw)}: label id {bad} is outside 0..{num_classes - 1} and is not the "
                     f"ignore label ({ignore_label}); fix the mask or the dataset's class list.")
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


class RandomCrop(grain.transforms.RandomMap):
  """Random crop to a fixed size, padding smaller images first (padding gets weight 0), joint on image and mask.

  The host only decodes and crops, so every batch has one shape; flips and every other augmentation run on
  device (segjax.data.augment). grain seeds `rng` from the sampler seed and the record's position in the
  sampled sequence, so the crop depends only on (seed, step), not on worker count or timing.
  """

  def __init__(self, crop_size: Sequence[int], ignore_label: int | None, num_classes: int):
    self.crop_h, self.crop_w = crop_size
    self.ignore_label = ignore_label
    self.num_classes = num_classes

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    ex = to_example(element, self.ignore_label, self.num_classes)
    h, w = ex.label.shape
    ex = pad_to(ex, max(h, self.crop_h), max(w, self.crop_w))
    h, w = ex.label.shape
    top = int(rng.integers(0, h - self.crop_h + 1))
    left = int(rng.integers(0, w - self.crop_w + 1))
    window = (slice(top, top + self.crop_h), slice(left, left + self.crop_w))
    return {"image": np.ascontiguousarray(ex.image[window]), "label": np.ascontiguousarray(ex.label[window]),
            "weight": np.ascontiguousarray(ex.weight[window])}


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f"batch_size={global_batch_size} is not divisible by the {process_count} processes; "
                     "set --config.batch_size to a multiple of the process count.")
  return global_batch_size // process_count


def train_dataset(source, *, spec: datasets.DatasetSpec, batch_size: int, crop_size: Sequence[int], seed: int,
                  process_index: int | None = None, process_count: int | None = None) -> grain.MapDataset:
  """This process's endless training batches of `batch_size // process_count`: element s is what step s + 1
  trains on.

  Element s is a pure function of (source, seed, s, process index and count): it does not depend on how many
  workers decode or on timing. So the step alone is the data position -- a resumed run continues at its step
  with nothing else saved, on any number of decoding workers.

  Process p of P reads records p, p + P, ... (with N % P != 0 the first N % P processes hold one record more, so
  the shards together are the whole split, nothing dropped), reshuffled every epoch from `seed`, and crops each
  with an rng grain derives from `seed` and the element's position.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_bs = local_batch_size(batch_size, process_count)
  if len(source) < process_count:
    raise ValueError(f"The training split of {spec.name} has {len(source)} examples, fewer than the "
                     f"{process_count} processes: every process needs at least one.")
  shard = grain.MapDataset.source(source)[process_index::process_count]
  crop = RandomCrop(crop_size, spec.ignore_label, spec.num_classes)
  return shard.shuffle(seed=seed).repeat(None).random_map(crop, seed=seed).batch(local_bs, drop_remainder=True)


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


def eval_size(source, requested: Sequence[int] | None, divisor: int) -> tuple[int, int]:
  """The (height, width) every eval image is padded to: `requested`, or example 0's size, rounded up."""
  if requested is None:
    requested = np.asarray(source[0]["label"]).shape[:2]
  return round_up(int(requested[0]), divisor), round_up(int(requested[1]), divisor)


def num_eval_batches(num_examples: int, batch_size: int, process_count: int) -> int:
  per_process = math.ceil(num_examples / process_count)
  return math.ceil(per_process / local_batch_size(batch_size, process_count))


def eval_batches(source, *, spec: datasets.DatasetSpec, batch_size: int, size: Sequence[int],
                 process_index: int | None = None, process_count: int | None = None,
                 num_threads: int = 4) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's eval batches; together the processes cover every pixel of the split exactly once.

  Process p reads the contiguous block [p * n_p, (p + 1) * n_p) with n_p = ceil(N / P). Each process yields the
  same number of batches (collectives need it); the last ones are filled with padding examples of weight 0 and
  index -1. Nothing is dropped.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_bs = local_batch_size(batch_size, process_count)
  n = len(source)
  per_process = math.ceil(n / process_count)
  start, stop = min(n, process_index * per_process), min(n, (process_index + 1) * per_process)
  height, width = size

  def prepare(index_and_raw):
    index, raw = index_and_raw
    ex = to_example(raw, spec.ignore_label, spec.num_classes)
    h, w = ex.label.shape
    if h > height or w > width:
      raise ValueError(f"Example {_name(raw)} of {spec.name} is {h}x{w}, larger than the eval size "
                       f"{height}x{width}; set --config.dataset.eval_size=({round_up(h, 32)}, {round_up(w, 32)}).")
    ex = pad_to(ex, height, width)
    return {"image": ex.image, "label": ex.label, "weight": ex.weight, "index": np.int32(index)}

  ds = grain.MapDataset.range(start, stop).map(lambda i: (i, source[i])).map(prepare)
  ds = ds.batch(local_bs, drop_remainder=False)
  it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2, num_threads))))
  channels = spec.num_channels
  for _ in range(num_eval_batches(n, batch_size, process_count)):
    batch = next(it, None)
    got = 0 if batch is None else len(batch["index"])
    if got < local_bs:
      filler = {"image": np.zeros((local_bs - got, height, width, channels), np.uint8),
                "label": np.zeros((local_bs - got, height, width), np.int32),
                "weight": np.zeros((local_bs - got, height, width), np.float32),
                "index": np.full((local_bs - got,), -1, np.int32)}
      batch = filler if batch is None else {k: np.concatenate([batch[k], filler[k]]) for k in filler}
    yield batch


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Assembles each process's local batch into one global array sharded along the batch axis."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
