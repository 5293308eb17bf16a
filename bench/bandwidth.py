"""Three memory-bound parts of segjax measured against their alternatives and against this machine's memory bandwidth.

    python bench/bandwidth.py            # full run (a few minutes on the 2-core CPU)
    python bench/bandwidth.py --quick    # smoke preset: smaller batches, fewer repeats (< 60 s)

1. The bound. A STREAM-like measurement (McCalpin's copy, scale, add, triad on float32 arrays of 4x the last-level
   cache each, from `lscpu -B` or /proc/cpuinfo) with numpy on one thread, numpy on every core (ufuncs over 1 MB
   chunks in a thread pool; the triad goes through a per-chunk temporary so it moves 3 arrays, not 5), and jitted
   JAX with donated outputs (a fresh 440 MB output per call would measure page faults, not memory). Bytes are
   counted as STREAM does: copy and scale 2 arrays, add and triad 3. The best of all is "the bound".
2. `segjax.ops.max_unpool` at SegNet shapes (CamVid 360x480, levels 1 and 3) against the three formulations of
   bench/unpool.py (scatter `.at[].set`, one-hot + depth-to-space, gather), forward and forward+backward (one `vjp`:
   the unpooled map and the gradient w.r.t. the pooled values). All must agree exactly before anything is timed.
3. The confusion matrix (`segjax.evaluation.metrics.confusion_matrix`; evaluation's per-image `confusion_matrices`, what its
   jitted step computes) against `jnp.bincount`, a one-hot matmul in float32 and int32, and numpy's bincount
   on the host, on [B, 360, 480] int32 labels and predictions with a float32 weight, for 11, 21 and 150 classes.
   All must give the same matrix.
4. The augmentation chain as the train step runs it: jitted `segjax.data.augment.augment_batch` on a device batch
   (uint8 image, int32 label, float32 weight in; float32 image, int32 label, float32 weight out), for three chains:
   flips only (the CamVid recipes), an affine warp (zoom + rotation + affine + flip, bilinear image, nearest masks)
   and the full chain of bench/input_pipeline.py. Alternatives: numpy flips and scipy.ndimage.affine_transform
   with segjax's own draws (same interface, same work: checked to agree), and torchvision.transforms.v2 on
   (Image, Mask) per image in torch's usual uint8 CHW layout with ignore-label fill (flips: segjax's draws; warps:
   its own draws from the same ranges; its full chain lacks gamma, pixel dropout and noise on uint8, so it does
   less work). cv2/albumentations are not in the environment. --quick times the flips only: the warping chains
   take 10-60 s to compile.

Bytes are the least each op must move: every input read once and every output written once (formulas printed with
each table), so GB/s = bytes / median time and "% bound" = GB/s / the bound. Working sets smaller than the
last-level cache can exceed 100%: the tables say which ones fit. "ratio" is time / the reference row's time.
Run it on an otherwise idle machine: other jobs' memory traffic lowers the bound and slows every row.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import importlib
import os
import re
import subprocess
import sys
import threading
import time
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from segjax.evaluation import metrics
from segjax.data import augment
from segjax.ops import max_pool_with_argmax, max_unpool

import _timing  # bench/_timing.py (this folder is on sys.path when a script runs)
import unpool  # bench/unpool.py: the alternative unpooling formulations

GB = 1e9
# bench/input_pipeline.py's FULL_CHAIN, repeated because importing that script pulls in tfds and grain (~8 s).
FULL_CHAIN = augment.AugmentConfig(
    zoom=(0.5, 2.0), hflip_prob=0.5, vflip_prob=0.0, rotate_degrees=10.0, affine_scale=(0.9, 1.1),
    affine_translate=0.05, affine_shear_degrees=5.0, elastic_sigma=10.0, brightness=0.1, contrast=0.2,
    gamma=(0.8, 1.25), blur_sigma=(0.5, 1.5), blur_prob=0.3, noise_std=(0.0, 8.0), noise_prob=0.3,
    pixel_dropout=0.02, pixel_dropout_prob=0.2, coarse_dropout_holes=4, coarse_dropout_prob=0.3)
AFFINE_CHAIN = augment.AugmentConfig(zoom=(0.5, 2.0), hflip_prob=0.5, rotate_degrees=10.0, affine_scale=(0.9, 1.1),
                                     affine_translate=0.05, affine_shear_degrees=5.0)
FLIPS = augment.AugmentConfig(hflip_prob=0.5)
CHAINS = {"flips only": FLIPS, "affine warp": AFFINE_CHAIN, "full chain": FULL_CHAIN}


@dataclasses.dataclass(frozen=True)
class Preset:
  stream_repeats: int
  stream_single_thread: bool  # also numpy on one thread (the all-core run usually wins; skipped in --quick)
  unpool_shapes: tuple[tuple[int, int, int, int], ...]  # NHWC inputs of the pooling whose indices are unpooled
  unpool_repeats: int
  cm_shape: tuple[int, int, int]
  cm_classes: tuple[int, ...]
  cm_matmul_max_classes: int  # one-hot matmuls above this K are skipped (~1 s per call at K=21, ~K^2 growth)
  cm_repeats: int
  aug_batch: int
  aug_repeats: int
  aug_chains: tuple[str, ...]  # of CHAINS; the warping chains compile for 10-60 s, so --quick runs flips only


PRESETS = {
    # SegNet level 3 at batch 1 (fits in L3).
    "quick": Preset(stream_repeats=1, stream_single_thread=False, unpool_shapes=((1, 90, 120, 256),), unpool_repeats=2,
                    cm_shape=(8, 360, 480), cm_classes=(11, 21, 150), cm_matmul_max_classes=11, cm_repeats=2,
                    aug_batch=1, aug_repeats=2, aug_chains=("flips only",)),
    # SegNet levels 1 (133 MB forward, beyond L3) and 3 (in L3) at batch 2.
    "full": Preset(stream_repeats=5, stream_single_thread=True,
                   unpool_shapes=((2, 360, 480, 64), (2, 90, 120, 256)), unpool_repeats=5,
                   cm_shape=(8, 360, 480), cm_classes=(11, 21, 150), cm_matmul_max_classes=21, cm_repeats=5,
                   aug_batch=8, aug_repeats=3, aug_chains=("flips only", "affine warp", "full chain")),
}


def last_level_cache_bytes() -> int:
  """Bytes of the L3 cache (all instances) from `lscpu -B`, else /proc/cpuinfo's per-CPU "cache size"."""
  try:
    out = subprocess.run(["lscpu", "-B"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"^L3 cache:\s+(\d+)", out, re.M)
    if m:
      return int(m.group(1))
  except (OSError, subprocess.CalledProcessError):
    pass
  try:
    with open("/proc/cpuinfo", encoding="ascii") as f:
      m = re.search(r"^cache size\s*:\s*(\d+)\s*KB", f.read(), re.M)
    if m:
      return 1024 * int(m.group(1))
  except OSError:
    pass
  print("# no L3 size in `lscpu -B` or /proc/cpuinfo: assuming 32 MiB (arrays may be too small for a true bound)")
  return 32 << 20


def table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
  """Prints rows under a header; the first column left-aligned, floats with 2 decimals."""
  cells = [[c if isinstance(c, str) else f"{c:.2f}" for c in row] for row in rows]
  widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
  print(f"\n{title}")
  print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
  for r in cells:
    print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))), flush=True)


