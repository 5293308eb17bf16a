"""A recipe trained in float32 and in bfloat16 compute, side by side: test quality, wall time and throughput.

    python bench/precision.py                               # the quickstart recipe, full schedule, both dtypes
    python bench/precision.py --steps 600                   # a shortened schedule (cosine decay over 600 steps)
    python bench/precision.py --config configs/unet_camvid.py --steps 200 --split validation
    python bench/precision.py --mode steps                  # only the interleaved train-step timing

Each run trains from scratch with the recipe's seed, so both see the same initial parameters (float32 in both) and
the same batches (`segjax.training.loop.train_and_evaluate`), then evaluates `--split` from the last checkpoint as
eval.py does (`segjax.apps.eval.run_eval`). Printed per dtype: mIoU and pixel accuracy, the training wall time
(compilation and checkpoints included), the median training throughput in images/s from metrics.jsonl (the first
logged interval, which includes compilation, left out), and the bf16 / f32 ratios. bf16 speed on a CPU says nothing
about accelerators: XLA:CPU has no fast bfloat16 convolution.

The wall times of the two runs are taken minutes apart; on a shared machine they see different loads. The step
timing (`--mode steps`, also part of the default) runs the recipe's jitted train step in both dtypes alternately
on one synthetic batch of the recipe's shape, so a change in load hits both alike; it reports median milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import pathlib
import statistics
import tempfile
import time

import jax
import numpy as np

from segjax import experiment
from segjax.apps import eval as eval_lib
from segjax.data import pipeline
from segjax.training import loop, steps

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def run(args, dtype: str, workdir: pathlib.Path) -> dict:
  config = load_config(args.config)
  config.model.dtype = dtype
  config.num_visualizations = 0
  if args.steps:
    config.num_train_steps = args.steps
    config.checkpoint_every_steps = min(config.checkpoint_every_steps, args.steps)
  if args.data_dir:
    config.dataset.data_dir = args.data_dir
  if (workdir / "checkpoints").exists():
    raise SystemExit(f"{workdir} already holds checkpoints: training would resume from them instead of starting "
                     "from scratch. Pass another --workdir or delete it.")
  start = time.perf_counter()
  loop.train_and_evaluate(config, workdir, progress=False)
  train_seconds = time.perf_counter() - start
  with contextlib.redirect_stdout(io.StringIO()):  # run_eval prints its table; one summary table below
    result = eval_lib.run_eval(config, str(workdir), split=args.split)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  rates = [r["images_per_second"] for r in records if "images_per_second" in r][1:]
  return {"dtype": dtype, "steps": config.num_train_steps, "batch": config.batch_size,
          "train_s": train_seconds, "img_s": statistics.median(rates) if rates else float("nan"),
          "miou": result["mean_iou"], "pixel_acc": result["pixel_accuracy"]}


def step_times(args, repeats: int) -> dict[str, float]:
  """Median seconds of one train step per dtype, the dtypes timed alternately (see the module docstring)."""
  fns, states, batch = {}, {}, None
  for dtype in args.dtypes:
    config = load_config(args.config)
    config.model.dtype = dtype
    if args.data_dir:
      config.dataset.data_dir = args.data_dir
    exp = experiment.build(config)
    if batch is None:
      rng = np.random.default_rng(0)
      h, w = config.dataset.crop_size
      shape = (config.batch_size, h, w)
      batch = {"image": rng.integers(0, 256, (*shape, exp.spec.num_channels), dtype=np.uint8),
               "label": rng.integers(0, exp.spec.num_classes, shape, dtype=np.int32),
               "weight": np.ones(shape, np.float32)}
      batch = pipeline.to_global(batch, exp.mesh)
    fns[dtype] = steps.jit_train_step(exp)  # the recipe's step: its seed, normalisation, augmentation and loss
    states[dtype], out = fns[dtype](exp.init_state(), batch)  # compiles
    jax.block_until_ready(out)
  times = {dtype: [] for dtype in args.dtypes}
  for _ in range(repeats):
    for dtype in args.dtypes:
      start = time.perf_counter()
      states[dtype], out = fns[dtype](states[dtype], batch)
      jax.block_until_ready(out)
      times[dtype].append(time.perf_counter() - start)
  return {dtype: statistics.median(t) for dtype, t in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", type=pathlib.Path, default=REPO / "configs" / "quickstart.py")
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
  parser.add_argument("--steps", type=int, default=0, help="num_train_steps (0: the recipe's)")
  parser.add_argument("--split", default="test")
  parser.add_argument("--data_dir", default=None, help="tfds data_dir (default: the recipe's)")
  parser.add_argument("--workdir", type=pathlib.Path, default=None,
                      help="runs go to WORKDIR/<dtype> and are kept (default: a temporary directory)")
  parser.add_argument("--mode", choices=("both", "train", "steps"), default="both",
                      help="train: the training runs; steps: the interleaved step timing; both (default)")
  parser.add_argument("--step_repeats", type=int, default=20)
  args = parser.parse_args()
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s): "
        f"{jax.devices()[0].device_kind}; recipe {args.config.name}, evaluated on {args.split}", flush=True)
  if args.mode in ("both", "steps"):
    times = step_times(args, args.step_repeats)
    batch = load_config(args.config).batch_size
    print(f"train step, median of {args.step_repeats} (dtypes alternating): " + ", ".join(
        f"{dtype} {1e3 * t:.1f} ms ({batch / t:.1f} img/s)" for dtype, t in times.items()), flush=True)
    if "float32" in times:
      for dtype, t in times.items():
        if dtype != "float32":
          print(f"  {dtype} / float32 step time: {t / times['float32']:.2f}x", flush=True)
  if args.mode == "steps":
    return
  with tempfile.TemporaryDirectory() as tmp:
    root = args.workdir or pathlib.Path(tmp)
    rows = []
    for dtype in args.dtypes:
      rows.append(run(args, dtype, root / dtype))
      r = rows[-1]
      print(f"{r['dtype']:<10} {r['steps']} steps x {r['batch']}: train {r['train_s']:.0f} s, {r['img_s']:.1f} img/s, "
            f"mIoU {r['miou']:.4f}, pixel accuracy {r['pixel_acc']:.4f}", flush=True)
  print(f"\n{'dtype':<10}{'steps':>7}{'train s':>9}{'img/s':>8}{'mIoU':>9}{'pixel acc':>11}")
  for r in rows:
    print(f"{r['dtype']:<10}{r['steps']:>7}{r['train_s']:>9.0f}{r['img_s']:>8.1f}{r['miou']:>9.4f}"
          f"{r['pixel_acc']:>11.4f}")
  ref = next((r for r in rows if r["dtype"] == "float32"), None)
  if ref is not None:
    for r in rows:
      if r is not ref:
        print(f"{r['dtype']} / float32: train time {r['train_s'] / ref['train_s']:.2f}x, img/s "
              f"{r['img_s'] / ref['img_s']:.2f}x, mIoU {100 * (r['miou'] - ref['miou']):+.2f} points, pixel accuracy "
              f"{100 * (r['pixel_acc'] - ref['pixel_acc']):+.2f} points")


if __name__ == "__main__":
  main()
