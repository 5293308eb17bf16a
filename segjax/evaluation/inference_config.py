"""`config.inference`, typed and checked: the inference mode, tiles and test-time augmentation (segjax.evaluation.inference
documents each mode)."""

from __future__ import annotations

import dataclasses
import itertools

import flax
import ml_collections

from segjax import models
from segjax.data import datasets

MODES = ("whole", "slide", "overlap_tile")
WEIGHTINGS = ("mean", "gaussian")
MERGES = ("probs", "logits")


# ---------------------------------------------------------------------------------------------------- parameters


@dataclasses.dataclass(frozen=True)
class InferenceParams:
  """A typed, checked copy of `config.inference` (see `from_config` and the module docstring).

  Attributes:
    mode: "whole", "slide" or "overlap_tile".
    tile_size: (h, w). slide: the window fed to the net; overlap_tile: the OUTPUT tile (the net's input is
      tile + 2 * margin). Unused by "whole".
    stride: (h, w) between slide windows (overlap_tile tiles step by the tile, rounded to the pooling grid).
    weighting: how slide averages overlapping windows, "mean" or "gaussian".
    gaussian_sigma: sigma of the Gaussian as a fraction of the tile side (nnU-Net: 1/8).
    hflip: also predict the horizontally mirrored image.
    vflip: also predict the vertically mirrored image.
    scales: image scales whose predictions are averaged.
    merge: average "probs" (softmax) or "logits".
    tile_batch: windows per device call.
  """
  mode: str = "whole"
  tile_size: tuple[int, int] | None = None
  stride: tuple[int, int] | None = None
  weighting: str = "mean"
  gaussian_sigma: float = 0.125
  hflip: bool = False
  vflip: bool = False
  scales: tuple[float, ...] = (1.0,)
  merge: str = "probs"
  tile_batch: int = 8

  def __post_init__(self):
    def fail(key, value, fix):
      raise ValueError(f"config.inference.{key}={value!r}: {fix}")

    if self.mode not in MODES:
      fail("mode", self.mode, f"choose one of {MODES}")
    if self.weighting not in WEIGHTINGS:
      fail("weighting", self.weighting, f"choose one of {WEIGHTINGS}")
    if self.merge not in MERGES:
      fail("merge", self.merge, f"choose one of {MERGES}")
    if not self.gaussian_sigma > 0:
      fail("gaussian_sigma", self.gaussian_sigma, "must be > 0 (a fraction of the tile side, nnU-Net: 0.125)")
    if not self.scales or any(not s > 0 for s in self.scales):
      fail("scales", self.scales, "give one or more positive scales, e.g. (0.75, 1.0, 1.25)")
    if self.tile_batch < 1:
      fail("tile_batch", self.tile_batch, "must be >= 1")
    if self.mode != "whole":
      if self.tile_size is None or len(self.tile_size) != 2 or min(self.tile_size) <= 0:
        fail("tile_size", self.tile_size, "give (height, width), both positive")
    if self.mode == "slide":
      if self.stride is None or len(self.stride) != 2 or min(self.stride) <= 0:
        fail("stride", self.stride, "give (height, width), both positive")
      if any(s > t for s, t in zip(self.stride, self.tile_size)):
        fail("stride", self.stride, f"must not exceed tile_size={self.tile_size} (pixels between windows would "
             "get no prediction); MMSegmentation uses about 2/3 of the tile")

  @property
  def flips(self) -> tuple[tuple[bool, bool], ...]:
    """(vertical, horizontal) flip of every view: the identity first, then the flip group the flags ask for."""
    return tuple(itertools.product((False, True) if self.vflip else (False,),
                                   (False, True) if self.hflip else (False,)))

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, model: flax.linen.Module | None = None
                  ) -> "InferenceParams":
    """Reads `config.inference` of a whole recipe and checks it against the recipe's model.

    Defaults: tile_size = dataset.crop_size for slide, the output of a crop_size input for overlap_tile;
    stride = ceil(2/3 tile).

    Raises:
      ValueError: naming config.inference.<key>, its value and the fix.
    """
    inf = config.inference
    if model is None:
      spec = datasets.get_spec(config.dataset)
      model = models.build_model(config.model.name, spec.num_classes, **models.model_kwargs(config.model))
    if inf.mode == "overlap_tile" and not models.is_valid_conv(model):
      cls(mode="overlap_tile", tile_size=(1, 1)).check_model(model)  # raises: the mode, before any tile default
    tile = None if inf.tile_size is None else tuple(int(t) for t in inf.tile_size)
    if tile is None and inf.mode == "slide":
      tile = tuple(int(t) for t in config.dataset.crop_size)
    elif tile is None and inf.mode == "overlap_tile" and models.is_valid_conv(model):
      try:
        tile = tuple(models.output_size(model, int(t)) for t in config.dataset.crop_size)
      except ValueError as e:
        raise ValueError(f"config.inference.tile_size is unset and dataset.crop_size={config.dataset.crop_size} "
                         f"gives no default: {e} Set --config.inference.tile_size.") from None
    stride = None if inf.stride is None else tuple(int(s) for s in inf.stride)
    if stride is None and tile is not None:
      stride = tuple(-(-2 * t // 3) for t in tile)
    params = cls(mode=inf.mode, tile_size=tile, stride=stride, weighting=inf.weighting,
                 gaussian_sigma=float(inf.gaussian_sigma), hflip=bool(inf.hflip), vflip=bool(inf.vflip),
                 scales=tuple(float(s) for s in inf.scales), merge=inf.merge, tile_batch=int(inf.tile_batch))
    params.check_model(model)
    return params

  def check_model(self, model: flax.linen.Module) -> None:
    """Raises ValueError (naming config.inference.<key>) when this mode or tile cannot run `model`."""
    name = type(model).__name__
    if self.mode == "slide":
      if models.is_valid_conv(model):
        raise ValueError(f"config.inference.mode='slide': {name} is a valid-convolution net (its output is smaller "
                         "than its input); use --config.inference.mode=overlap_tile.")
      d, smallest = models.size_divisor(model), models.init_size(model)
      for t in self.tile_size:
        if t % d or t < smallest:
          raise ValueError(f"config.inference.tile_size={self.tile_size}: {name} needs sides that are multiples of "
                           f"{d} and at least {smallest}; use e.g. {max(smallest, -(-t // d) * d)}.")
    if self.mode == "overlap_tile":
      if not models.is_valid_conv(model):
        raise ValueError(f"config.inference.mode='overlap_tile': {name} pads its convolutions (output size = input "
                         "size), so there is no margin to tile with; use --config.inference.mode=slide.")
      m = int(model.input_margin)
      for t in self.tile_size:
        size = t + 2 * m
        if models.output_size(model, model.input_size_for(t)) != t or model.input_size_for(t) != size:
          good = models.output_size(model, model.input_size_for(t))
          raise ValueError(f"config.inference.tile_size={self.tile_size}: {name}'s output tiles must be valid "
                           f"output sizes (input = tile + 2 * {m}); {t} is not, the next one is {good}.")