def fits(nbytes: int, l3: int) -> str:
  return "yes" if nbytes <= l3 else "no"


# ------------------------------------------------------------------------------------------------- 1. the bound


STREAM_ARRAYS = {"copy": 2, "scale": 2, "add": 3, "triad": 3}  # arrays each kernel moves, as STREAM counts them


def stream_numpy(n: int, threads: int, repeats: int) -> dict[str, float]:
  """GB/s of the four STREAM kernels with numpy ufuncs over 1 MB chunks on `threads` threads (ufuncs release the
  GIL). Chunks also let the triad go through a small per-thread temporary, so it moves 3 arrays as in C."""
  # np.full, not np.zeros: calloc'ed pages would be faulted in during the first timed kernel.
  a, b, c = np.full(n, 1.0, np.float32), np.full(n, 2.0, np.float32), np.full(n, 0.0, np.float32)
  q = np.float32(3.0)
  chunk = 1 << 18
  slices = [slice(s, min(s + chunk, n)) for s in range(0, n, chunk)]
  local = threading.local()

  def triad(s):
    if not hasattr(local, "tmp"):
      local.tmp = np.empty(chunk, np.float32)
    tmp = local.tmp[:s.stop - s.start]
    np.multiply(c[s], q, out=tmp)
    np.add(b[s], tmp, out=a[s])

  kernels = {"copy": lambda s: np.copyto(c[s], a[s]), "scale": lambda s: np.multiply(c[s], q, out=b[s]),
             "add": lambda s: np.add(a[s], b[s], out=c[s]), "triad": triad}
  out = {}
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for name, kernel in kernels.items():
      if threads == 1:
        run = lambda kernel=kernel: [kernel(s) for s in slices]
      else:
        run = lambda kernel=kernel: list(pool.map(kernel, slices))
      out[name] = STREAM_ARRAYS[name] * 4 * n / _timing.median_seconds(run, repeats=repeats, warmup=0) / GB
  return out


