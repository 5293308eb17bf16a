"""5-fold cross-validation of U-Net on the 30 labelled ISBI 2012 EM images: pixel error, IoU and Dice per fold.

    python bench/isbi_cv.py --smoke                       # fold 0, 4 steps, under a minute: the script end to end
    python bench/isbi_cv.py --preset cpu --estimate       # times a few real steps, projects the 5-fold wall time
    python bench/isbi_cv.py --preset cpu                  # 5 folds of configs/unet_isbi2012_cpu.py (2 CPU cores)
    python bench/isbi_cv.py --preset full                 # 5 folds of configs/unet_isbi2012.py (an accelerator)
    python bench/isbi_cv.py --preset cpu --folds 0 3 --steps 100 --out runs/isbi_cv/cpu.json

Each fold trains a fresh network on 24 images with segjax's own loop (`segjax.training.loop.train_and_evaluate`,
checkpoints in --workdir/fold<k>, so an interrupted run resumes fold by fold) and scores the 6 held-out
images whole, at 512x512, with `segjax.evaluation.semantic.evaluate` (the "whole" inference of eval.py). Folds are tfds
split strings over the records (record i is train/image/i.png), e.g. fold 1 trains on "train[0:6]+train[12:30]"
and evaluates "train[6:12]".

The folds are contiguous blocks of 6 by default: the images are consecutive serial sections, and neighbours look
alike, so a random assignment would put near-copies of a held-out image in its training set. --assignment
shuffled draws the blocks from a permutation seeded by --fold_seed instead.

Classes (the dataset's NOTES.txt): 0 = membrane (the foreground, about 22% of pixels), 1 = cell interior
(background). Printed per fold, then as mean ± sample std (ddof 1) over folds, then pooled over every held-out
pixel: pixel error = 1 - pixel accuracy, IoU and Dice of each class, and their mean IoU, all from the summed
confusion matrix of the fold's images (`segjax.evaluation.metrics.compute_metrics`).

Reference: the U-Net paper's pixel error of 0.0611 on the ISBI challenge is a different measurement (withheld
test labels, the challenge's own thresholded definition), so no ratio is printed against it.

Every preset applies the paper's augmentation (`config.use_dataset("isbi2012")`: shifts, rotations, flips,
gray-value changes and elastic deformations on a 3x3 grid of N(0, 10 px) displacements): every ISBI recipe starts
from that preset (tests/test_configs.py checks it). Seeds are fixed (--seed for initialisation,
data order and augmentation, the same in every fold), so a rerun on the same machine repeats the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import shlex
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segjax import platform as segjax_platform  # noqa: E402  (imports no JAX)

segjax_platform.configure_xla_cpu()  # train.py's XLA:CPU flags, before any JAX computation

from segjax import checkpoint as checkpoint_lib  # noqa: E402  pylint: disable=wrong-import-position
from segjax import config as config_lib  # noqa: E402  pylint: disable=wrong-import-position
from segjax import experiment  # noqa: E402  pylint: disable=wrong-import-position
from segjax.evaluation import metrics  # noqa: E402  pylint: disable=wrong-import-position
from segjax.data import datasets, pipeline  # noqa: E402  pylint: disable=wrong-import-position
from segjax.evaluation import semantic  # noqa: E402  pylint: disable=wrong-import-position
from segjax.training import loop  # noqa: E402  pylint: disable=wrong-import-position

NUM_IMAGES = 30  # labelled images of ISBI 2012 (train/image/0.png .. 29.png)
FOREGROUND = "membrane"
PRESETS = {
    "cpu": REPO / "configs" / "unet_isbi2012_cpu.py",
    "full": REPO / "configs" / "unet_isbi2012.py",
}
SMOKE_STEPS = 4
# (key, column title): the figures of every fold, as fractions.
COLUMNS = (("pixel_error", "pixel error"), ("iou_fg", "IoU membrane"), ("iou_bg", "IoU cell"),
           ("dice_fg", "Dice membrane"), ("dice_bg", "Dice cell"), ("miou", "mIoU"))


def fold_images(num_folds: int, assignment: str, fold_seed: int) -> list[list[int]]:
  """The held-out image indices of each fold (sorted), from contiguous blocks of an image order."""
  if NUM_IMAGES % num_folds:
    raise ValueError(f"--num_folds={num_folds} does not divide the {NUM_IMAGES} images: choose 2, 3, 5, 6, 10, ...")
  order = np.arange(NUM_IMAGES)
  if assignment == "shuffled":
    order = np.random.default_rng(fold_seed).permutation(NUM_IMAGES)
  return [sorted(int(i) for i in block) for block in np.split(order, num_folds)]


def split_string(indices) -> str:
  """tfds split of the given records of "train", as runs of consecutive indices: [0,1,2,7] -> train[0:3]+train[7:8].

  Records come out in ascending index order, whatever order `indices` has.
  """
  indices = sorted(set(int(i) for i in indices))
  runs, start = [], indices[0]
  for prev, cur in zip(indices, [*indices[1:], None]):
    if cur != prev + 1:
      runs.append(f"train[{start}:{prev + 1}]")
      start = cur
  return "+".join(runs)


def fold_config(preset: str, fold: list[int], args) -> ml_collections.ConfigDict:
  """The preset's recipe (with the paper's augmentation, from the ISBI preset) with the fold's splits and the
  run's overrides."""
  c = config_lib.load_recipe(str(PRESETS[preset]))
  c.dataset.train_split = split_string(sorted(set(range(NUM_IMAGES)) - set(fold)))
  c.eval_split = split_string(fold)
  c.seed = args.seed
  if args.steps is not None:
    c.num_train_steps = args.steps
  c.checkpoint_every_steps = c.num_train_steps  # only the final state is needed; saves cost time on CPU
  c.log_every_steps = min(c.log_every_steps, c.num_train_steps)
  c.eval_every_steps = 0  # the held-out images are scored once, after training, below
  # One eval batch holds every held-out image (padded to a multiple of the devices).
  c.eval_batch_size = pipeline.round_up(len(fold), jax.device_count())
  if args.data_dir is not None:
    c.dataset.data_dir = args.data_dir
  if args.manual_dir is not None:
    c.dataset.manual_dir = args.manual_dir
  return c


