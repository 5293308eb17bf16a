"""Device mesh and shardings, derived from the recipe.

The mesh has three named axes (`config.mesh`):
  data     the batch is split along it (data parallelism);
  spatial  images are split along their height (for images too large for one device's memory): the compiler
           partitions every convolution spatially and exchanges the halos between neighbours;
  model    parameters (and, through them, activation channels) are split along it.
Axes of size 1 cost nothing, so one mesh shape serves every recipe. Use at most one of spatial and model (see
`make_mesh`).

Shardings are never placed by hand. Batch arrays are laid out by rank (`batch_spec`), and every leaf of the train
state (parameters, optimiser moments, BatchNorm statistics) gets its PartitionSpec from `config.mesh.rules`: the
first rule whose regex matches the leaf's path wins, and a dimension that the axis size does not divide is left
whole. The same rules on another mesh give that mesh's shardings, which is how a checkpoint restores onto a mesh of
another size (orbax reshards to the target).

Because the batch is one global array under `jax.jit`, BatchNorm statistics and the confusion matrix are computed
over the whole batch, whatever the number of devices or processes (tests compare 1, 8 and 2 x 4 devices).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

DATA_AXIS, SPATIAL_AXIS, MODEL_AXIS = "data", "spatial", "model"
AXES = (DATA_AXIS, SPATIAL_AXIS, MODEL_AXIS)

# Default state rules: convolution and dense kernels split their output channels along "model" (Megatron-style
# column parallelism for 1x1/3x3 convs); everything else (biases, BatchNorm, scalars) is replicated. Optimiser
# moments have the same paths below "opt_state/...", so they follow their parameters.
DEFAULT_RULES = ((r"(^|/)kernel$", ("model",)),)

Rules = Sequence[tuple[str, Sequence[str | None]]]


def make_mesh(data: int = -1, spatial: int = 1, model: int = 1, devices: Sequence[jax.Device] | None = None, *,
              allow_spatial_and_model: bool = False) -> Mesh:
  """A (data, spatial, model) mesh; `data=-1` takes every device the other two axes leave.

  Axis types are Auto: JAX 0.10 defaults to Explicit, under which mixing mesh-sharded and unsharded arrays
  (e.g. a host constant) fails instead of being resharded by the compiler.

  Raises:
    ValueError: sizes that do not fit the available devices, naming the config keys.
  """
  devices = list(jax.devices() if devices is None else devices)
  if spatial < 1 or model < 1:
    raise ValueError(f"config.mesh.spatial={spatial}, config.mesh.model={model}: both must be >= 1.")
  if spatial > 1 and model > 1 and not allow_spatial_and_model:
    # Measured with jax/jaxlib 0.10.2 on CPU (tests/test_sharding.py, an xfail that will notice a fix): with both axes
    # > 1 a single convolution's kernel gradient comes out wrong (relative error 1.0 on a 2x2x2 mesh), while either
    # axis alone matches the unsharded gradient to 1e-7. Shardy and the older GSPMD partitioner both do it.
    raise ValueError(f"config.mesh.spatial={spatial} and config.mesh.model={model}: use one second axis, not both. "
                     "XLA's SPMD partitioner (jax 0.10.2) computes wrong kernel gradients for convolutions split "
                     "both by image rows and by output channel.")
  if data == -1:
    if len(devices) % (spatial * model):
      raise ValueError(f"config.mesh.spatial * config.mesh.model = {spatial * model} does not divide the "
                       f"{len(devices)} devices; choose sizes whose product divides {len(devices)}.")
    data = len(devices) // (spatial * model)
  if data < 1 or data * spatial * model > len(devices):
    raise ValueError(f"config.mesh (data={data}, spatial={spatial}, model={model}) needs {data * spatial * model} "
                     f"devices but {len(devices)} are available; set config.mesh.data=-1 to use all of them.")
  n = data * spatial * model
  return jax.make_mesh((data, spatial, model), AXES, axis_types=(AxisType.Auto,) * 3, devices=devices[:n])


def mesh_from_config(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  return make_mesh(mesh_config.data, mesh_config.spatial, mesh_config.model, devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_spec(ndim: int) -> P:
  """[B] -> data; [B, H, ...] -> data and spatial (rows of the image)."""
  return P(DATA_AXIS) if ndim < 3 else P(DATA_AXIS, SPATIAL_AXIS)


def batch_sharding(mesh: Mesh, ndim: int = 4) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(ndim))


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  n = mesh.shape[DATA_AXIS]
  if batch_size % n:
    raise ValueError(f"config.{what}={batch_size} is not divisible by the {n} devices of the 'data' mesh axis; "
                     f"use a multiple of {n}.")


def path_str(path) -> str:
  """'params/Conv_0/kernel' for a key path of the train state."""
  parts = []
  for k in path:
    for attr in ("name", "key", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def spec_for(path: str, shape: Sequence[int], mesh: Mesh, rules: Rules) -> P:
  """The PartitionSpec the first matching rule gives a leaf of `shape` at `path` (P() when none matches).

  A rule's axes apply to the trailing dimensions (("model",) shards the last one), so one rule fits kernels of
  any rank. A dimension the axis size does not divide stays whole.
  """
  for pattern, axes in rules:
    if not re.search(pattern, path):
      continue
    axes = tuple(axes)[-len(shape):] if shape else ()
    spec = [None] * (len(shape) - len(axes)) + list(axes)
    for dim, axis in enumerate(spec):
      if axis is not None and shape[dim] % mesh.shape[axis]:
        log.debug("%s: dimension %d (%d) is not divisible by mesh axis %r (%d); kept whole.", path, dim, shape[dim],
                 axis, mesh.shape[axis])
        spec[dim] = None
    return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """A NamedSharding for every leaf of `abstract_state` (arrays or ShapeDtypeStructs), from `rules`."""
  def one(path, leaf):
    return NamedSharding(mesh, spec_for(path_str(path), np.shape(leaf), mesh, rules))
  return jax.tree_util.tree_map_with_path(one, abstract_state)


def check_rules(rules: Any) -> tuple[tuple[str, tuple[str | None, ...]], ...]:
  """`config.mesh.rules` as a tuple of (regex, axes); raises ValueError naming a bad entry and the fix."""
  out = []
  for rule in rules:
    ok = isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
    axes = tuple(rule[1]) if ok and isinstance(rule[1], (tuple, list)) else None
    if not ok or axes is None or any(a is not None and a not in AXES for a in axes):
      raise ValueError(f"config.mesh.rules entry {rule!r}: give (regex, axes) with axes a tuple of {AXES} or None "
                       "for the trailing dimensions, e.g. (r'kernel$', ('model',)).")
    try:
      re.compile(rule[0])
    except re.error as e:
      raise ValueError(f"config.mesh.rules entry {rule!r}: bad regex ({e}).") from None
    out.append((rule[0], axes))
  return tuple(out)


def process_rows(sharding: jax.sharding.Sharding, batch_size: int, shape: Sequence[int] = ()) -> np.ndarray:
  """The rows of a global batch of `batch_size` that this process's devices hold (sorted, no repeats)."""
  indices = sharding.addressable_devices_indices_map((batch_size, *shape))
  rows = set()
  for index in indices.values():
    rows.update(range(batch_size)[index[0]])
  return np.asarray(sorted(rows), np.int64)