def stream_jax(n: int, repeats: int) -> dict[str, float]:
  """GB/s of the STREAM kernels as jitted JAX ops whose output reuses a donated buffer, threaded through a state
  as STREAM's loop does (c = a; b = q c; c = a + b; a = b + q c)."""
  q = 3.0
  st = {"a": jnp.full(n, 1.0, jnp.float32), "b": jnp.full(n, 2.0, jnp.float32), "c": jnp.zeros(n, jnp.float32)}
  # keep_unused: the donated argument is not read, and without it jit drops the argument, so the output is not
  # aliased to it and every call writes a freshly mapped 440 MB buffer (page faults: half the speed here).
  # jnp.copy, not `a`: JAX forwards an input returned unchanged without copying it.
  donated = functools.partial(jax.jit, keep_unused=True)
  copy = donated(lambda a, c: jnp.copy(a), donate_argnums=1)
  scale = donated(lambda c, b: q * c, donate_argnums=1)
  add = donated(lambda a, b, c: a + b, donate_argnums=2)
  triad = donated(lambda b, c, a: b + q * c, donate_argnums=2)

  def step(name):
    if name == "copy":
      st["c"] = copy(st["a"], st["c"])
      return st["c"]
    if name == "scale":
      st["b"] = scale(st["c"], st["b"])
      return st["b"]
    if name == "add":
      st["c"] = add(st["a"], st["b"], st["c"])
      return st["c"]
    st["a"] = triad(st["b"], st["c"], st["a"])
    return st["a"]

  return {name: STREAM_ARRAYS[name] * 4 * n / _timing.median_seconds(functools.partial(step, name),
                                                                       repeats=repeats) / GB
          for name in STREAM_ARRAYS}


def measure_bound(l3: int, preset: Preset) -> float:
  n = 4 * l3 // 4  # float32 elements: every array is 4x the cache, STREAM's rule
  threads = os.cpu_count() or 1
  columns = {}
  if preset.stream_single_thread or threads == 1:
    columns["numpy, 1 thread"] = stream_numpy(n, 1, preset.stream_repeats)
  if threads > 1:
    columns[f"numpy, {threads} threads"] = stream_numpy(n, threads, preset.stream_repeats)
  columns["jax.jit (donated)"] = stream_jax(n, preset.stream_repeats)
  bound = max(max(c.values()) for c in columns.values())
  where = max(((k, impl) for impl, c in columns.items() for k in c), key=lambda ki: columns[ki[1]][ki[0]])
  rows = [(k, f"{STREAM_ARRAYS[k]} x {4 * n / 2**20:.0f} MiB", *(c[k] for c in columns.values()),
           max(c[k] for c in columns.values()) / bound) for k in STREAM_ARRAYS]
  table(f"1. memory bandwidth, STREAM-like, float32 arrays of {4 * n / 2**20:.0f} MiB (4x L3 = {l3 / 2**20:.0f} "
        f"MiB), median of {preset.stream_repeats}, GB/s (1e9 B/s); ratio = best of the row / bound",
        ("kernel", "bytes", *columns, "ratio"), rows)
  print(f"bound = {bound:.2f} GB/s ({where[0]}, {where[1]})")
  return bound


# ------------------------------------------------------------------------------------------------- 2. max_unpool


