"""Where the time of one segjax training step goes on XLA:CPU, by kind of operation.

    python bench/profile_step.py                 # U-Net 4 levels, base 32, BN, 8 x 128x128 (bench/throughput.py's)
    python bench/profile_step.py --stock-xla     # with XLA:CPU's default flags (the "before")
    python bench/profile_step.py --top 25        # + the 25 most expensive HLO operations

Runs the jitted train step (segjax.training.steps.train_step of bench/_experiment.py's Experiment: BN in training
mode, cross-entropy, Adam) on one XLA CPU device, records `--steps` steps with `jax.profiler` (a Perfetto trace),
and sums the duration of every executed HLO operation, over all threads, into kinds read from the optimised HLO of
the same compiled step: convolution forward, convolution input gradient, convolution kernel gradient (a
convolution whose output is a kernel: the batch is contracted), dot (the matmul up-convolutions), copies and
transposes, reductions (BatchNorm statistics, the loss), and other fusions (element-wise work). Printed per kind:
milliseconds per step summed over threads, share, and the achieved GFLOP/s of the convolution kinds (XLA's FLOP
count per op).

Thread time above wall time means the step's operations ran on several cores at once. Convolutions that XLA runs
with its Eigen kernels (segjax's default on CPU, segjax/platform.py) are launched asynchronously on the intra-op
pool: the trace gives them only their launch, so their time appears as "async convolutions + waiting", the wall
time not covered by any traced operation of the executor thread.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="unet", choices=["unet", "segnet", "fcn8s"])
  p.add_argument("--size", nargs=2, type=int, default=[128, 128], metavar=("H", "W"))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--classes", type=int, default=11)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--stock-xla", action="store_true",
                 help="XLA:CPU's own defaults instead of segjax.platform's flags (the 'before' of BENCHMARKS.md)")
  p.add_argument("--top", type=int, default=0, help="also list the N most expensive operations")
  p.add_argument("--xla-flags", default="")
  p.add_argument("--conv-backend", default="auto", choices=["auto", "xla", "onednn"],
                 help="segjax's convolution kernels (config.conv_backend)")
  return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
  os.environ["XLA_FLAGS"] = " ".join(
      f for f in (os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=1", ARGS.xla_flags) if f)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if not ARGS.stock_xla:
    from segjax import platform as _platform  # imports no JAX
    _platform.configure_xla_cpu()

import functools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _experiment  # noqa: E402
from segjax import models  # noqa: E402
from segjax.training import steps  # noqa: E402

# segjax's oneDNN convolutions (segjax.ops.conv) appear as custom calls.
_ONEDNN_KINDS = {"SegjaxOnednnConvForward": "conv forward", "SegjaxOnednnConvBackwardData": "conv input grad",
                 "SegjaxOnednnConvBackwardWeights": "conv kernel grad"}
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s+([\w\-]+)\(")


def classify(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> kind, for the instructions of the entry computation and of fusions' callers."""
  kinds = {}
  computations = {}
  current = None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if header and "=" not in line.split("{")[0]:
      current = header.group(1)
      computations[current] = []
      continue
    if current is not None:
      computations[current].append(line)

  def kind_of_lines(lines) -> str | None:
    for line in lines:
      m = _INSTR.match(line)
      if not m:
        continue
      shape, opcode = m.group(2), m.group(3)
      if opcode == "convolution":
        # XLA writes a kernel gradient as a convolution whose window is the whole feature map (the batch is
        # contracted as the feature dimension); the input gradient carries the transpose of the autodiff trace.
        window = re.search(r"size=([\dx]+)", line)
        if window and max(int(d) for d in window.group(1).split("x")) > 7:
          return "conv kernel grad"
        meta = re.search(r'op_name="([^"]*)"', line)
        return "conv input grad" if meta and "transpose(" in meta.group(1) else "conv forward"
      if opcode == "dot":
        return "dot (up-conv, 1x1)"
    return None

  for comp, lines in computations.items():
    for line in lines:
      m = _INSTR.match(line)
      if not m:
        continue
      name, opcode = m.group(1), m.group(3)
      if opcode in ("convolution", "dot"):
        kinds[name] = kind_of_lines([line])
      elif opcode == "fusion":
        called = re.search(r"calls=%?([\w.\-]+)", line)
        inner = kind_of_lines(computations.get(called.group(1), [])) if called else None
        if inner:
          kinds[name] = inner
        elif re.search(r"transpose|copy", name) or (called and re.search(r"transpose|copy", called.group(1))):
          kinds[name] = "copy / transpose"
        elif re.search(r"reduce", name) or (called and any(" reduce(" in l for l in computations.get(called.group(1), []))):
          kinds[name] = "reduction"
        else:
          kinds[name] = "other fusion"
      elif opcode in ("copy", "transpose"):
        kinds[name] = "copy / transpose"
      elif opcode in ("reduce", "reduce-window"):
        kinds[name] = "reduction"
      elif opcode in ("custom-call",):
        target = re.search(r'custom_call_target="([^"]+)"', line)
        kinds[name] = _ONEDNN_KINDS.get(target.group(1) if target else "", "custom call")
      elif opcode not in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast"):
        kinds.setdefault(name, "other")
  return kinds


