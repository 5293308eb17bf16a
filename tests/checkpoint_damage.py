"""Damaging a checkpoint step directory as a full disk, a crash or a careless copy would: shared by
tests/test_checkpoint.py and bench/soak.py. Imports nothing of the test setup (tests/conftest.py sets XLA_FLAGS,
which the soak's train.py processes must not inherit)."""

import os
import pathlib

DAMAGES = ("truncated-data-file", "missing-metadata", "missing-manifest")


def damage(step_dir: pathlib.Path, kind: str) -> None:
  """Halves the largest OCDBT data file, or deletes the state's _METADATA or its manifest."""
  if kind == "truncated-data-file":
    data = max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)
    os.truncate(data, data.stat().st_size // 2)
  elif kind == "missing-metadata":
    (step_dir / "state" / "_METADATA").unlink()
  elif kind == "missing-manifest":
    (step_dir / "state" / "manifest.ocdbt").unlink()
  else:
    raise ValueError(f"unknown damage {kind!r}; choose one of {DAMAGES}")