def unpool_section(preset: Preset, bound: float, l3: int) -> None:
  rng = np.random.default_rng(0)
  for shape in preset.unpool_shapes:
    b, h, w, c = shape
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    v, idx = jax.jit(max_pool_with_argmax)(x)
    ct = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    methods = {
        "max_unpool (segjax)": lambda v, i: max_unpool(v, i, (h, w)),
        "scatter .at[].set": lambda v, i: unpool.unpool_scatter(v, i, (h, w)),
        "one-hot + depth-to-space": lambda v, i: unpool.unpool_one_hot(v, i, (h, w)),
        "gather (take_along_axis)": lambda v, i: unpool.unpool_gather(v, i, (h, w)),
    }

    def fwd_bwd(fn):
      def f(v, i, ct):
        out, vjp = jax.vjp(lambda v: fn(v, i), v)
        return out, vjp(ct)[0]
      return jax.jit(f)

    jitted = {name: (jax.jit(fn), fwd_bwd(fn)) for name, fn in methods.items()}
    ref_out, ref_grad = (np.asarray(a) for a in jitted["scatter .at[].set"][1](v, idx, ct))
    for name, (fwd, fb) in jitted.items():
      np.testing.assert_array_equal(np.asarray(fwd(v, idx)), ref_out, err_msg=name)
      out, grad = fb(v, idx, ct)
      np.testing.assert_array_equal(np.asarray(out), ref_out, err_msg=name)
      np.testing.assert_array_equal(np.asarray(grad), ref_grad, err_msg=name)

    # The least traffic: max_unpool's check that every index lies in its own window reads the indices again.
    pooled, full = v.nbytes, x.nbytes
    fwd_bytes = pooled + idx.nbytes + full
    fb_bytes = pooled + idx.nbytes + full + full + pooled
    rows = []
    for name, (fwd, fb) in jitted.items():
      # No warm-up: the checks above compiled and ran every function once.
      t_f = _timing.median_seconds(fwd, v, idx, repeats=preset.unpool_repeats, warmup=0)
      t_b = _timing.median_seconds(fb, v, idx, ct, repeats=preset.unpool_repeats, warmup=0)
      rows.append([name, 1e3 * t_f, t_f, fwd_bytes / t_f / GB, 100 * fwd_bytes / t_f / GB / bound,
                   1e3 * t_b, t_b, fb_bytes / t_b / GB, 100 * fb_bytes / t_b / GB / bound])
    ref_f, ref_b = rows[0][2], rows[0][6]
    for r in rows:
      r[2], r[6] = r[2] / ref_f, r[6] / ref_b
    table(f"2. max_unpool of {v.shape} -> {shape} float32 (2x2 windows), median of {preset.unpool_repeats}; "
          f"ratio = time / max_unpool's\n   fwd bytes = read values + int32 indices + write output = "
          f"{fwd_bytes / 1e6:.1f} MB (L3-resident: {fits(fwd_bytes, l3)}); fwd+bwd (one vjp) bytes = fwd + read "
          f"cotangent + write gradient = {fb_bytes / 1e6:.1f} MB (L3-resident: {fits(fb_bytes, l3)})",
          ("method", "fwd ms", "ratio", "GB/s", "% bound", "fwd+bwd ms", "ratio", "GB/s", "% bound"),
          [tuple(r) for r in rows])


# ------------------------------------------------------------------------------------------------- 3. confusion matrix


def _valid_index(labels, preds, weights, k):
  valid = (weights > 0) & (labels >= 0) & (labels < k) & (preds >= 0) & (preds < k)
  return jnp.where(valid, labels * k + preds, 0).reshape(-1), valid.reshape(-1)


def cm_bincount(labels, preds, weights, k):
  index, valid = _valid_index(labels, preds, weights, k)
  return jnp.bincount(index, weights=valid.astype(jnp.int32), length=k * k).reshape(k, k).astype(jnp.int32)


def cm_one_hot(labels, preds, weights, k, dtype):
  """Rows: the label one-hot masked by validity; columns: the prediction one-hot; their product sums pixels."""
  _, valid = _valid_index(labels, preds, weights, k)
  rows = jax.nn.one_hot(labels.reshape(-1), k, dtype=dtype) * valid[:, None].astype(dtype)
  cols = jax.nn.one_hot(preds.reshape(-1), k, dtype=dtype)
  return jnp.matmul(rows.T, cols, preferred_element_type=dtype).astype(jnp.int32)


