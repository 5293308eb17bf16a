"""Builds segjax's oneDNN convolution library (segjax/ops/onednn_conv.cc) and ships the recipes; the rest of the
package is pyproject.toml.

The library is an optional CPU speed-up, built only where it can work: on Linux x86-64 (the one platform the
oneDNN wheels exist for), when its headers are there (build requirements in pyproject.toml: XLA's FFI from
jaxlib, oneDNN's from onednn-devel-cpu-gomp, which also brings the libdnnl.so it links against) and a C++
compiler runs. Otherwise the install goes on without it and segjax convolves with XLA's kernels: it says so, once,
when a run on one CPU device starts (segjax.ops.conv.resolve_backend; conv.available() says why).

Environment switches:
  SEGJAX_BUILD_ONEDNN=0    skip the library (a faster build, e.g. a wheel for GPU/TPU machines).
  SEGJAX_REQUIRE_ONEDNN=1  a failed or impossible build fails the install instead of being skipped (CI).

The recipes (configs/*.py) ship inside the package as segjax.configs, so an installed wheel runs
`segjax-train --config=quickstart` outside a clone (segjax.config.resolve_recipe).
"""

import importlib.metadata
import os
import platform
import sys

from setuptools import Extension, find_packages, setup


def _flag(name: str) -> str:
  return os.environ.get(name, "").strip().lower()


def _dist_dir(dist: str, filename: str) -> list[str]:
  """The folder holding `filename` in an installed distribution (where pip put its data files)."""
  try:
    files = importlib.metadata.files(dist) or []
  except importlib.metadata.PackageNotFoundError:
    return []
  return sorted({os.path.dirname(f.locate()) for f in files if f.name == filename})


def _jaxlib_include() -> list[str]:
  try:
    import jaxlib  # pylint: disable=import-outside-toplevel
  except ImportError:
    return []
  include = os.path.join(os.path.dirname(jaxlib.__file__), "include")
  return [include] if os.path.isfile(os.path.join(include, "xla", "ffi", "api", "ffi.h")) else []


def _onednn_extension() -> tuple[list[Extension], str]:
  """([the extension], "") when it can be built here, else ([], why not)."""
  if _flag("SEGJAX_BUILD_ONEDNN") in ("0", "false", "no"):
    return [], "SEGJAX_BUILD_ONEDNN=0"
  if sys.platform != "linux" or platform.machine() != "x86_64":
    return [], f"oneDNN's wheels are Linux x86-64 only (this is {sys.platform} {platform.machine()})"
  jaxlib_include = _jaxlib_include()
  # The oneDNN include folder is the one holding oneapi/, two levels above dnnl.hpp.
  onednn_include = [os.path.dirname(os.path.dirname(d)) for d in _dist_dir("onednn-devel-cpu-gomp", "dnnl.hpp")
                    if d.endswith(os.path.join("oneapi", "dnnl"))]
  if not jaxlib_include or not onednn_include:
    return [], "the build environment lacks jaxlib's or onednn-devel-cpu-gomp's headers"
  return [Extension(
      "segjax.ops._onednn_conv",
      sources=["segjax/ops/onednn_conv.cc"],
      include_dirs=jaxlib_include + onednn_include,
      library_dirs=_dist_dir("onednn-cpu-gomp", "libdnnl.so"),
      libraries=["dnnl"],
      extra_compile_args=["-std=c++17", "-O2"],
      language="c++",
      # Without a compiler (or with one that fails) setuptools warns and goes on: segjax then trains on XLA's
      # kernels. CI wants the failure instead.
      optional=_flag("SEGJAX_REQUIRE_ONEDNN") != "1",
  )], ""


_extensions, _why_not = _onednn_extension()
if _why_not:
  if _flag("SEGJAX_REQUIRE_ONEDNN") == "1":
    sys.exit(f"SEGJAX_REQUIRE_ONEDNN=1 but segjax's oneDNN library cannot be built: {_why_not}")
  print(f"segjax: not building the oneDNN convolution library ({_why_not}); convolutions use XLA's kernels.",
        file=sys.stderr)

setup(
    # configs/ (the recipes, at the top of a clone where the README's commands name them) is the package
    # segjax.configs in a wheel. It has no __init__.py: setuptools ships its modules as a namespace package.
    packages=find_packages(include=["segjax", "segjax.*"]) + ["segjax.configs"],
    package_dir={"segjax.configs": "configs"},
    ext_modules=_extensions,
)
