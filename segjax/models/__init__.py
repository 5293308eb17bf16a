"""Model registry: a plain dict from name to Flax module class.

Every module takes `num_classes` and returns float32 logits [B, H, W, K] from `__call__(x, *, train)`.
A module may expose `size_divisor`: the input height and width must be multiples of it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from segjax.models.unet import UNet

MODELS: dict[str, type[nn.Module]] = {
    "unet": UNet,
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Instantiates registry entry `name`; `dtype`/`param_dtype` may be given as strings.

  Raises:
    ValueError: unknown model name or a keyword the model does not have, naming the valid choices.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known models: {sorted(MODELS)}. Set --config.model.name.")
  cls = MODELS[name]
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"Model {name!r} has no option(s) {unknown}; its options are {sorted(fields - {'num_classes'})}.")
  kwargs = dict(kwargs)
  for key in ("dtype", "param_dtype"):
    if isinstance(kwargs.get(key), str):
      if kwargs[key] not in _DTYPES:
        raise ValueError(f"model.{key}={kwargs[key]!r} is not one of {sorted(_DTYPES)}")
      kwargs[key] = _DTYPES[kwargs[key]]
  return cls(num_classes=num_classes, **kwargs)


def size_divisor(model: nn.Module) -> int:
  return int(getattr(model, "size_divisor", 1))


def model_kwargs(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """The constructor keywords in a `config.model` block (everything but `name`)."""
  return {k: v for k, v in dict(model_config).items() if k != "name"}