def cm_numpy(labels, preds, weights, k):
  valid = (weights > 0) & (labels >= 0) & (labels < k) & (preds >= 0) & (preds < k)
  return np.bincount((labels[valid] * k + preds[valid]), minlength=k * k).reshape(k, k)


def confusion_section(preset: Preset, bound: float, l3: int) -> None:
  rng = np.random.default_rng(0)
  shape = preset.cm_shape
  for k in preset.cm_classes:
    labels_np = rng.integers(0, k, shape, dtype=np.int32)
    # 70% of predictions right, the rest uniform; 5% of pixels ignored (weight 0), as an ignore label gives.
    preds_np = np.where(rng.random(shape) < 0.7, labels_np, rng.integers(0, k, shape, dtype=np.int32))
    weights_np = (rng.random(shape) >= 0.05).astype(np.float32)
    args = tuple(jnp.asarray(a) for a in (labels_np, preds_np, weights_np))
    methods = {
        "metrics.confusion_matrix (segjax: scatter-add)": lambda l, p, w: metrics.confusion_matrix(l, p, w, k),
        "metrics.confusion_matrices (eval, per image)": lambda l, p, w: metrics.confusion_matrices(l, p, w, k),
        "jnp.bincount": lambda l, p, w: cm_bincount(l, p, w, k),
    }
    if k <= preset.cm_matmul_max_classes:
      methods["one-hot matmul float32"] = lambda l, p, w: cm_one_hot(l, p, w, k, jnp.float32)
      methods["one-hot matmul int32"] = lambda l, p, w: cm_one_hot(l, p, w, k, jnp.int32)
    ref = cm_numpy(labels_np, preds_np, weights_np, k)
    nbytes = sum(a.nbytes for a in args)
    rows = []
    for name, fn in methods.items():
      f = jax.jit(fn)
      cm = np.asarray(f(*args))
      np.testing.assert_array_equal(cm.sum(0) if cm.ndim == 3 else cm, ref, err_msg=name)
      rows.append((name, _timing.median_seconds(f, *args, repeats=preset.cm_repeats, warmup=0)))  # compiled above
    rows.append(("np.bincount (host, 1 thread)", _timing.median_seconds(
        cm_numpy, labels_np, preds_np, weights_np, k, repeats=preset.cm_repeats, warmup=0)))
    ref_t = rows[0][1]
    skipped = "" if k <= preset.cm_matmul_max_classes else (
        f"; one-hot matmuls skipped above K={preset.cm_matmul_max_classes}")
    table(f"3. confusion matrix, K={k}, labels and preds int32 {shape}, weight float32, median of "
          f"{preset.cm_repeats}{skipped}; ratio = time / confusion_matrix's\n   bytes = read labels + preds + weight "
          f"= {nbytes / 1e6:.1f} MB (L3-resident: {fits(nbytes, l3)})",
          ("method", "ms", "ratio", "GB/s", "% bound"),
          [(name, 1e3 * t, t / ref_t, nbytes / t / GB, 100 * nbytes / t / GB / bound) for name, t in rows])


# ------------------------------------------------------------------------------------------------- 4. augmentation


def import_torchvision():
  """torchvision.transforms.v2 and tv_tensors, or None. PyPI's torchvision wheel is built for CUDA and fails on
  import beside the CPU torch while registering its detection operators; the transforms need none of them, so
  the import is retried without those registrations (as tests/conftest.py does)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  try:
    importlib.import_module("torchvision")
  except ImportError:
    return None
  except (RuntimeError, OSError):
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
      sys.modules[name] = types.ModuleType(name)
  from torchvision import tv_tensors  # pylint: disable=import-outside-toplevel
  from torchvision.transforms import v2  # pylint: disable=import-outside-toplevel
  return torch, v2, tv_tensors


def numpy_flips(images, labels, weights, flips):
  """segjax's interface in numpy: uint8 image in, float32 image / int32 label / float32 weight out."""
  out = (np.empty(images.shape, np.float32), np.empty(labels.shape, np.int32), np.empty(weights.shape, np.float32))
  for i, f in enumerate(flips):
    for src, dst in zip((images, labels, weights), out):
      dst[i] = src[i, :, ::-1] if f else src[i]
  return out