def fold_figures(cm: np.ndarray, class_names) -> dict[str, float]:
  """Pixel error, IoU and Dice of each class, and mIoU, from a [K, K] confusion matrix."""
  m = metrics.compute_metrics(cm, class_names)
  fg = list(class_names).index(FOREGROUND)
  bg = 1 - fg
  per = m["per_class"]
  return {"pixel_error": 1.0 - m["pixel_accuracy"], "iou_fg": per[fg]["iou"], "iou_bg": per[bg]["iou"],
          "dice_fg": per[fg]["dice"], "dice_bg": per[bg]["dice"], "miou": m["mean_iou"]}


def _last_train_record(workdir: pathlib.Path) -> dict:
  path = workdir / "metrics.jsonl"
  records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
  records = [r for r in records if "loss" in r]
  return records[-1] if records else {}


def check_split_images(config: ml_collections.ConfigDict, fold: list[int]) -> None:
  """Reads the file names behind the fold's splits: the held-out ones must be `fold` in order, the training ones
  the other images, so the per-image figures name the right files and no image is in both splits."""
  def names(split):
    source = datasets.data_source(config.dataset, split)
    stems = [source[i]["filename"] for i in range(len(source))]
    return [int(stem.decode() if isinstance(stem, bytes) else stem) for stem in stems]
  held, train = names(config.eval_split), names(config.dataset.train_split)
  if held != list(fold) or sorted(train) != sorted(set(range(NUM_IMAGES)) - set(fold)):
    raise RuntimeError(f"Split {config.eval_split!r} read images {held} and {config.dataset.train_split!r} read "
                       f"{train}, not the fold's {fold} and the rest: the prepared isbi2012 records are not in file "
                       "order; delete the prepared copy under --data_dir and run again.")


def run_fold(k: int, fold: list[int], args, workdir: pathlib.Path) -> dict:
  """Trains fold `k` (or resumes it from `workdir`) and scores its held-out images."""
  config = fold_config(args.preset, fold, args)
  check_split_images(config, fold)
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
  resumed_from = ckpt.latest_step()
  ckpt.close()
  start = time.perf_counter()
  state = loop.train_and_evaluate(config, workdir, progress=not args.quiet)
  jax.block_until_ready(state)
  train_s = time.perf_counter() - start
  start = time.perf_counter()
  exp = experiment.build(config)
  result = semantic.evaluate(exp, state, config.eval_split, progress=False)
  eval_s = time.perf_counter() - start
  names = exp.spec.class_names
  per_image = []
  for i, index in enumerate(fold):  # split order is ascending index order (split_string)
    tp, fp, fn, tn = (result.stats[key][i] for key in ("tp", "fp", "fn", "tn"))
    cm_i = np.diag(tp)
    cm_i[0, 1], cm_i[1, 0] = fn[0], fp[0]  # 2 classes: class 0's misses are predicted 1 and vice versa
    per_image.append({"image": index, **fold_figures(cm_i, names)})
  last = _last_train_record(workdir)
  return {"fold": k, "held_out": fold, "train_split": config.dataset.train_split, "eval_split": config.eval_split,
          "workdir": str(workdir), "resumed_from_step": resumed_from, "num_train_steps": config.num_train_steps,
          "figures": fold_figures(result.cm, names), "confusion_matrix": result.cm.tolist(),
          "class_names": list(names), "per_image": per_image, "train_seconds": train_s, "eval_seconds": eval_s,
          "final_train_loss": last.get("loss"), "final_train_pixel_accuracy": last.get("train_pixel_accuracy"),
          "train_images_per_second": last.get("images_per_second"), "config": json.loads(config.to_json())}


