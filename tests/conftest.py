"""Test setup: 8 fake CPU devices, so sharded code paths run as they would on a TPU slice."""

import os
import pathlib

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_dataset(name: str) -> pathlib.Path:
  """Path of a dataset under ../shared/data, or skip the test saying why."""
  path = SHARED_DATA / name
  if not path.is_dir():
    pytest.skip(f"{path} is absent: real-data tests need ../shared/data/{name} beside the checkout")
  return path