def scipy_warp(images, labels, weights, transforms):
  """segjax's warp with scipy.ndimage: `transforms[i] = (A, t)` maps output (row, col) to input
  centre + A (p - centre) + t. The image is bilinear with edge clamping, label and weight nearest, and a pixel
  whose nearest source lies outside gets weight 0 and label 0."""
  b, h, w, c = images.shape
  centre = np.array([(h - 1) / 2, (w - 1) / 2])
  out = (np.empty(images.shape, np.float32), np.empty(labels.shape, np.int32), np.empty(weights.shape, np.float32))
  for i, (a, t) in enumerate(transforms):
    offset = centre - a @ centre + t
    for ch in range(c):
      scipy.ndimage.affine_transform(images[i, :, :, ch], a, offset, output=out[0][i, :, :, ch], order=1,
                                     mode="nearest")
    # The label's fill is irrelevant: pixels outside get weight 0, and their label is then zeroed like segjax's.
    scipy.ndimage.affine_transform(labels[i], a, offset, output=out[1][i], order=0, mode="nearest")
    scipy.ndimage.affine_transform(weights[i], a, offset, output=out[2][i], order=0, mode="grid-constant", cval=0.0)
    out[1][i][out[2][i] <= 0] = 0
  return out


def torchvision_chains(v2, tv_tensors):
  # Masks pass through RandomErasing, as they should (segjax's dropouts leave labels alone too); it warns each call.
  warnings.filterwarnings("ignore", message=r"RandomErasing\(\) is currently passing through")
  bilinear = v2.InterpolationMode.BILINEAR
  fill = {tv_tensors.Image: 0, tv_tensors.Mask: 255}  # 255: the ignore label, as torch pipelines mark it
  affine = [v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.5, 2.0), shear=5, interpolation=bilinear,
                            fill=fill), v2.RandomHorizontalFlip(0.5)]
  return {
      "affine warp": v2.Compose(affine),
      "full chain": v2.Compose(affine + [
          v2.ElasticTransform(alpha=50.0, sigma=5.0, interpolation=bilinear, fill=fill),
          v2.ColorJitter(brightness=0.1, contrast=0.2),
          v2.RandomApply([v2.GaussianBlur(kernel_size=9, sigma=(0.5, 1.5))], p=0.3),
          v2.RandomErasing(p=0.3, scale=(0.01, 0.04), value=0)]),
  }


