"""The measurements of bench/device_suite.py, each run in its own process by the suite.

    python bench/device_workers.py jax      --cases '[{...}]' --dtypes bfloat16 float32
    python bench/device_workers.py torch    --cases '[{...}]' --dtypes bfloat16 float32 --modes eager compile
    python bench/device_workers.py pipeline --cases '[{...}]' --workers 0 8 14

Each completed measurement is printed as one line `RESULT {json}`, so a worker the suite stops at its time
budget still hands back what it finished. One process per framework and model keeps a device's memory and peak
statistics to that model: JAX's allocator never returns memory that PyTorch could use, and `peak_bytes_in_use`
cannot be reset (the --smoke run, where nothing is on a device, puts every case in one process to save
imports). A case is a dict (registry name, model keywords, batch, size, classes) made by device_suite.py.

Timing (both frameworks alike): the input is on the device before the clock starts; after `warmup` steps,
`rounds` times `inner` steps run back to back and are waited for once, and the median over rounds of the time
per step is reported. Each step is a full optimiser step: forward with BatchNorm in training mode, softmax
cross-entropy over every pixel, backward, Adam. segjax's step is `segjax.training.steps.train_step` of an Experiment
(bench/_experiment.py) jitted with its state donated (what `train.py` runs, without augmentation); PyTorch's is
the twin of bench/torch_models.py with `torch.optim.Adam` (fused on CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(BENCH), BENCH]

# Dense peak TFLOP/s (data sheets, SXM parts; float32 means TF32 matmuls, XLA's and cuDNN's default on NVIDIA
# GPUs since Ampere, and torch's with allow_tf32). Matched as substrings of jax's device_kind, first match wins;
# a device not listed gets the matmul rate the worker measures (`matmul_tflops`) as its peak, said so in the table.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"float32": 378.0, "bfloat16": 756.0}),
    ("H100", {"float32": 494.7, "bfloat16": 989.4}),
    ("H200", {"float32": 494.7, "bfloat16": 989.4}),  # the H100's chip with more, faster memory
    ("H800", {"float32": 494.7, "bfloat16": 989.4}),
    ("A100", {"float32": 156.0, "bfloat16": 312.0}),
    ("L4", {"float32": 60.0, "bfloat16": 121.0}),
    ("TPU v4", {"float32": 275.0, "bfloat16": 275.0}),
    ("TPU v5 lite", {"float32": 197.0, "bfloat16": 197.0}),
    ("TPU v5", {"float32": 459.0, "bfloat16": 459.0}),
    ("TPU v6", {"float32": 918.0, "bfloat16": 918.0}),
)


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  for key, peaks in PEAK_TFLOPS:
    if key.lower() in device_kind.lower():
      return peaks[dtype]
  return None


def emit(record: dict[str, Any]) -> None:
  print("RESULT " + json.dumps(record), flush=True)


def timed(step: Callable[[], Any], sync: Callable[[Any], Any], *, warmup: int, rounds: int,
          inner: int) -> tuple[float, float]:
  """(first call seconds, compilation included; median seconds per step) of `step`, waited for by `sync`."""
  start = time.perf_counter()
  sync(step())
  first = time.perf_counter() - start
  for _ in range(warmup):
    sync(step())
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    out = None
    for _ in range(inner):
      out = step()
    sync(out)
    times.append((time.perf_counter() - start) / inner)
  return first, float(np.median(times))


def synthetic_batch(b: int, h: int, w: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [B, H, W, 3] (what segjax's pipeline feeds the step) and int32 labels [B, H, W] in 0..K-1."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8), rng.integers(0, k, (b, h, w)).astype(np.int32)


# ------------------------------------------------------------------------------------------------------- JAX


def _matmul_tflops(jax, jnp, dtype: str, n: int, timing: dict[str, int]) -> float:
  a = jax.random.normal(jax.random.key(1), (n, n), jnp.dtype(dtype))
  b = jax.random.normal(jax.random.key(2), (n, n), jnp.dtype(dtype))
  f = jax.jit(lambda a, b: a @ b)
  _, seconds = timed(lambda: f(a, b), jax.block_until_ready, **timing)
  return 2 * n**3 / seconds / 1e12


def jax_worker(cases: list[dict[str, Any]], dtypes: list[str], timing: dict[str, int], matmul_n: int,
               profile_steps: int = 0) -> None:
  """segjax's jitted train step of each case in each dtype: time, XLA's FLOPs, MFU and device memory; with
  `profile_steps`, where the first dtype's step spends its time (`_profile`)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from segjax import sharding  # pylint: disable=import-outside-toplevel

  device = jax.devices()[0]
  emit({"kind": "device", "platform": device.platform, "device_kind": device.device_kind,
        "device_count": jax.device_count(), "jax": jax.__version__})
  matmul = {d: _matmul_tflops(jax, jnp, d, matmul_n, timing) for d in dtypes}
  emit({"kind": "matmul", "n": matmul_n, "tflops": matmul})
  mesh = sharding.make_mesh()
  for case in cases:
    _jax_case(case, dtypes, timing, matmul, mesh, device, profile_steps)


