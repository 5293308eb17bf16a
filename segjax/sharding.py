"""Device mesh and shardings.

The batch is one global array split along the mesh's "data" axis; parameters and optimiser state are
replicated. Because the batch is global under `jax.jit`, BatchNorm statistics and the confusion matrix are
computed over the whole batch, whatever the number of devices (tests compare 1 and 8 devices).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_data: int = -1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `num_data` devices (-1: all) on the "data" axis.

  Axis types are Auto: JAX 0.10 defaults to Explicit, under which mixing mesh-sharded and unsharded arrays
  (e.g. a host constant) fails instead of being resharded by the compiler.
  """
  devices = list(jax.devices() if devices is None else devices)
  if num_data == -1:
    num_data = len(devices)
  if not 0 < num_data <= len(devices):
    raise ValueError(f"config.mesh.data={num_data} but {len(devices)} devices are available; use -1 for all.")
  return jax.make_mesh((num_data,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices[:num_data])


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  n = mesh.shape[DATA_AXIS]
  if batch_size % n:
    raise ValueError(f"config.{what}={batch_size} is not divisible by the {n} devices of the 'data' mesh axis; "
                     f"use a multiple of {n}.")


def host_local(x: jax.Array) -> np.ndarray:
  """A fully replicated array as numpy on this host (no cross-host transfer)."""
  return np.asarray(x.addressable_data(0))