def augment_section(preset: Preset, bound: float, l3: int) -> None:
  rng = np.random.default_rng(0)
  b, h, w = preset.aug_batch, 360, 480
  base = np.linspace(0, 200, w)[None, :, None] + np.linspace(0, 50, h)[:, None, None]
  images = np.clip(base + rng.normal(0, 12, (b, h, w, 3)), 0, 255).astype(np.uint8)
  labels = rng.integers(0, 12, (b, h, w), dtype=np.int32)
  weights = (labels != 11).astype(np.float32)  # class 11 plays CamVid's void
  dev = tuple(jnp.asarray(a) for a in (images, labels, weights))
  key = jax.random.key(0)
  tv = import_torchvision()
  if tv is not None:
    torch, v2, tv_tensors = tv
    tv_in = [(tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(images[i].transpose(2, 0, 1)))),
              tv_tensors.Mask(torch.from_numpy(labels[i].astype(np.uint8)))) for i in range(b)]
    tv_chains = torchvision_chains(v2, tv_tensors)

  def nbytes(*arrays):
    return sum(a.nbytes if isinstance(a, np.ndarray) else a.numel() * a.element_size() for a in arrays)

  segjax_bytes = nbytes(images, labels, weights) + b * h * w * (3 * 4 + 4 + 4)
  tv_bytes = 2 * b * h * w * (3 + 1)  # uint8 image and mask read and written
  rows = []
  for group in preset.aug_chains:
    cfg = CHAINS[group]
    fn = jax.jit(functools.partial(augment.augment_batch, cfg))
    entries = [(f"{group}: segjax augment_batch (jit)", fn, (key, *dev), segjax_bytes)]
    if group == "flips only":
      # segjax's own draws (read off its output; the noisy images are not mirror-symmetric), so numpy does the
      # same work and must give the same batch.
      want = [np.asarray(a) for a in fn(key, *dev)]
      flips = np.array([np.array_equal(want[0][i], images[i, :, ::-1]) for i in range(b)])
      for got, ref in zip(numpy_flips(images, labels, weights, flips), want):
        np.testing.assert_array_equal(got, ref)
      entries.append((f"{group}: numpy, segjax's dtypes", numpy_flips, (images, labels, weights, flips),
                      segjax_bytes))
    if group == "affine warp":
      keys = [jax.random.fold_in(key, i) for i in range(b)]
      transforms = [tuple(np.asarray(m, np.float64) for m in augment.sample_transform(cfg, k, h, w)) for k in keys]
      out_s = scipy_warp(images, labels, weights, transforms)
      out_j = [np.asarray(a) for a in fn(key, *dev)]
      # Same maps: the image agrees to float rounding away from the border, labels on all but rounding ties.
      inside = (out_j[2] > 0) & (out_s[2] > 0)
      assert np.abs(out_s[0] - out_j[0])[inside].max() < 0.05, "scipy_warp and segjax's warp disagree"
      assert (out_s[1] == out_j[1])[inside].mean() > 0.999, "scipy_warp and segjax's labels disagree"
      entries.append((f"{group}: scipy.ndimage, segjax's draws and dtypes", scipy_warp,
                      (images, labels, weights, transforms), segjax_bytes))
    if tv is not None and group == "flips only":
      # segjax's draws again: an unflipped image costs torch nothing, so its own coins would make a small batch's
      # time a lottery. What RandomHorizontalFlip(0.5) does on a draw of "no": return the input.
      flip = v2.RandomHorizontalFlip(1.0)
      entries.append((f"{group}: torchvision v2, uint8 CHW per image, segjax's draws",
                      lambda: [flip(x, y) if f else (x, y) for (x, y), f in zip(tv_in, flips)], (), tv_bytes))
    elif tv is not None:
      torch.manual_seed(0)
      entries.append((f"{group}: torchvision v2, uint8 CHW per image",
                      lambda chain=tv_chains[group]: [chain(x, y) for x, y in tv_in], (), tv_bytes))
    ref_t = None
    for name, f, args, moved in entries:
      t = _timing.median_seconds(f, *args, repeats=preset.aug_repeats)
      ref_t = ref_t or t
      rows.append((name, 1e3 * t, b / t, t / ref_t, moved / 1e6, moved / t / GB, 100 * moved / t / GB / bound))
  table(f"4. joint image + mask augmentation, batch {b} x {h}x{w}, median of {preset.aug_repeats}; ratio = time / "
        f"segjax's in the same group\n   bytes: segjax and numpy/scipy read uint8 image + int32 label + float32 weight "
        f"and write float32 image + int32 label + float32 weight ({segjax_bytes / b / h / w:.0f} B/pixel); "
        f"torchvision reads and writes uint8 image + uint8 mask ({tv_bytes / b / h / w:.0f} B/pixel)"
        + ("" if tv is not None else "\n   torchvision not importable: its rows are left out")
        + "".join(f"\n   {c}: not in this preset" for c in CHAINS if c not in preset.aug_chains),
        ("chain: implementation", "ms/batch", "images/s", "ratio", "MB", "GB/s", "% bound"), rows)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="smoke preset: batch 1, 1-2 repeats (< 60 s)")
  parser.add_argument("--sections", nargs="+", default=["unpool", "confusion", "augment"],
                      choices=["unpool", "confusion", "augment"], help="what to time after the bound")
  args = parser.parse_args()
  preset = PRESETS["quick" if args.quick else "full"]
  start = time.perf_counter()
  l3 = last_level_cache_bytes()
  print(f"# jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}; {os.cpu_count()} CPUs; L3 {l3 / 2**20:.0f} MiB; "
        f"preset {'quick' if args.quick else 'full'}")
  bound = measure_bound(l3, preset)
  print(f"# bound: {time.perf_counter() - start:.0f} s")
  sections = {"unpool": unpool_section, "confusion": confusion_section, "augment": augment_section}
  for name in args.sections:
    t = time.perf_counter()
    sections[name](preset, bound, l3)
    print(f"# {name}: {time.perf_counter() - t:.0f} s")
  print(f"\n# total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()