def _profile(jax, one: Callable[[], Any], steps: int, top: int = 12) -> dict[str, Any]:
  """The `top` most expensive operations of `steps` traced steps, in ms per step, from jax.profiler's trace.

  On a GPU the trace's device rows are read ("XLA Ops": one event per HLO operation, the names in the optimised
  HLO; else the kernels of the streams); on a CPU the host's events other than Python frames.
  """
  import collections  # pylint: disable=import-outside-toplevel
  import glob  # pylint: disable=import-outside-toplevel
  import gzip  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(steps):
        jax.block_until_ready(one())
    files = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(files[0]) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  procs = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
  device = [e for e in spans if "/device:" in procs.get(e["pid"], "")]
  ops = [e for e in device if "XLA Ops" in threads.get((e["pid"], e["tid"]), "")]
  picked, where = ((ops, "device XLA ops") if ops else (device, "device streams") if device else
                   ([e for e in spans if not _runtime_span(e["name"])], "host XLA ops"))
  total = collections.Counter()
  for e in picked:
    total[e["name"]] += e["dur"] / 1e3 / steps
  busy = sum(total.values())
  return {"where": where, "busy_ms_per_step": busy,
          "top": [{"name": n, "ms_per_step": ms, "share": ms / busy} for n, ms in total.most_common(top)]}


def _runtime_span(name: str) -> bool:
  """Host trace spans that enclose the operations (Python frames, PjRt and executor calls) rather than being one."""
  return name.startswith(("$", "Pjit")) or "::" in name or "PjRt" in name or name in ("ParseArguments",
                                                                                    "Handle inputs")


def _flops(stage) -> float:
  """XLA's FLOP count of a jax Lowered or Compiled stage; 0 where the backend gives none."""
  try:
    cost = stage.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return 0.0
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0))


