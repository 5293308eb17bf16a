"""Builds segjax's oneDNN convolution library (segjax/ops/onednn_conv.cc); the rest of the package is pyproject.toml.

The library is optional: without a C++ compiler the build goes on without it, and segjax convolves with XLA's
kernels (segjax.ops.conv.available() says why). The headers come from build requirements (pyproject.toml): XLA's
FFI from jaxlib, oneDNN's from onednn-devel-cpu-gomp, which also brings the libdnnl.so it links against.
"""

import importlib.metadata
import os

from setuptools import Extension, setup


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
  return [os.path.join(os.path.dirname(jaxlib.__file__), "include")]


# The oneDNN include folder is the one holding oneapi/, two levels above dnnl.hpp.
_onednn_include = [os.path.dirname(os.path.dirname(d)) for d in _dist_dir("onednn-devel-cpu-gomp", "dnnl.hpp")
                   if d.endswith(os.path.join("oneapi", "dnnl"))]

setup(ext_modules=[Extension(
    "segjax.ops._onednn_conv",
    sources=["segjax/ops/onednn_conv.cc"],
    include_dirs=_jaxlib_include() + _onednn_include,
    library_dirs=_dist_dir("onednn-cpu-gomp", "libdnnl.so"),
    libraries=["dnnl"],
    extra_compile_args=["-std=c++17", "-O2"],
    language="c++",
    optional=True,
)])
