"""Convolutions with a choice of kernels: XLA's own, or oneDNN's on the CPU (through the XLA FFI).

Every segjax model builds its convolutions with `Conv` (Flax's `nn.Conv` with `conv_general_dilated` below), so
the same model, with the same parameters, runs either way:

- backend "xla" (the default everywhere, and the only one on GPU and TPU): `lax.conv_general_dilated`.
- backend "onednn": 2-D float32/bfloat16 convolutions on NHWC activations and HWIO kernels, with any strides,
  non-negative padding and kernel dilation, run as oneDNN primitives (the library PyTorch uses on CPUs) through
  `segjax/ops/onednn_conv.cc`, forward and both gradients. Anything else (grouped, input-dilated, other layouts
  or dtypes) still goes to XLA. On the 2-core CPU of BENCHMARKS.md the 3x3 convolutions of a U-Net at 32-64
  channels run 1.3-2.4x faster this way, forward + backward (bench/conv_layers.py), because XLA:CPU's Eigen
  kernels pack an im2col matrix for every convolution and transpose both operands of every kernel gradient.

The backend is chosen while a function is traced, with `with backend("onednn"): ...` around `model.apply`
(segjax.training.steps does this from `config.conv_backend`, see `resolve_backend`). The oneDNN path is a custom
call that XLA's partitioner cannot split, so it is only used when a computation runs on one device.

The shared library is built by `pip install` on Linux x86-64 when a C++ compiler and the oneDNN headers are there
(setup.py); it needs oneDNN's runtime (`pip install -e '.[cpu]'`, the `onednn-cpu-gomp` package) when it is loaded.
`available()` says whether it can be used and, if not, why. Where "auto" would have used it but cannot (one CPU
device, no library), `resolve_backend` warns once per process that convolutions run on XLA's kernels, and why.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import importlib.machinery
import importlib.metadata
import logging
import pathlib
import platform as platform_lib
import sys
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

BACKENDS = ("auto", "xla", "onednn")
_LIBRARY_STEM = "_onednn_conv"
_ABI_VERSION = 1
_TARGETS = {"forward": "SegjaxOnednnConvForward", "backward_data": "SegjaxOnednnConvBackwardData",
            "backward_weights": "SegjaxOnednnConvBackwardWeights"}
_NHWC = (0, 3, 1, 2)  # ConvDimensionNumbers specs of NHWC activations and HWIO kernels
_HWIO = (3, 2, 0, 1)

_backend: contextvars.ContextVar[str] = contextvars.ContextVar("segjax_conv_backend", default="xla")
_log = logging.getLogger(__name__)
_fallback_warned = False  # resolve_backend's "XLA's kernels" warning: once per process, not once per call


@contextlib.contextmanager
def backend(name: str | None) -> Iterator[None]:
  """Convolutions traced inside use `name` ("xla" or "onednn"; "onednn" needs `available()`); None changes
  nothing (the backend of the enclosing `with`, XLA's outside any)."""
  if name is None:
    yield
    return
  if name not in ("xla", "onednn"):
    raise ValueError(f"conv backend must be 'xla' or 'onednn' here, got {name!r}")
  if name == "onednn":
    _load()  # fail here, naming the reason, rather than at the first convolution
  token = _backend.set(name)
  try:
    yield
  finally:
    _backend.reset(token)


def current_backend() -> str:
  return _backend.get()


def _onednn_library_path() -> pathlib.Path | None:
  """libdnnl.so.3 of the installed `onednn-cpu-gomp` distribution (it installs into <prefix>/lib)."""
  for dist in ("onednn-cpu-gomp", "onednn"):
    try:
      files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
      continue
    for f in files:
      if f.name == "libdnnl.so.3":
        return pathlib.Path(f.locate()).resolve()
  return None


@functools.cache
def _load_or_reason() -> tuple[ctypes.CDLL | None, str]:
  here = pathlib.Path(__file__).parent
  if sys.platform != "linux" or platform_lib.machine() != "x86_64":
    return None, (f"segjax's oneDNN library is built on Linux x86-64 only, where oneDNN's wheels exist (this is "
                  f"{sys.platform} {platform_lib.machine()})")
  candidates = [here / (_LIBRARY_STEM + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES]
  ours = next((c for c in candidates if c.exists()), None)
  if ours is None:
    return None, (f"{here / _LIBRARY_STEM}*.so was not built: reinstall with a C++ compiler and the oneDNN headers "
                  "present (pip install -e '.[cpu]'; setup.py builds it)")
  dnnl = _onednn_library_path()
  if dnnl is None:
    return None, "oneDNN's runtime is not installed: pip install -e '.[cpu]' (the onednn-cpu-gomp package)"
  try:
    # Loaded globally first, so that the dynamic loader resolves our library's dependency on libdnnl.so.3.
    ctypes.CDLL(str(dnnl), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(ours))
  except OSError as e:
    return None, f"loading {ours.name} failed: {e}"
  lib.SegjaxOnednnConvAbiVersion.restype = ctypes.c_int
  if lib.SegjaxOnednnConvAbiVersion() != _ABI_VERSION:
    return None, f"{ours} is from another segjax version: reinstall segjax"
  for name in _TARGETS.values():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
  return lib, ""


def available() -> tuple[bool, str]:
  """(True, "") when the oneDNN backend can be used, else (False, why not)."""
  lib, reason = _load_or_reason()
  return lib is not None, reason


def _load() -> None:
  ok, reason = available()
  if not ok:
    raise RuntimeError(f"segjax's oneDNN convolutions are unavailable: {reason}")


def resolve_backend(requested: str, num_devices: int, platform: str | None = None) -> str:
  """The backend a run uses for `config.conv_backend = requested` on `num_devices` devices of `platform`.

  "auto" is "onednn" on a single CPU device when the library loads, else "xla". "onednn" is refused (with the
  reason) where it cannot run: another platform, several devices (XLA cannot partition the custom call), or
  no library.
  """
  if requested not in BACKENDS:
    raise ValueError(f"config.conv_backend={requested!r}: must be one of {BACKENDS}")
  platform = platform or jax.default_backend()
  if requested == "xla":
    return "xla"
  if platform != "cpu":
    problem = f"the platform is {platform}, not cpu"
  elif num_devices != 1:
    problem = f"the mesh has {num_devices} devices (oneDNN convolutions run unpartitioned, on one)"
  else:
    problem = available()[1]  # "" when the library loads
  if requested == "auto":
    if problem and platform == "cpu" and num_devices == 1:
      _warn_fallback(problem)
    return "xla" if problem else "onednn"
  if problem:
    raise ValueError(f"config.conv_backend='onednn' cannot be used: {problem}. Set --config.conv_backend=auto "
                     "(oneDNN where it can run, XLA elsewhere) or xla.")
  return "onednn"


def _warn_fallback(reason: str) -> None:
  """Says once, at WARNING (printed by the CLIs and by Python's default handler alike), that a single-CPU run
  convolves with XLA's kernels although oneDNN's would be faster, and why: an install without a C++ compiler or
  without the `cpu` extra otherwise goes unnoticed."""
  global _fallback_warned
  if _fallback_warned:
    return
  _fallback_warned = True
  _log.warning("Convolutions run on XLA's kernels, not segjax's faster oneDNN ones (about 1.2x on a CPU): %s. "
               "--config.conv_backend=xla chooses XLA's kernels without this warning.", reason)


def _explicit_padding(padding, lhs_shape, rhs_shape, strides, dilation) -> tuple[tuple[int, int], ...]:
  if isinstance(padding, str):
    window = [(k - 1) * d + 1 for k, d in zip(rhs_shape, dilation)]
    return tuple(lax.padtype_to_pads(lhs_shape, window, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _onednn_spec(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                 feature_group_count, batch_group_count):
  """(strides, padding, dilation) when oneDNN can run this convolution, else None."""
  if lhs.ndim != 4 or rhs.ndim != 4 or lhs.dtype != rhs.dtype or lhs.dtype not in (jnp.float32, jnp.bfloat16):
    return None
  if feature_group_count != 1 or batch_group_count != 1:
    return None
  if lhs_dilation is not None and any(d != 1 for d in lhs_dilation):
    return None
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if tuple(dn.lhs_spec) != _NHWC or tuple(dn.rhs_spec) != _HWIO or tuple(dn.out_spec) != _NHWC:
    return None
  strides = tuple(int(s) for s in window_strides)
  dilation = tuple(int(d) for d in (rhs_dilation or (1, 1)))
  pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], strides, dilation)
  if any(p < 0 for pair in pads for p in pair) or lhs.shape[0] == 0:
    return None
  if min(_output_shape(lhs.shape, rhs.shape, strides, pads, dilation)[1:3]) < 1:
    return None
  return strides, pads, dilation


def _attrs(strides, pads, dilation) -> dict[str, np.ndarray]:
  return {"stride": np.asarray(strides, np.int64), "padding": np.asarray([p for pair in pads for p in pair], np.int64),
          "dilation": np.asarray(dilation, np.int64)}


def _output_shape(x_shape, w_shape, strides, pads, dilation) -> tuple[int, int, int, int]:
  n, h, w, _ = x_shape
  kh, kw, _, o = w_shape
  oh = (h + sum(pads[0]) - (kh - 1) * dilation[0] - 1) // strides[0] + 1
  ow = (w + sum(pads[1]) - (kw - 1) * dilation[1] - 1) // strides[1] + 1
  return (n, oh, ow, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def onednn_conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: tuple[tuple[int, int], ...],
                dilation: tuple[int, int]) -> jax.Array:
  """oneDNN convolution of NHWC `x` with HWIO `w` (same dtype, float32 or bfloat16): XLA's
  `conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"))`."""
  out = jax.ShapeDtypeStruct(_output_shape(x.shape, w.shape, strides, pads, dilation), x.dtype)
  return jax.ffi.ffi_call(_TARGETS["forward"], out, vmap_method="sequential")(x, w, **_attrs(strides, pads, dilation))


def _onednn_conv_fwd(x, w, strides, pads, dilation):
  return onednn_conv(x, w, strides, pads, dilation), (x, w)


def _onednn_conv_bwd(strides, pads, dilation, residuals, dy):
  x, w = residuals
  attrs = _attrs(strides, pads, dilation)
  # vmap (never used by segjax's models) loops over the mapped axis rather than failing.
  dx = jax.ffi.ffi_call(_TARGETS["backward_data"], jax.ShapeDtypeStruct(x.shape, x.dtype),
                        vmap_method="sequential")(dy, w, **attrs)
  dw = jax.ffi.ffi_call(_TARGETS["backward_weights"], jax.ShapeDtypeStruct(w.shape, w.dtype),
                        vmap_method="sequential")(x, dy, **attrs)
  return dx, dw


onednn_conv.defvjp(_onednn_conv_fwd, _onednn_conv_bwd)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
  """`lax.conv_general_dilated`, on oneDNN when tracing under `backend("onednn")` and oneDNN supports the
  convolution (see the module docstring); same arguments and result."""
  if _backend.get() == "onednn" and preferred_element_type is None:
    spec = _onednn_spec(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                        feature_group_count, batch_group_count)
    if spec is not None:
      return onednn_conv(lhs, rhs, *spec)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                                  precision=precision, preferred_element_type=preferred_element_type)


# Flax's convolution with the dispatch above: a Module named "Conv", so parameter names stay nn.Conv's.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