def _jax_case(case, dtypes, timing, matmul, mesh, device, profile_steps) -> None:
  import functools  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import _experiment  # pylint: disable=import-outside-toplevel  (bench/, on sys.path above)
  from segjax import models  # pylint: disable=import-outside-toplevel
  from segjax.training import steps  # pylint: disable=import-outside-toplevel

  b, (h, w), k = case["batch"], case["size"], case["classes"]
  image, label = synthetic_batch(b, h, w, k)
  batch = {"image": image, "label": label, "weight": np.ones(label.shape, np.float32)}
  holder = {}
  for dtype in dtypes:
    row = {"kind": "step", "framework": "segjax", "mode": "jit", "model": case["name"],
           "registry_name": case["registry_name"], "dtype": dtype, "batch": b, "size": [h, w]}
    try:
      model = models.build_model(case["registry_name"], k, dtype=jnp.dtype(dtype), **case["kwargs"])
      # The step train.py runs for this network: Adam 1e-3, cross-entropy over every pixel, no augmentation,
      # XLA's convolutions (segjax's oneDNN kernels are a CPU backend).
      exp = _experiment.build(model, devices=list(mesh.devices.flat), batch=b, size=(h, w), mean=(127.5,) * 3,
                              std=(127.5,) * 3, conv_backend="xla")
      if "batch" not in holder:
        holder["batch"] = _experiment.place(exp, batch)
      if "state" not in holder:
        # Parameters are float32 in every compute dtype (param_dtype) and do not depend on the input size (fully
        # convolutional nets): initialise once (the Experiment initialises at the model's smallest input); each
        # dtype's steps go on from the last state (arrays only, so any dtype's Experiment takes it).
        holder["state"] = exp.init_state()
      state = holder["state"]
      fn = jax.jit(functools.partial(steps.train_step, exp=exp), donate_argnums=0)
      start = time.perf_counter()
      lowered = fn.lower(state, holder["batch"])
      compiled = lowered.compile()
      row["compile_s"] = time.perf_counter() - start
      row["params"] = int(sum(x.size for x in jax.tree.leaves(state.params)))
      # XLA's FLOP count of the whole step (forward, backward, Adam) before and after optimisation. The
      # optimised count can miss the work inside library calls (cuDNN convolutions): the larger of the two is used.
      flops = [_flops(lowered), _flops(compiled)]
      row.update(flops_hlo=flops[0], flops_compiled=flops[1], flops=max(flops))
      try:
        mem = compiled.memory_analysis()
      except Exception:  # pylint: disable=broad-except  (not every backend implements it)
        mem = None
      if mem is not None:
        row["step_bytes"] = int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                                - mem.alias_size_in_bytes)

      def one(holder=holder, compiled=compiled):
        holder["state"], metrics = compiled(holder["state"], holder["batch"])
        return metrics

      first, seconds = timed(one, jax.block_until_ready, **timing)
      loss = float(one()["loss"])
      if profile_steps and dtype == dtypes[0]:
        try:
          row["profile"] = _profile(jax, one, profile_steps)
        except Exception as e:  # pylint: disable=broad-except  (a missing profile loses no figure)
          row["profile"] = {"error": f"{type(e).__name__}: {e}"}
      stats = device.memory_stats() or {}
      row.update(first_s=first, step_s=seconds, images_per_s=b / seconds, loss=loss,
                 peak_bytes=stats.get("peak_bytes_in_use"), matmul_tflops=matmul[dtype])
      peak = peak_tflops(device.device_kind, dtype) if device.platform != "cpu" else None
      row["peak_tflops"], row["peak_source"] = (peak, "data sheet") if peak else (matmul[dtype], "measured matmul")
      row["achieved_tflops"] = row["flops"] / seconds / 1e12
      row["mfu"] = row["achieved_tflops"] / row["peak_tflops"] if row["flops"] else None
      del state, compiled, lowered
    except Exception as e:  # pylint: disable=broad-except  (a failure is a row of the table, not a lost run)
      row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
      holder.pop("state", None)  # a failed step may have consumed (donated) it
    emit(row)


# --------------------------------------------------------------------------------------------------- PyTorch