def summarise(results: list[dict]) -> dict:
  """Mean and sample std (ddof 1; 0 for one fold) of each figure over folds, and the pooled figures."""
  out = {}
  for key, _ in COLUMNS:
    values = np.array([r["figures"][key] for r in results], np.float64)
    out[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "n": len(values)}
  pooled = np.sum([np.asarray(r["confusion_matrix"], np.int64) for r in results], axis=0)
  return {"over_folds": out, "pooled": fold_figures(pooled, results[0]["class_names"]),
          "pooled_confusion_matrix": pooled.tolist()}


def _pct(x) -> str:
  return "-" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def format_table(results: list[dict], summary: dict) -> str:
  header = ["fold", "held-out", *[title for _, title in COLUMNS], "train s", "eval s"]
  rows = []
  for r in results:
    held = r["held_out"]
    held_text = f"{held[0]}-{held[-1]}" if held == list(range(held[0], held[-1] + 1)) else ",".join(map(str, held))
    rows.append([str(r["fold"]), held_text, *[_pct(r["figures"][key]) for key, _ in COLUMNS],
                 f"{r['train_seconds']:.0f}", f"{r['eval_seconds']:.1f}"])
  stats = summary["over_folds"]
  rows.append(["mean±std", "", *[f"{_pct(stats[key]['mean'])}±{_pct(stats[key]['std'])}" for key, _ in COLUMNS],
               "", ""])
  rows.append(["pooled", "all", *[_pct(summary["pooled"][key]) for key, _ in COLUMNS], "", ""])
  widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
  lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows]]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines) + "\n(percent; pixel error = 1 - pixel accuracy; membrane = class 0, the foreground)"


def machine() -> dict:
  return {"processor": platform.processor(), "platform": platform.platform(), "python": platform.python_version(),
          "cpu_count": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()], "device_kind": jax.devices()[0].device_kind}


