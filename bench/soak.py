"""Soak test of issue 19 (not run in CI): SIGKILLs of train.py at random moments, damaged latest checkpoints, and
the same command after each; the final state must be bitwise equal to an uninterrupted run of the same recipe.

python bench/soak.py --seed=0 --kills=20 --damages=3 --out=/tmp/soak

- Recipe: the quickstart (depth 3, base 16, 64x64 crops, batch 8) with 1500 steps (~80 ms each with oneDNN convolutions),
  checkpointing every INTERVAL steps, keeping 2; the runs share a JAX persistent compilation cache, so a restart
  costs imports and restore, not compilation.
- Kills (seeded schedule): half at the moment a save starts (a new `*.orbax-checkpoint-tmp*` directory appears,
  plus 0-50 ms), half at a random delay after launch (2-12 s: imports, restore, compilation or training). Where each
  landed is observed afterwards: during a save (its temporary directory was left), at startup (no step logged), or
  between saves.
- Damages: before some restarts, the newest complete checkpoint is damaged (a data file truncated, state/_METADATA
  or state/manifest.ocdbt deleted, in turn); the restart must say "cannot be restored" and fall back.
- Finally a restart runs to the end; its final checkpoint is compared leaf by leaf with the reference run's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.checkpoint_damage import DAMAGES, damage  # noqa: E402  (after the path; imports no test setup)
RECIPE = {"dataset.crop_size": (64, 64), "model.depth": 3, "model.base_features": 16, "batch_size": 8,
          "log_every_steps": 1, "keep_checkpoints": 2}


def _flags(steps: int, interval: int, data_dir: str) -> list[str]:
  values = {**RECIPE, "num_train_steps": steps, "checkpoint_every_steps": interval, "dataset.data_dir": data_dir}
  return [f"--config.{key}={value}" for key, value in values.items()]


def _config(steps: int, interval: int, data_dir: str):
  spec = importlib.util.spec_from_file_location("quickstart", REPO / "configs" / "quickstart.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in {**RECIPE, "num_train_steps": steps, "checkpoint_every_steps": interval,
                     "dataset.data_dir": data_dir}.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _tmp_dirs(workdir: pathlib.Path) -> set[str]:
  ckpt = workdir / "checkpoints"
  return {p for p in os.listdir(ckpt) if ".orbax-checkpoint-tmp" in p} if ckpt.is_dir() else set()


def _steps(workdir: pathlib.Path) -> list[int]:
  ckpt = workdir / "checkpoints"
  return sorted(int(p) for p in os.listdir(ckpt) if p.isdigit()) if ckpt.is_dir() else []


def _logged(workdir: pathlib.Path, offset: int) -> list[int]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  with path.open() as f:
    f.seek(offset)
    return [json.loads(line)["step"] for line in f.read().split("\n")[:-1] if line and '"loss"' in line]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seed", type=int, default=0, help="of the kill schedule")
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--damages", type=int, default=3)
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--interval", type=int, default=5, help="checkpoint_every_steps")
  parser.add_argument("--out", default="/tmp/soak")
  args = parser.parse_args()

  out = pathlib.Path(args.out)
  shutil.rmtree(out, ignore_errors=True)
  out.mkdir(parents=True)
  data_dir = str(out / "tfds")
  from segjax.data import datasets  # pylint: disable=import-outside-toplevel
  datasets.get_builder("shapes", data_dir=data_dir)
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(out / "cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  command = [sys.executable, str(REPO / "train.py"), f"--config={REPO / 'configs/quickstart.py'}",
             *_flags(args.steps, args.interval, data_dir)]
  began = time.monotonic()

  def launch(workdir: pathlib.Path, name: str) -> subprocess.Popen:
    with (out / f"{name}.log").open("w") as log:
      return subprocess.Popen([*command, f"--workdir={workdir}"], cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT)

  reference = launch(out / "reference", "reference")
  assert reference.wait() == 0, (out / "reference.log").read_text()[-3000:]
  print(f"reference run: {time.monotonic() - began:.0f} s", flush=True)

  rng = random.Random(args.seed)
  kinds = ["save"] * (args.kills // 2) + ["delay"] * (args.kills - args.kills // 2)
  rng.shuffle(kinds)
  damage_before = set(rng.sample(range(1, args.kills + 1), args.damages))  # restarts preceded by a damage
  workdir = out / "interrupted"
  records = []
  for i, kind in enumerate([*kinds, "final"]):
    damaged = None
    # Only with an older checkpoint to fall back on (damaging the only one leaves nothing to resume; training then
    # refuses rather than starting over); otherwise the damage waits for a later restart.
    if i in damage_before and len(_steps(workdir)) < 2 and kind != "final":
      damage_before.add(i + 1)
    elif i in damage_before and _steps(workdir):
      damaged = (_steps(workdir)[-1], DAMAGES[len([r for r in records if r["damaged"]]) % len(DAMAGES)])
      damage(workdir / "checkpoints" / str(damaged[0]), damaged[1])
    metrics = workdir / "metrics.jsonl"
    offset = metrics.stat().st_size if metrics.exists() else 0
    before_tmp, before_steps = _tmp_dirs(workdir), _steps(workdir)
    started = time.monotonic()
    proc = launch(workdir, f"run{i}")
    landed = None
    if kind != "final":
      delay = rng.uniform(2.0, 12.0)
      while proc.poll() is None:
        if kind == "save" and _tmp_dirs(workdir) - before_tmp:
          time.sleep(rng.uniform(0.0, 0.05))
          break
        if kind == "delay" and time.monotonic() - started >= delay:
          break
        time.sleep(0.005)
      if proc.poll() is None:
        in_save = bool(_tmp_dirs(workdir))  # at the moment of the kill
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        logged = _logged(workdir, offset)
        landed = "in-save" if in_save else "startup" if not logged else "between-saves"
      else:
        landed = f"exited {proc.returncode}"
    else:
      proc.wait()
    log = (out / f"run{i}.log").read_text()
    records.append(dict(run=i, kind=kind, landed=landed, damaged=damaged, resumed_from=before_steps[-1:] or None,
                        fallback="cannot be restored" in log, took_over_lock="Took over" in log,
                        latest_after=_steps(workdir)[-1:] or None, wall_s=round(time.monotonic() - started, 1)))
    print(json.dumps(records[-1]), flush=True)
    if damaged:
      assert records[-1]["fallback"], log[-3000:]
  assert proc.returncode == 0, (out / f"run{len(kinds)}.log").read_text()[-3000:]

  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from segjax import checkpoint, experiment  # pylint: disable=import-outside-toplevel
  config = _config(args.steps, args.interval, data_dir)
  abstract = experiment.build(config, jax.devices()[:1]).abstract_state()
  states = []
  for name in ("reference", "interrupted"):
    ckpt = checkpoint.Checkpointer(out / name)
    states.append(jax.device_get(ckpt.restore(args.steps, abstract)))
    ckpt.close()
  leaves = [jax.tree.leaves(getattr(s, f)) for s in states for f in ("step", "params", "opt_state", "batch_stats")]
  half = len(leaves) // 2
  equal = all(np.array_equal(a, b) for la, lb in zip(leaves[:half], leaves[half:]) for a, b in zip(la, lb))
  summary = dict(kills=len(kinds), in_save=sum(r["landed"] == "in-save" for r in records),
                 startup=sum(r["landed"] == "startup" for r in records),
                 damaged=sum(bool(r["damaged"]) for r in records), fallbacks=sum(r["fallback"] for r in records),
                 lock_takeovers=sum(r["took_over_lock"] for r in records),
                 wall_s=round(time.monotonic() - began), bitwise_equal=equal)
  (out / "soak.json").write_text(json.dumps({"records": records, "summary": summary}, indent=1))
  print("SUMMARY " + json.dumps(summary), flush=True)
  sys.exit(0 if equal else 1)


if __name__ == "__main__":
  main()