def torch_worker(cases: list[dict[str, Any]], dtypes: list[str], modes: list[str], timing: dict[str, int],
                 compile_backend: str) -> None:
  """The PyTorch twin of each case in each dtype and mode (eager NCHW, channels_last, torch.compile)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch_models  # pylint: disable=import-outside-toplevel

  cuda = torch.cuda.is_available()
  dev = torch.device("cuda" if cuda else "cpu")
  if cuda:
    # float32 = TF32 matmuls and convolutions, as XLA does by default on NVIDIA GPUs.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True  # cuDNN's autotuning, the counterpart of XLA's
  emit({"kind": "torch_device", "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "threads": torch.get_num_threads()})
  for case in cases:
    _torch_case(torch, torch_models, case, dtypes, modes, timing, compile_backend, dev)


def _torch_case(torch, torch_models, case, dtypes, modes, timing, compile_backend, dev) -> None:
  cuda = dev.type == "cuda"
  b, (h, w), k = case["batch"], case["size"], case["classes"]
  image, label = synthetic_batch(b, h, w, k)
  x0 = (torch.from_numpy(image).permute(0, 3, 1, 2).float().to(dev) - 127.5) / 127.5
  y = torch.from_numpy(label).long().to(dev)
  sync = (lambda out: torch.cuda.synchronize()) if cuda else (lambda out: out.item())
  for dtype in dtypes:
    for mode in modes:
      row = {"kind": "step", "framework": "pytorch", "mode": mode, "model": case["name"], "dtype": dtype,
             "batch": b, "size": [h, w]}
      try:
        torch.manual_seed(0)
        net = torch_models.build(case["torch_name"], 3, k, **case["torch_overrides"]).train().to(dev)
        x = x0
        if mode == "channels_last" or (mode == "compile" and cuda):
          net = net.to(memory_format=torch.channels_last)
          x = x0.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, **({"fused": True} if cuda else {}))
        fwd = net
        if mode == "compile":
          # The network (forward and, through AOTAutograd, backward) compiled; the fused Adam stays eager.
          fwd = torch.compile(net, backend=compile_backend)
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

        def step(fwd=fwd, opt=opt, x=x, autocast=autocast):
          opt.zero_grad(set_to_none=True)
          with autocast:
            logits = fwd(x)
          loss = torch.nn.functional.cross_entropy(logits.float(), y)
          loss.backward()
          opt.step()
          return loss

        if cuda:
          torch.cuda.empty_cache()
          torch.cuda.reset_peak_memory_stats()
        first, seconds = timed(step, sync, **timing)
        row.update(first_s=first, step_s=seconds, images_per_s=b / seconds, loss=float(step().item()),
                   params=int(sum(p.numel() for p in net.parameters())))
        if cuda:
          row["peak_bytes"] = int(torch.cuda.max_memory_allocated())
        del net, opt, fwd
      except Exception as e:  # pylint: disable=broad-except
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
      emit(row)


# ---------------------------------------------------------------------------------------------- input pipeline


class PngFrames:
  """A random-access source of CamVid-like examples held as PNG bytes and decoded on access.

  What `tfds.data_source` hands segjax's pipeline for CamVid (dicts of decoded `image` uint8 [H, W, 3] and
  `label` uint8 [H, W]), with the PNG decode in `__getitem__` as tfds does it, but from memory: no prepared
  dataset, no disk. Lives in an importable module so grain's worker processes can unpickle it.
  """

  def __init__(self, images: list[bytes], labels: list[bytes]):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    import io  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    i = int(i)
    return {"image": np.asarray(Image.open(io.BytesIO(self.images[i])).convert("RGB")),
            "label": np.asarray(Image.open(io.BytesIO(self.labels[i])))}


def camvid_like_frames(count: int, h: int, w: int, classes: int) -> PngFrames:
  """`count` synthetic frames of h x w (smooth gradients plus noise: PNG compresses it about as a road scene
  does; bench/input_pipeline.py's synthetic CamVid) with labels 0..classes (classes = the ignore label)."""
  import io  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  images, labels = [], []
  for _ in range(count):
    base = np.linspace(0, 200, w)[None, :, None] + np.linspace(0, 50, h)[:, None, None]
    image = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    label = rng.integers(0, classes + 1, (h, w)).astype(np.uint8)
    for arr, out in ((image, images), (label, labels)):
      buf = io.BytesIO()
      Image.fromarray(arr).save(buf, format="PNG")
      out.append(buf.getvalue())
  return PngFrames(images, labels)


_SOURCE: dict[str, Any] = {}


def _set_source(source) -> None:
  _SOURCE["frames"] = source  # each stand-in worker process receives the frames once


def _numpy_example(args) -> dict[str, np.ndarray]:
  """The stand-in's per-frame work: decode, ignore label -> weight, crop (segjax's RandomCrop without grain)."""
  i, crop, ignore = args
  ex = _SOURCE["frames"][i]
  rng = np.random.default_rng(i)
  h, w = ex["label"].shape
  top, left = int(rng.integers(0, h - crop[0] + 1)), int(rng.integers(0, w - crop[1] + 1))
  win = (slice(top, top + crop[0]), slice(left, left + crop[1]))
  label = ex["label"][win].astype(np.int32)
  return {"image": np.ascontiguousarray(ex["image"][win]), "label": np.where(label == ignore, 0, label),
          "weight": (label != ignore).astype(np.float32)}


def pipeline_worker(case: dict[str, Any], workers: list[int], batches: int) -> None:
  """Host images/s of segjax's training input pipeline (grain: decode, ignore -> weight, crop, batch)."""
  import device_workers  # pylint: disable=import-outside-toplevel  (this module by its importable name)
  h, w = case["size"]
  b, classes = case["batch"], case["classes"]
  source = device_workers.camvid_like_frames(case["frames"], h, w, classes)
  try:
    from absl import flags  # pylint: disable=import-outside-toplevel
    from segjax.data import datasets, pipeline  # pylint: disable=import-outside-toplevel  (grain, tfds)
    flags.FLAGS(sys.argv[:1])  # grain's worker processes read absl flags
    spec = datasets.get_spec("camvid")
    impl, reason = "segjax.data.pipeline (grain)", ""
  except Exception as e:  # pylint: disable=broad-except  (tfds without a dependency fails on attribute access)
    impl, reason = "numpy + multiprocessing stand-in", f"{type(e).__name__}: {e}"
  emit({"kind": "pipeline_impl", "impl": impl, "reason": reason, "frames": case["frames"], "size": [h, w],
        "batch": b, "cpu_count": os.cpu_count()})
  for n in workers:
    row = {"kind": "pipeline", "impl": impl, "workers": n, "batch": b, "size": [h, w]}
    try:
      if reason:
        import multiprocessing  # pylint: disable=import-outside-toplevel
        _set_source(source)
        pool = multiprocessing.get_context("spawn").Pool(n, _set_source, (source,)) if n else None
        counter = iter(range(10**9))

        def next_batch(pool=pool, counter=counter):
          items = [(next(counter) % len(source), (h, w), classes) for _ in range(b)]
          exs = pool.map(_numpy_example, items) if pool else [_numpy_example(a) for a in items]
          return {key: np.stack([ex[key] for ex in exs]) for key in exs[0]}
        close = pool.terminate if pool else (lambda: None)
      else:
        crop = pipeline.RandomCrop((h, w), spec.ignore_label, spec.num_classes, spec.reduce_zero_label)
        dataset = pipeline.train_dataset(source, crop, batch_size=b, seed=0, name=spec.name)
        it = pipeline.train_iterator(dataset, worker_count=n)
        next_batch, close = (lambda it=it: next(it)), getattr(it, "close", lambda: None)
      for _ in range(2):  # worker start-up and the first reads
        next_batch()
      start = time.perf_counter()
      for _ in range(batches):
        out = next_batch()
      seconds = time.perf_counter() - start
      close()
      assert out["image"].shape == (b, h, w, 3), out["image"].shape
      row.update(images_per_s=batches * b / seconds, seconds=seconds, batches=batches)
    except Exception as e:  # pylint: disable=broad-except
      row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    emit(row)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("what", choices=["jax", "torch", "pipeline"])
  p.add_argument("--cases", required=True, help="a JSON list of device_suite cases (one for the pipeline)")
  p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
  p.add_argument("--modes", nargs="+", default=["eager"])
  p.add_argument("--timing", default='{"warmup": 2, "rounds": 5, "inner": 3}')
  p.add_argument("--matmul_n", type=int, default=8192)
  p.add_argument("--compile_backend", default="inductor")
  p.add_argument("--profile_steps", type=int, default=0, help="jax: trace this many steps of the first dtype")
  p.add_argument("--workers", type=int, nargs="+", default=[0])
  p.add_argument("--batches", type=int, default=8)
  args = p.parse_args(argv)
  cases, timing = json.loads(args.cases), json.loads(args.timing)
  if args.what == "jax":
    jax_worker(cases, args.dtypes, timing, args.matmul_n, args.profile_steps)
  elif args.what == "torch":
    torch_worker(cases, args.dtypes, args.modes, timing, args.compile_backend)
  else:
    pipeline_worker(cases[0], args.workers, args.batches)


if __name__ == "__main__":
  main()