def estimate(folds: list[list[int]], args, workdir: pathlib.Path) -> None:
  """Trains fold 0 for a few steps, logging every step, and projects the wall time of the whole run.

  The per-step figure is the median interval between consecutive step records of segjax's loop (each record
  waits for its step), so it includes the host input pipeline as the real run does; the first interval holds
  compilation and goes into the per-fold overhead, with setup, the checkpoint save and the evaluation.
  """
  n = max(args.estimate_steps, 4)
  config = fold_config(args.preset, folds[0], args)
  steps = config.num_train_steps
  config.num_train_steps = n
  config.checkpoint_every_steps, config.log_every_steps = n, 1
  start = time.perf_counter()
  state = loop.train_and_evaluate(config, workdir, progress=False)
  jax.block_until_ready(state)
  train_s = time.perf_counter() - start
  times = [json.loads(line)["time"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  step_s = float(np.median(np.diff(times[1:])))  # from step 2: step 1's record includes compilation
  start = time.perf_counter()
  exp = experiment.build(config)
  semantic.evaluate(exp, state, config.eval_split, progress=False)
  eval_s = time.perf_counter() - start
  overhead = train_s - (n - 1) * step_s
  per_fold = overhead + (steps - 1) * step_s + eval_s
  print(f"{args.preset}: {config.batch_size} x {tuple(config.dataset.crop_size)} crops, model "
        f"{config.model.name} depth {config.model.depth} x {config.model.base_features} features, {n} steps timed")
  print(f"train step (median of {n - 2} intervals): {1e3 * step_s:.0f} ms; setup + compile + first step + save: "
        f"{overhead:.1f} s; evaluation of {len(folds[0])} images (with compilation): {eval_s:.1f} s")
  print(f"projected: {per_fold / 60:.1f} min per fold of {steps} steps, {len(folds) * per_fold / 60:.1f} min for "
        f"{len(folds)} folds")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
  parser.add_argument("--smoke", action="store_true",
                      help=f"fold 0, {SMOKE_STEPS} steps (unless --folds/--steps), a temporary --workdir")
  parser.add_argument("--folds", type=int, nargs="+", default=None, help="folds to run (default: all)")
  parser.add_argument("--num_folds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=None, help="train steps per fold (default: the recipe's)")
  parser.add_argument("--assignment", choices=("contiguous", "shuffled"), default="contiguous")
  parser.add_argument("--fold_seed", type=int, default=0, help="permutation seed of --assignment shuffled")
  parser.add_argument("--seed", type=int, default=0, help="config.seed of every fold")
  parser.add_argument("--workdir", default=None, help="default runs/isbi_cv/<preset>_<steps>steps (temporary with "
                      "--smoke and --estimate); fold k trains in <workdir>/fold<k> and resumes from it")
  parser.add_argument("--out", default=None, help="JSON of every figure (default <workdir>/results.json)")
  parser.add_argument("--data_dir", default=None, help="tfds data_dir (default: the recipe's, i.e. tfds' default)")
  parser.add_argument("--manual_dir", default=None, help="ISBI 2012 source files (default: the recipe's)")
  parser.add_argument("--estimate", action="store_true", help="time a few steps of fold 0 and project the run")
  parser.add_argument("--estimate_steps", type=int, default=12)
  parser.add_argument("--quiet", action="store_true", help="no progress bars")
  args = parser.parse_args()
  if args.smoke:
    args.folds = [0] if args.folds is None else args.folds
    args.steps = SMOKE_STEPS if args.steps is None else args.steps

  folds = fold_images(args.num_folds, args.assignment, args.fold_seed)
  selected = list(range(args.num_folds)) if args.folds is None else args.folds
  bad = [k for k in selected if not 0 <= k < args.num_folds]
  if bad:
    parser.error(f"--folds {bad}: folds are 0..{args.num_folds - 1}")

  temp = None
  if args.workdir is None and (args.smoke or args.estimate):
    temp = tempfile.TemporaryDirectory(prefix="isbi_cv_")
    args.workdir = temp.name
  if args.estimate:
    estimate(folds, args, pathlib.Path(args.workdir) / "estimate")
    return

  first = fold_config(args.preset, folds[selected[0]], args)
  steps = first.num_train_steps
  workdir = pathlib.Path(args.workdir or REPO / "runs" / "isbi_cv" / f"{args.preset}_{steps}steps")
  out = pathlib.Path(args.out) if args.out else workdir / "results.json"
  aug = first.augment
  print(f"ISBI 2012 {args.num_folds}-fold CV, preset {args.preset} ({PRESETS[args.preset].relative_to(REPO)}): "
        f"{first.model.name} depth {first.model.depth} x {first.model.base_features} features, {steps} steps of "
        f"{first.batch_size} x {tuple(first.dataset.crop_size)} crops, seed {args.seed}; augmentation: elastic "
        f"sigma {aug.elastic_sigma} px on a {aug.elastic_grid}x{aug.elastic_grid} grid, rotate ±{aug.rotate_degrees}°, "
        f"flips {aug.hflip_prob}/{aug.vflip_prob}")
  print(f"fold assignment ({args.assignment}" + (f", seed {args.fold_seed}" if args.assignment == "shuffled" else "")
        + "): " + "; ".join(f"fold {k}: {folds[k]}" for k in range(args.num_folds)))
  print(f"workdir {workdir}; devices {jax.devices()}")

  results = []
  for k in selected:
    result = run_fold(k, folds[k], args, workdir / f"fold{k}")
    figures = " ".join(f"{key} {_pct(result['figures'][key])}" for key, _ in COLUMNS)
    print(f"fold {k} (held out {result['eval_split']}): {figures}; train {result['train_seconds']:.0f} s, "
          f"eval {result['eval_seconds']:.1f} s", flush=True)
    results.append(result)
  summary = summarise(results)
  print()
  print(format_table(results, summary))

  record = {"command": "python " + shlex.join(sys.argv), "date": datetime.datetime.now(
      datetime.timezone.utc).isoformat(timespec="seconds"), "machine": machine(), "preset": args.preset,
      "recipe": str(PRESETS[args.preset].relative_to(REPO)), "num_folds": args.num_folds,
      "assignment": args.assignment, "fold_seed": args.fold_seed, "seed": args.seed,
      "fold_images": folds, "folds_run": selected, "folds": results, "summary": summary}
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(metrics.to_json_dict(record), indent=1))
  if temp is not None and not args.out:
    print(f"wrote {out} (in a temporary workdir, removed now: pass --out to keep it)")
  else:
    print(f"wrote {out}")
  if temp is not None:
    temp.cleanup()


if __name__ == "__main__":
  main()