def _cluster_detected() -> str | None:
  """The name of the Cloud TPU environment (a TPU VM slice on GCE or GKE) JAX can bootstrap from, or None.

  Uses JAX's own detectors, so it agrees with `jax.distributed.initialize()`. Other clusters JAX knows (SLURM,
  Open MPI, Kubernetes) are not auto-started: their variables are also set for single-process jobs, where
  starting a coordinator would only add a failure mode. `distributed.mode="on"` uses them.
  """
  try:
    from jax._src import clusters  # pylint: disable=import-outside-toplevel  (no public detection API)
  except ImportError:  # a JAX without it: only explicit addresses
    return None
  for env in clusters.ClusterEnv._cluster_types:  # pylint: disable=protected-access
    if "Tpu" not in env.__name__:
      continue
    try:
      if env.is_env_present():
        return env.__name__
    except Exception:  # pylint: disable=broad-except  (a detector probing a metadata server may fail)
      continue
  return None


def initialize_distributed(cfg) -> bool:
  """Starts JAX's distributed runtime as `config.distributed` says; returns whether it runs multi-process.

  Must run before any JAX computation (train.py and eval.py call it first). mode "auto" initialises when a
  coordinator address is given (config or $JAX_COORDINATOR_ADDRESS) or a Cloud TPU VM slice is detected (every
  host runs the same command, nothing to set). "on" always initialises, JAX detecting what is unset (SLURM,
  Open MPI, Kubernetes too); "off" never.

  Raises:
    RuntimeError: JAX was already used in this process, or the processes could not connect, with the fix.
  """
  if cfg.mode == "off":
    return False
  address = cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  detected = None if address else _cluster_detected()
  if cfg.mode == "auto" and not address and not detected:
    return False
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  kwargs = dict(coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes,
                process_id=cfg.process_id, initialization_timeout=cfg.initialization_timeout)
  if cfg.local_device_ids is not None:
    kwargs["local_device_ids"] = list(cfg.local_device_ids)
  where = address or detected or "JAX's auto-detection"
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # pylint: disable=broad-except  (jax raises RuntimeError/ValueError/XlaRuntimeError)
    raise RuntimeError(
        f"jax.distributed.initialize failed ({where}): {e}. Give every process the same "
        "--config.distributed.coordinator_address=HOST:PORT (process 0's host, a free port), "
        "--config.distributed.num_processes and its own --config.distributed.process_id, or set "
        "--config.distributed.mode=off for a single process.") from e
  log.warning("jax.distributed: process %d of %d (%s), %d local / %d global devices", jax.process_index(),
              jax.process_count(), where, jax.local_device_count(), jax.device_count())
  return jax.process_count() > 1
