"""Input pipeline throughput against the train step's consumption, CamVid-size frames, on this machine.

    python bench/input_pipeline.py                          # CamVid from ../shared/data/camvid, batch 8
    python bench/input_pipeline.py --workers 0 1 2 --models segnet unet --per_op

Three stages, each in images per second:
1. host: grain loader over the prepared tfds source (PNG decode, ignore -> weight, crop 360x480, batch), with
   0..N worker processes, as train.py runs it;
2. device augmentation: the jitted `augment_batch` on a batch already on the device(s) -- flips only (the
   CamVid recipes' setting) and the full chain (zoom, flips, rotation, affine, elastic, colour, blur, noise,
   dropouts), plus the host -> device copy of a uint8 batch;
3. consumption: one jitted training step (forward, backward, Adam) of the named recipes' models at the same size.
The last column divides each input rate by the slowest model's step rate: above 1, input keeps up.
Without ../shared/data/camvid (or --manual_dir), stage 1 reads synthetic 360x480 PNG frames prepared the same way.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys
import tempfile
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from segjax import models, sharding
from segjax.data import augment, datasets, pipeline
from segjax.training import steps

import _experiment  # bench/_experiment.py (this folder is on sys.path when a script runs)
import _timing  # bench/_timing.py

REPO = pathlib.Path(__file__).resolve().parents[1]
FULL_CHAIN = augment.AugmentConfig(
    zoom=(0.5, 2.0), hflip_prob=0.5, vflip_prob=0.0, rotate_degrees=10.0, affine_scale=(0.9, 1.1),
    affine_translate=0.05, affine_shear_degrees=5.0, elastic_sigma=10.0, brightness=0.1, contrast=0.2,
    gamma=(0.8, 1.25), blur_sigma=(0.5, 1.5), blur_prob=0.3, noise_std=(0.0, 8.0), noise_prob=0.3,
    pixel_dropout=0.02, pixel_dropout_prob=0.2, coarse_dropout_holes=4, coarse_dropout_prob=0.3)

# Each op of FULL_CHAIN alone, always applied (probability 1).
PER_OP = {
    "zoom + crop (one resampling)": augment.AugmentConfig(zoom=(0.5, 2.0)),
    "rotation (one resampling)": augment.AugmentConfig(rotate_degrees=10.0),
    "elastic (one resampling)": augment.AugmentConfig(elastic_sigma=10.0),
    "colour (brightness, contrast, gamma)": augment.AugmentConfig(brightness=0.1, contrast=0.2, gamma=(0.8, 1.25)),
    "Gaussian blur": augment.AugmentConfig(blur_sigma=(0.5, 1.5), blur_prob=1.0),
    "Gaussian noise": augment.AugmentConfig(noise_std=(0.0, 8.0), noise_prob=1.0),
    "pixel + coarse dropout": augment.AugmentConfig(pixel_dropout=0.02, pixel_dropout_prob=1.0,
                                                    coarse_dropout_holes=4, coarse_dropout_prob=1.0),
}


def train_dataset(source, spec, batch: int, crop):
  """The training batches train.py reads (the semantic task's host transform: decode, ignore -> weight, crop)."""
  transform = pipeline.RandomCrop(crop, spec.ignore_label, spec.num_classes, spec.reduce_zero_label)
  return pipeline.train_dataset(source, transform, batch_size=batch, seed=0, name=spec.name)


def host_rate(source, spec, batch: int, crop, workers: int, num_batches: int) -> float:
  dataset = train_dataset(source, spec, batch, crop)
  it = pipeline.train_iterator(dataset, worker_count=workers)
  for _ in range(2):  # worker start-up and first reads
    next(it)
  t = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  rate = num_batches * batch / (time.perf_counter() - t)
  it.close()
  return rate


def augment_rate(cfg, batch, mesh, repeats: int) -> float:
  data = sharding.batch_sharding(mesh)
  fn = jax.jit(functools.partial(augment.augment_batch, cfg), in_shardings=(None, data, data, data),
               out_shardings=data)
  args = (jax.random.key(0), *(jax.device_put(batch[k], data) for k in ("image", "label", "weight")))
  return batch["image"].shape[0] / _timing.median_seconds(fn, *args, repeats=repeats)


def transfer_rate(batch, mesh, repeats: int) -> float:
  data = sharding.batch_sharding(mesh)
  return batch["image"].shape[0] / _timing.median_seconds(lambda b: pipeline.to_global(b, data), batch, repeats=repeats)


def step_rate(name: str, batch, spec, mesh, repeats: int) -> float:
  model = models.build_model(name, spec.num_classes)
  # The CamVid recipes' step on these crops: flips only, Adam at a constant 1e-3, cross-entropy.
  exp = _experiment.build(model, devices=list(mesh.devices.flat), batch=len(batch["image"]),
                          size=batch["image"].shape[1:3], dataset=spec.name, mean=(127.5,), std=(127.5,),
                          augment=dict(hflip_prob=0.5))
  state = exp.init_state()
  fn = steps.jit_train_step(exp)
  global_batch = pipeline.to_global(batch, exp.mesh)
  # The step donates its state: feed each call the previous call's output.
  state, _ = fn(state, global_batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    state, out = fn(state, global_batch)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t)
  return batch["image"].shape[0] / float(np.median(times))


def synthetic_camvid(root: pathlib.Path, count: int) -> pathlib.Path:
  """A CamVid-layout folder of `count` noisy 360x480 frames (PNG, like the real data) for machines without it."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  for split, images, labels in (("train", "train", "trainannot"), ("val", "val", "valannot")):
    (root / images).mkdir(parents=True, exist_ok=True)
    (root / labels).mkdir(parents=True, exist_ok=True)
    for i in range(count if split == "train" else 2):
      # Smooth gradients plus noise: PNG compresses it about as well as a road scene.
      base = np.linspace(0, 200, 480)[None, :, None] + np.linspace(0, 50, 360)[:, None, None]
      image = np.clip(base + rng.normal(0, 12, (360, 480, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(image).save(root / images / f"f{i:04d}.png")
      Image.fromarray(rng.integers(0, 12, (360, 480)).astype(np.uint8)).save(root / labels / f"f{i:04d}.png")
  return root


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--manual_dir", default=str(REPO.parent / "shared" / "data" / "camvid"))
  parser.add_argument("--data_dir", default=None, help="tfds data_dir (default: a temporary one)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--batches", type=int, default=12, help="host batches timed per worker setting")
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
  parser.add_argument("--models", nargs="+", default=["segnet"])
  parser.add_argument("--model_batch", type=int, default=2, help="batch of the timed training step")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--per_op", action="store_true", help="also time each op of the full chain alone")
  args = parser.parse_args()
  flags.FLAGS(sys.argv[:1])  # grain workers read absl flags

  tmp = tempfile.TemporaryDirectory()
  data_dir = args.data_dir or tmp.name
  manual_dir = pathlib.Path(args.manual_dir)
  real = manual_dir.is_dir()
  if not real:
    manual_dir = synthetic_camvid(pathlib.Path(tmp.name) / "camvid_src", 48)
  spec = datasets.get_spec("camvid")
  source = datasets.data_source("camvid", "train", data_dir=data_dir, manual_dir=manual_dir)
  crop = (360, 480)
  print(f"# devices: {jax.device_count()} x {jax.devices()[0].device_kind}; host CPUs: "
        f"{__import__('os').cpu_count()}; data: {'CamVid ' + str(manual_dir) if real else 'synthetic CamVid'} "
        f"({len(source)} train frames); crop {crop[0]}x{crop[1]}, batch {args.batch}")
  mesh = sharding.make_mesh(-1)
  batch = train_dataset(source, spec, args.batch, crop)[0]
  # Consumption first, so every input row can be printed with its ratio as soon as it is measured.
  consumers = []
  for name in args.models:
    d = models.size_divisor(models.build_model(name, spec.num_classes))
    h, w = crop[0] // d * d, crop[1] // d * d  # what the model's recipe crops to (U-Net: 352x480)
    small = {k: v[:args.model_batch, :h, :w] if v.ndim > 1 else v[:args.model_batch] for k, v in batch.items()}
    consumers.append((f"train step: {name} {h}x{w} (batch {args.model_batch}, fwd+bwd+Adam)",
                      step_rate(name, small, spec, mesh, max(2, args.repeats // 2))))
  slowest = min(rate for _, rate in consumers)
  width = 64
  print(f"{'stage':<{width}}  {'images/s':>9}  {'x consumption':>13}", flush=True)

  def report(name, rate):
    print(f"{name:<{width}}  {rate:9.2f}  {rate / slowest:13.1f}", flush=True)

  for name, rate in consumers:
    report(name, rate)
  for workers in args.workers:
    report(f"host: decode + crop + batch, {workers} workers",
           host_rate(source, spec, args.batch, crop, workers, args.batches))
  report("host -> device copy (uint8 image, int32 label, f32 weight)", transfer_rate(batch, mesh, args.repeats))
  report("device augmentation: flips only", augment_rate(augment.AugmentConfig(hflip_prob=0.5), batch, mesh,
                                                         args.repeats))
  report("device augmentation: full chain", augment_rate(FULL_CHAIN, batch, mesh, args.repeats))
  if args.per_op:
    for label, cfg in PER_OP.items():
      report(f"device augmentation: {label} only", augment_rate(cfg, batch, mesh, args.repeats))


if __name__ == "__main__":
  main()
