"""segjax: semantic segmentation in JAX/Flax.

The Python API (README "Python API"):

  segjax.train(config, workdir)                   what train.py does; returns the final train state
  segjax.evaluate(config, workdir, split="test")  what eval.py does; returns the metrics dict
  segjax.load(workdir)(images)                    a Predictor restored from a checkpoint: labels of numpy images
  segjax.__version__

The API's names are imported from segjax.api when first used (module __getattr__), so `import segjax` imports
neither JAX nor the training code, and `from segjax import serving` costs only what segjax.serving imports (numpy
and jax). The API functions apply the CLIs' XLA:CPU settings themselves (segjax.api says when that can work).
"""

from __future__ import annotations

import importlib.metadata

try:
  __version__ = importlib.metadata.version("segjax")
except importlib.metadata.PackageNotFoundError:  # a checkout on sys.path without `pip install -e .`
  __version__ = "0+unknown"

_API = ("train", "evaluate", "load", "Predictor", "Normalization", "saved_recipe")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
  if name in _API:
    from segjax import api  # pylint: disable=import-outside-toplevel  (lazy: see the module docstring)
    return getattr(api, name)
  raise AttributeError(f"module 'segjax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_API))
