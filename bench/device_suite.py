"""Accelerator figures in one command: segjax against PyTorch, MFU, memory and the input pipeline (issue 20).

    python bench/device_suite.py                      # on the GPU machine: under 8 minutes, compiles included
    python bench/device_suite.py --smoke --out /tmp/s # CPU, tiny shapes, seconds: what tests/test_device_suite.py runs
    python bench/device_suite.py --cases unet --torch_modes eager --budget_s 120

On the GPU machine (Python 3.12, jax 0.11 CUDA, torch; no network), with the wheels of bench/device_wheels.sh
carried in `.whl` (ml-collections for segjax, grain and tfds for the input pipeline):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site && PYTHONUNBUFFERED=1 python3 bench/device_suite.py

Measured, in this order, each part in its own process (bench/device_workers.py) so that one model's memory, a
crash or a compile that runs too long cannot spoil the next, and the time budget can stop any of them:
1. per case: segjax's jitted train step in bfloat16 and float32 (TF32) -- images/s, XLA's FLOPs of the step,
   MFU against the chip's dense peak, device memory -- then the PyTorch twin eager (NCHW) and channels_last;
2. the host input pipeline (segjax.data.pipeline on grain: PNG decode, ignore -> weight, crop, batch) on the
   machine's CPU cores, CamVid-size frames, against the steps' consumption;
3. Mask R-CNN ResNet-50-FPN (bench/maskrcnn.py): segjax's train step and inference against torchvision's, bfloat16,
   batch 4 of 800x800;
4. per case: the PyTorch twin under torch.compile (the slowest to prepare, so last).
Every ratio is segjax's images/s over PyTorch's at the same batch, dtype and machine in the same run (> 1:
segjax is faster). `--budget_s` bounds the whole run: parts that no longer fit are skipped and named, and the
JSON and markdown tables in `--out` (default $OUT) are rewritten after every part, so a run stopped early still
leaves its figures.

The cases are keyed by segjax's model registry: a network not registered (yet) is a line of the table, and a
registered one is measured with no change here (a PyTorch twin, when bench/torch_models.py has one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any

# The workers' environment: this process sets JAX_PLATFORMS=cpu for itself (it only reads the registry), which a
# worker measuring the GPU must not inherit.
WORKER_ENV = dict(os.environ)
BENCH = pathlib.Path(__file__).resolve().parent
REPO = BENCH.parent
WORKER = BENCH / "device_workers.py"

VGG_TINY = ((4, 1), (4, 1), (8, 1), (8, 1), (8, 1))


@dataclasses.dataclass(frozen=True)
class Case:
  """One network of the suite.

  Attributes:
    name: the row's name.
    registry_names: names it may have in `segjax.models.MODELS`; the first registered one is measured.
    kwargs: segjax constructor keywords (for a twin: `torch_models.SEGJAX_KWARGS`, the network both sides build).
    torch_name: the bench/torch_models.py twin, or None.
    batch: the GPU batch. Chosen to keep the GPU's compute busy (a step of about 0.1 s on an H100 in bfloat16)
      well inside an 80 GB card: XLA's step footprint and the peak are in the table, to raise it from.
    size: (H, W), CamVid frames (360 x 480; 352 where the net needs a multiple of 16).
    smoke: keyword overrides of the --smoke run (tiny widths, the same code).
  """
  name: str
  registry_names: tuple[str, ...]
  kwargs: dict[str, Any]
  torch_name: str | None
  batch: int
  size: tuple[int, int] = (360, 480)
  smoke: dict[str, Any] = dataclasses.field(default_factory=dict)


def _twin_kwargs(name: str) -> dict[str, Any]:
  sys.path.insert(0, str(BENCH))
  import torch_models  # pylint: disable=import-outside-toplevel
  return dict(torch_models.SEGJAX_KWARGS[name])


def cases() -> list[Case]:
  """The suite's networks (reads bench/torch_models.py's keywords, so it needs torch only where it runs)."""
  try:
    twins = {n: _twin_kwargs(n) for n in ("unet", "segnet", "fcn8s")}
  except ImportError:  # no torch: segjax's defaults for the same networks
    twins = {"unet": {"depth": 4, "base_features": 32, "batch_norm": True, "upsample": "transpose",
                      "dropout_rate": 0.0}, "segnet": {}, "fcn8s": {}}
  return [
      # 185 GFLOP per image and step at 352x480 (XLA's count), ~0.5 GB of float32 activations per image.
      Case("U-Net", ("unet",), twins["unet"], "unet", 32, (352, 480),
           smoke={"depth": 2, "base_features": 4}),
      # 631 GFLOP per image and step, ~1 GB float32 per image.
      Case("SegNet", ("segnet",), twins["segnet"], "segnet", 16, smoke={"base_features": 4}),
      # 829 GFLOP per image and step (the padded VGG16 at 560x680 inside), ~1 GB float32 per image.
      Case("FCN-8s", ("fcn8s",), twins["fcn8s"], "fcn8s", 16,
           smoke={"stages": VGG_TINY, "fc_features": 16}),
      # SMP's DeepLabV3+ on ResNet-50 (output stride 16: 352x480); segjax-only: the device machine has no
      # segmentation_models_pytorch, and bench/torch_models.py no twin yet (bench/smp_models.py compares on a CPU).
      Case("DeepLabV3+", ("deeplabv3plus",), {}, None, 16, (352, 480), smoke={"width": 4, "stem_width": 4}),
      # Mask R-CNN is measured by bench/maskrcnn.py (below), not as a semantic registry model.
  ]


# ----------------------------------------------------------------------------------------------------- report


class Report:
  """Everything measured so far; `write` rewrites device_suite.json and device_suite.md in `out`."""

  def __init__(self, out: pathlib.Path, meta: dict[str, Any]):
    self.out, self.meta = out, meta
    self.records: list[dict[str, Any]] = []
    self.skipped: list[dict[str, str]] = []
    out.mkdir(parents=True, exist_ok=True)

  def steps(self, **match) -> list[dict[str, Any]]:
    return [r for r in self.records if r.get("kind") == "step" and all(r.get(k) == v for k, v in match.items())]

  def ratios(self) -> list[dict[str, Any]]:
    """segjax images/s over PyTorch images/s, per model, dtype and PyTorch mode, from the two measured steps."""
    out = []
    for ours in self.steps(framework="segjax"):
      for theirs in self.steps(framework="pytorch", model=ours["model"], dtype=ours["dtype"]):
        if "step_s" in ours and "step_s" in theirs and ours["batch"] == theirs["batch"]:
          out.append({"model": ours["model"], "dtype": ours["dtype"], "mode": theirs["mode"],
                      "segjax_images_per_s": ours["images_per_s"], "pytorch_images_per_s": theirs["images_per_s"],
                      "ratio": theirs["step_s"] / ours["step_s"]})
    return out

  def write(self) -> None:
    data = dict(self.meta, elapsed_s=time.perf_counter() - self.meta["_start"], records=self.records,
                ratios=self.ratios(), skipped=self.skipped)
    data.pop("_start")
    (self.out / "device_suite.json").write_text(json.dumps(data, indent=1) + "\n")
    (self.out / "device_suite.md").write_text(self.markdown(data))

  def markdown(self, data: dict[str, Any]) -> str:
    dev = next((r for r in self.records if r.get("kind") == "device"), {})
    tdev = next((r for r in self.records if r.get("kind") == "torch_device"), {})
    lines = [f"Device: {dev.get('device_kind', '?')} ({dev.get('platform', '?')}), jax {dev.get('jax', '?')}, "
             f"torch {tdev.get('torch', '-')} on {tdev.get('device', '-')}; {data['cpu_count']} CPU threads; "
             f"python {data['python']}; {'smoke run' if data['smoke'] else 'full run'}, "
             f"{data['elapsed_s']:.0f} s of a {data['budget_s']:.0f} s budget.", ""]
    for r in self.records:
      if r.get("kind") == "matmul":
        lines.append(f"Matmul {r['n']}^3 (jax): " + ", ".join(f"{d} {t:.1f} TFLOP/s" for d, t in r["tflops"].items())
                     + ".")
        lines.append("")
        break
    modes = [m for m in ("eager", "channels_last", "compile") if self.steps(framework="pytorch", mode=m)]
    head = ["model", "batch x HxW", "dtype", "segjax img/s", "step ms", "GFLOP/img", "MFU", "peak GB", "XLA step GB"]
    for m in modes:
      head += [f"torch {m} img/s", f"segjax / {m}"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ours in self.steps(framework="segjax"):
      cells = [ours["model"], f"{ours['batch']} x {ours['size'][0]}x{ours['size'][1]}", ours["dtype"]]
      if "error" in ours:
        cells += [f"failed: {ours['error'][:80]}"] + [""] * (len(head) - 4)
        lines.append("| " + " | ".join(cells) + " |")
        continue
      mfu = "-" if ours["mfu"] is None else (f"{100 * ours['mfu']:.1f}%"
                                             + ("" if ours["peak_source"] == "data sheet" else " (of matmul)"))
      cells += [f"{ours['images_per_s']:.1f}", f"{1e3 * ours['step_s']:.1f}",
                f"{ours['flops'] / ours['batch'] / 1e9:.3g}", mfu, _gb(ours.get("peak_bytes")),
                _gb(ours.get("step_bytes"))]
      for m in modes:
        theirs = self.steps(framework="pytorch", model=ours["model"], dtype=ours["dtype"], mode=m)
        if theirs and "step_s" in theirs[0]:
          cells += [f"{theirs[0]['images_per_s']:.1f}", f"{theirs[0]['step_s'] / ours['step_s']:.2f}"]
        elif theirs:
          cells += [f"failed: {theirs[0]['error'][:60]}", ""]
        else:
          cells += ["-", "-"]
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("segjax / torch: images/s ratio at the same batch and dtype (> 1: segjax faster). MFU: XLA's FLOPs "
                 "of the step / step time / dense peak. peak GB: the device's high-water mark in the segjax "
                 "process (bfloat16 runs first, so the float32 row is the larger of the two); XLA step GB: "
                 "arguments + outputs + temporaries of the compiled step.")
    for s in self.skipped:
      lines.append(f"- {s['what']}: {s['reason']}")
    profiled = [r for r in self.steps(framework="segjax") if "top" in r.get("profile", {})]
    if profiled:
      lines += ["", "Where segjax's step goes (jax.profiler, ms per step; the most expensive operations):"]
    for r in profiled:
      prof = r["profile"]
      ops = ", ".join(f"`{o['name'][:48]}` {o['ms_per_step']:.1f} ({100 * o['share']:.0f}%)" for o in prof["top"][:6])
      lines.append(f"- {r['model']} {r['dtype']} ({prof['where']}, {prof['busy_ms_per_step']:.1f} ms busy of "
                   f"{1e3 * r['step_s']:.1f} ms): {ops}")
    for r in self.steps(framework="pytorch"):
      if "first_s" in r and r["mode"] == "compile":
        lines.append(f"- torch.compile {r['model']} {r['dtype']}: first step {r['first_s']:.0f} s")
    lines.append("")
    detections = [r for r in self.records if r.get("kind") == "detection"]
    if detections:
      lines += ["Mask R-CNN (bench/maskrcnn.py: torchvision's 1x COCO configuration on both sides, the same images "
                "and targets):", "", "| model | batch x HxW | dtype | mode | segjax img/s | torchvision img/s | "
                "segjax / torchvision |", "|---|---|---|---|---|---|---|"]
      for r in (r for r in detections if r["framework"] == "segjax"):
        tv = [t for t in detections if t["framework"] == "torchvision" and t["mode"] == r["mode"]]
        cells = [f"{tv[0]['images_per_s']:.2f}", f"{tv[0]['step_s'] / r['step_s']:.2f}"] if tv else ["-", "-"]
        lines.append(f"| {r['model']} | {r['batch']} x {r['size'][0]}x{r['size'][1]} | {r['dtype']} | {r['mode']} | "
                     f"{r['images_per_s']:.2f} | " + " | ".join(cells) + " |")
      lines.append("")
    impl = next((r for r in self.records if r.get("kind") == "pipeline_impl"), None)
    if impl:
      lines.append(f"Input pipeline: {impl['impl']}{' (' + impl['reason'] + ')' if impl['reason'] else ''}, "
                   f"{impl['frames']} in-memory PNG frames of {impl['size'][0]}x{impl['size'][1]}, batch "
                   f"{impl['batch']}, {impl['cpu_count']} CPU threads.")
      lines.append("")
      consumers = [(f"{r['model']} {r['dtype']}", r["images_per_s"]) for r in self.steps(framework="segjax")
                   if "images_per_s" in r]
      head = ["host pipeline", "img/s"] + [f"x {name} step" for name, _ in consumers]
      lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
      for r in self.records:
        if r.get("kind") == "pipeline":
          if "error" in r:
            lines.append(f"| {r['workers']} workers | failed: {r['error'][:80]} |")
            continue
          lines.append(f"| {r['workers']} workers | {r['images_per_s']:.1f} | "
                       + " | ".join(f"{r['images_per_s'] / rate:.2f}" for _, rate in consumers) + " |")
      lines += ["", "x step: pipeline images/s over the step's images/s (>= 1: the input keeps up).", ""]
    return "\n".join(lines)


def _gb(x) -> str:
  return "-" if x is None else f"{x / 2**30:.1f}"


# ------------------------------------------------------------------------------------------------- orchestration


class Suite:
  """Runs the workers under one time budget and feeds their RESULT lines to the report."""

  def __init__(self, args, report: Report, start: float):
    self.args, self.report, self.start = args, report, start

  def left(self) -> float:
    return self.args.budget_s - (time.perf_counter() - self.start)

  def run(self, what: str, title: str, argv: list[str], limit: float | None = None, need: float = 10.0,
          script: pathlib.Path = WORKER) -> bool:
    left = self.left()
    if left < need:
      self.report.skipped.append({"what": title, "reason": f"skipped: {max(left, 0):.0f} s of the budget left"})
      self.report.write()
      return False
    timeout = min(left, limit) if limit else left
    env = dict(WORKER_ENV, PYTHONUNBUFFERED="1")
    if self.args.smoke or what == "pipeline":
      env["JAX_PLATFORMS"] = "cpu"  # the pipeline is host work; the smoke run must not look for a GPU
    if self.args.smoke:
      env["CUDA_VISIBLE_DEVICES"] = ""
      # One CPU device (an inherited device count, as the tests set, would split a batch of 2 over 8), and tiny
      # programs: XLA:CPU's expensive optimisation passes would take most of the smoke run's time.
      env["XLA_FLAGS"] = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    print(f"[{time.perf_counter() - self.start:5.0f} s] {title} (limit {timeout:.0f} s)", flush=True)
    cmd = [sys.executable, str(script), *([what] if script == WORKER else []), *argv]
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False)
      out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
      out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
      err, rc = f"stopped after {timeout:.0f} s", "timeout"
    got = 0
    for line in out.splitlines():
      if line.startswith("RESULT "):
        record = json.loads(line[len("RESULT "):])
        self.report.records.append(record)
        got += 1
        if record.get("kind") in ("step", "pipeline", "detection"):
          print("    " + _summary(record), flush=True)
    if rc != 0:
      tail = (err or "").strip().splitlines()[-1:] or [""]
      self.report.skipped.append({"what": title, "reason": f"worker ended with {rc} after {got} results: "
                                                           f"{tail[0][:200]}"})
      print(f"    worker ended with {rc}: {(err or '')[-1500:]}", flush=True)
    self.report.write()
    return rc == 0


def _summary(r: dict[str, Any]) -> str:
  if "error" in r:
    what = " ".join(str(r.get(k, "")) for k in ("framework", "mode", "dtype"))
    return f"{r.get('model', 'pipeline')} {what}: {r['error']}"
  if r["kind"] == "pipeline":
    return f"pipeline {r['workers']} workers: {r['images_per_s']:.1f} img/s"
  if r["kind"] == "detection":
    return (f"{r['model']} {r['framework']} {r['mode']} {r['dtype']} batch {r['batch']}: "
            f"{r['images_per_s']:.2f} img/s ({1e3 * r['step_s']:.1f} ms)")
  extra = f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""
  return (f"{r['model']} {r['framework']} {r['mode']} {r['dtype']} batch {r['batch']}: "
          f"{r['images_per_s']:.1f} img/s ({1e3 * r['step_s']:.1f} ms){extra}")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes and widths, seconds: the same code")
  p.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for device_suite.json/.md (default $OUT)")
  p.add_argument("--budget_s", type=float, default=None, help="wall-clock budget (default 420; smoke 240)")
  p.add_argument("--cases", nargs="+", default=None, help="case names or registry names (default: all)")
  p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32"])
  p.add_argument("--torch_modes", nargs="*", default=["eager", "channels_last", "compile"],
                 choices=["eager", "channels_last", "compile"])
  p.add_argument("--compile_limit_s", type=float, default=150.0, help="per torch.compile worker (compile + timing)")
  p.add_argument("--batch_scale", type=float, default=1.0, help="multiplies every case's batch")
  p.add_argument("--workers", type=int, nargs="+", default=None, help="input pipeline worker counts")
  p.add_argument("--profile_steps", type=int, default=3,
                 help="trace this many segjax steps per network (first dtype) for the table of where time goes")
  p.add_argument("--matmul_n", type=int, default=0, help="side of the matmul timed for the peak (8192; smoke 256)")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  start = time.perf_counter()
  smoke = args.smoke
  if args.budget_s is None:
    args.budget_s = 240.0 if smoke else 420.0
  out = pathlib.Path(args.out or (REPO / "runs" / ("device_suite_smoke" if smoke else "device_suite")))
  sys.path.insert(0, str(REPO))
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this process only looks up the registry, no device
  from segjax import models  # pylint: disable=import-outside-toplevel
  report = Report(out, {"_start": start, "smoke": smoke, "budget_s": args.budget_s, "python": platform.python_version(),
                        "machine": platform.machine(), "cpu_count": os.cpu_count(), "argv": sys.argv[1:]})
  suite = Suite(args, report, start)
  timing = {"warmup": 1, "rounds": 3, "inner": 1} if smoke else {"warmup": 2, "rounds": 5, "inner": 3}
  selected = []
  for case in cases():
    if args.cases and case.name not in args.cases and not set(case.registry_names) & set(args.cases):
      continue
    registered = [n for n in case.registry_names if n in models.MODELS]
    if not registered:
      report.skipped.append({"what": case.name, "reason": f"not in segjax's model registry yet (looked for "
                                                          f"{', '.join(case.registry_names)})"})
      continue
    kwargs = dict(case.kwargs, **(case.smoke if smoke else {}))
    batch = 2 if smoke else max(1, round(case.batch * args.batch_scale))
    size = (32, 32) if smoke else case.size
    spec = {"name": case.name, "registry_name": registered[0], "kwargs": kwargs, "batch": batch, "size": size,
            "classes": 11, "torch_name": case.torch_name,
            "torch_overrides": {k: v for k, v in kwargs.items() if k in case.smoke} if smoke else {}}
    selected.append((case, spec))
  report.write()
  common = ["--timing", json.dumps(timing), "--dtypes", *args.dtypes]
  eager = [m for m in args.torch_modes if m != "compile"]
  # One process per case on a device (memory and peak statistics per model); one for all in the smoke run.
  groups = [selected] if smoke else [[c] for c in selected]
  for group in groups:
    names = " + ".join(case.name for case, _ in group)
    specs = json.dumps([spec for _, spec in group])
    matmul_n = str(args.matmul_n or (256 if smoke else 8192))
    suite.run("jax", f"{names}: segjax", ["--cases", specs, "--matmul_n", matmul_n, "--profile_steps",
                                          str(args.profile_steps), *common],
              limit=None if smoke else 150, need=5 if smoke else 30)
    twins = json.dumps([spec for case, spec in group if case.torch_name])
    for case, _ in group:
      if case.torch_name is None:
        report.skipped.append({"what": f"{case.name}: PyTorch", "reason": "no twin in bench/torch_models.py"})
    if eager and twins != "[]":
      suite.run("torch", f"{names}: PyTorch {' + '.join(eager)}", ["--cases", twins, "--modes", *eager, *common],
                limit=None if smoke else 100, need=5 if smoke else 15)
  frames = {"name": "CamVid frames", "size": (36, 48) if smoke else (360, 480), "batch": 2 if smoke else 8,
            "classes": 11, "frames": 6 if smoke else 48}
  workers = args.workers or ([0] if smoke else [0, 8, 15])
  suite.run("pipeline", "input pipeline", ["--cases", json.dumps([frames]), "--workers", *map(str, workers),
                                           "--batches", "2" if smoke else "30"], limit=None if smoke else 75,
            need=5 if smoke else 30)
  # Mask R-CNN, segjax against torchvision in the same Python (smoke: segjax's small backbone alone, tiny).
  detection = (["--jax-only", "--backbone", "small", "--size", "64", "--batch", "1", "--repeats", "1"] if smoke else
               ["--size", "800", "--batch", "4", "--repeats", "5", "--dtype", "bfloat16",
                "--torch-python", sys.executable])
  suite.run("maskrcnn", "Mask R-CNN: segjax + torchvision", [*detection, "--result-lines"],
            limit=None if smoke else 150, need=5 if smoke else 45, script=BENCH / "maskrcnn.py")
  if "compile" in args.torch_modes:
    twins = [(case, spec) for case, spec in selected if case.torch_name]
    # Smoke: the first twin only, both dtypes in one process, through TorchDynamo without Inductor (Inductor's
    # C++ build takes minutes on a 2-core CPU): the code path is the same, the compiler is not. On a device: one
    # process per network and dtype, each under --compile_limit_s, so one slow compile costs only its own row.
    # bfloat16 of every network first, then float32: a budget that runs out loses the less used precision.
    runs = ([(twins[0], args.dtypes)] if twins else []) if smoke else [(t, [d]) for d in args.dtypes for t in twins]
    for (case, spec), dtypes in runs:
      suite.run("torch", f"{case.name}: PyTorch compile {' + '.join(dtypes)}",
                ["--cases", json.dumps([spec]), "--modes", "compile", "--timing", json.dumps(timing), "--dtypes",
                 *dtypes, "--compile_backend", "eager" if smoke else "inductor"],
                limit=args.compile_limit_s, need=5 if smoke else 60)
  report.write()
  print(f"[{time.perf_counter() - start:5.0f} s] wrote {out / 'device_suite.json'} and {out / 'device_suite.md'}")
  print((out / "device_suite.md").read_text())
  return 0


if __name__ == "__main__":
  sys.exit(main())