def main(args) -> None:
  import torch_models  # the twin's arguments: the same network bench/throughput.py times
  h, w = args.size
  model = models.build_model(args.model, args.classes, **dict(torch_models.SEGJAX_KWARGS[args.model]))
  # bench/throughput.py's step: inputs / 255, Adam 1e-3, cross-entropy, no augmentation, on the one device.
  exp = _experiment.build(model, batch=args.batch, size=(h, w), mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0),
                          conv_backend=args.conv_backend)
  state = exp.init_state()
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(0, 255, (args.batch, h, w, 3)).astype(np.float32),
           "label": rng.integers(0, args.classes, (args.batch, h, w)).astype(np.int32),
           "weight": np.ones((args.batch, h, w), np.float32)}
  batch = _experiment.place(exp, batch)
  step = jax.jit(functools.partial(steps.train_step, exp=exp), donate_argnums=0)
  compiled = step.lower(state, batch).compile()
  kinds = classify(compiled.as_text())
  flops = _flops_per_op(compiled.as_text())
  for _ in range(2):
    state, _ = jax.block_until_ready(compiled(state, batch))
  walls = []
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      for _ in range(args.steps):
        start = time.perf_counter()
        state, _ = jax.block_until_ready(compiled(state, batch))
        walls.append(time.perf_counter() - start)
    trace_file = glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True)[0]
    with gzip.open(trace_file) as f:
      events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  per_op = collections.Counter()
  per_thread = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in kinds:
      per_op[e["name"]] += e.get("dur", 0) / 1e3 / args.steps  # microseconds -> ms per step
      per_thread[e.get("tid")] += e.get("dur", 0) / 1e3 / args.steps
  per_kind = collections.Counter()
  kind_flops = collections.Counter()
  for name, ms in per_op.items():
    per_kind[kinds[name]] += ms
    kind_flops[kinds[name]] += flops.get(name, 0.0)
  total = sum(per_kind.values())
  print(f"{args.model}, batch {args.batch} x {h}x{w}, {'XLA:CPU defaults' if args.stock_xla else 'segjax.platform flags'}; "
        f"jax {jax.__version__}, {os.cpu_count()} CPU threads, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"wall per step (median of {args.steps}, under the profiler): {1e3 * float(np.median(walls)):.0f} ms; "
        f"operations' thread time per step: {total:.0f} ms")
  print(f"{'kind':22} {'ms/step':>9} {'share':>7} {'GFLOP/s':>8}")
  for kind, ms in per_kind.most_common():
    rate = f"{kind_flops[kind] / ms / 1e6:8.1f}" if kind_flops[kind] and ms else f"{'':8}"
    print(f"{kind:22} {ms:9.0f} {100 * ms / total:6.1f}% {rate}")
  uncovered = 1e3 * float(np.mean(walls)) - max(per_thread.values(), default=0.0)
  print(f"{'async convolutions + waiting':22}: {uncovered:.0f} ms/step (mean wall minus the busiest thread's traced "
        f"operations)")
  if args.top:
    print(f"\n{'operation':40} {'kind':20} {'ms/step':>8} {'GFLOP/s':>8}")
    for name, ms in per_op.most_common(args.top):
      rate = f"{flops[name] / ms / 1e6:8.1f}" if flops.get(name) else ""
      print(f"{name[:40]:40} {kinds[name]:20} {ms:8.1f} {rate:>8}")


def _flops_per_op(hlo_text: str) -> dict[str, float]:
  """2 * MACs of every convolution and dot, from shapes in the optimised HLO (fusions: their inner op)."""
  shapes = {}
  result = {}
  lines = hlo_text.splitlines()
  for line in lines:
    m = _INSTR.match(line)
    if m:
      shapes[m.group(1)] = m.group(2)

  def dims(shape):
    inner = shape.split("{")[0]
    return [int(d) for d in re.findall(r"\d+", inner.split("[", 1)[1])] if "[" in inner else []

  inner_flops = {}
  comp = None
  for line in lines:
    header = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if header and "=" not in line.split("{")[0]:
      comp = header.group(1)
      continue
    m = _INSTR.match(line)
    if not m or m.group(3) not in ("convolution", "dot", "custom-call"):
      continue
    operands = re.findall(r"%([\w.\-]+)", line.split("(", 1)[1])
    if len(operands) < 2:
      continue
    out, a, b = dims(m.group(2)), dims(shapes.get(operands[0], "")), dims(shapes.get(operands[1], ""))
    if m.group(3) == "custom-call":
      target = re.search(r'custom_call_target="([^"]+)"', line)
      if not target or target.group(1) not in _ONEDNN_KINDS:
        continue
      # Operands and result are two [N, H, W, C]-like activations and one [KH, KW, C, O] kernel; every output
      # pixel of the convolution (y or dy) costs KH * KW * C multiply-adds per output channel.
      grid, kernel = {"SegjaxOnednnConvForward": (out, b),  # (x, w) -> y
                      "SegjaxOnednnConvBackwardData": (a, b),  # (dy, w) -> dx
                      "SegjaxOnednnConvBackwardWeights": (b, out)}[target.group(1)]  # (x, dy) -> dw
      fl = 2.0 * float(np.prod(grid)) * kernel[0] * kernel[1] * kernel[2]
    elif m.group(3) == "convolution":
      # out elements x (kernel spatial x in-features): kernel = the operand whose product is smaller
      lab = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", line)
      if not lab:
        continue
      rhs_labels = lab.group(2)
      kernel = b
      reduce = 1
      for ch, d in zip(rhs_labels, kernel):
        if ch != "o":
          reduce *= d
      fl = 2.0 * float(np.prod(out)) * reduce
    else:
      contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
      k = 1
      if contract and contract.group(1):
        for i in contract.group(1).split(","):
          k *= a[int(i)]
      fl = 2.0 * float(np.prod(out)) * k
    inner_flops.setdefault(comp, 0.0)
    inner_flops[comp] += fl
    result[m.group(1)] = fl
  for line in lines:
    m = _INSTR.match(line)
    if m and m.group(3) == "fusion":
      called = re.search(r"calls=%?([\w.\-]+)", line)
      if called and called.group(1) in inner_flops:
        result[m.group(1)] = inner_flops[called.group(1)]
  return result


if __name__ == "__main__":
  main(ARGS)
