"""Runs a model exported by `segjax.export` without segjax's training code.

    from segjax import serving
    model = serving.load("exported/")          # the directory holding model.jaxexport and model.json
    out = model(images)                        # images: uint8 numpy [B, H, W, C]
    out["labels"]                              # int32 [B, H, W]: class id per pixel
    out["probs"]                               # float32 [B, H, W, K]: softmax probabilities
    model.class_names, model.palette, model.colorize(out["labels"])

The artifact is a serialized `jax.export.Exported` (StableHLO with the parameters baked in as constants, the
normalisation and the model's padding included) and a JSON description. This module imports only numpy, jax and
the standard library: no flax, optax, orbax, tfds or grain, and nothing of segjax's models or trainer, so a
serving process needs nothing but `pip install jax` (plus `flatbuffers`, which jax's deserializer imports).
Keep it that way: tests/serving/test_export.py runs it in a fresh process and checks those modules stay unloaded.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np

FORMAT = "segjax.export"
# Bumped when model.json or the calling convention of the exported function changes incompatibly; a loader
# refuses versions it does not know rather than guessing.
FORMAT_VERSION = 1
EXPORTED_FILE = "model.jaxexport"
META_FILE = "model.json"

# jax.export names GPU platforms by their runtime; jax.default_backend() says "gpu" for either.
_BACKEND_PLATFORMS = {"cpu": ("cpu",), "gpu": ("cuda", "rocm"), "tpu": ("tpu",)}


def _describe_side(rule: dict[str, Any]) -> str:
  if "fixed" in rule:
    return f"exactly {rule['fixed']}"
  text = f"a multiple of {rule['multiple_of']}" if rule["multiple_of"] > 1 else "any size"
  return text + (f", at least {rule['min']}" if rule.get("min", 1) > rule["multiple_of"] else "")


def _side_fix(name: str, got: int, rule: dict[str, Any]) -> str | None:
  """None if side `got` fits `rule`, else what to do about it."""
  if "fixed" in rule:
    want = rule["fixed"]
    if got == want:
      return None
    return (f"resize, crop or pad the images to {name} {want}, or re-export with --{name}={got} (or without "
            f"--{name}, where the model allows any {name})")
  multiple, low = rule["multiple_of"], rule.get("min", 1)
  if got % multiple == 0 and got >= low:
    return None
  up = max(-(-got // multiple) * multiple, -(-low // multiple) * multiple)
  down = got // multiple * multiple
  crop = f" or crop to {down}" if down >= low and down > 0 else ""
  return f"pad the images to {name} {up}{crop} (segjax pads evaluation images at the bottom/right)"


class ExportedSegmenter:
  """A deserialized segjax export: call it on uint8 images, get labels and probabilities.

  Attributes:
    path: the directory it was loaded from.
    meta: the parsed model.json.
    exported: the `jax.export.Exported`.
    class_names: one name per class id.
    palette: display RGB per class id.
    num_channels: C, the image channels it takes.
    outputs: the names of the arrays a call returns ("labels", "probs", "logits").
  """

  def __init__(self, path: pathlib.Path, meta: dict[str, Any], exported: Any):
    self.path, self.meta, self.exported = path, meta, exported
    self.class_names: tuple[str, ...] = tuple(meta["class_names"])
    self.palette: tuple[tuple[int, int, int], ...] = tuple(tuple(int(v) for v in c) for c in meta["palette"])
    self.num_channels: int = int(meta["input"]["channels"])
    self.outputs: tuple[str, ...] = tuple(meta["outputs"])
    # One compiled executable per input shape; the exported function is traced only once, at export time.
    self._call = jax.jit(exported.call)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def check_input(self, images: Any) -> np.ndarray:
    """Returns `images` as a uint8 numpy array [B, H, W, C], or raises ValueError saying what does not fit."""
    where = f"{self.path / EXPORTED_FILE}"
    images = np.asarray(images)
    if images.dtype != np.uint8:
      raise ValueError(f"{where} takes uint8 images (0..255), got dtype {images.dtype}: convert with "
                       "np.clip(x, 0, 255).astype(np.uint8) (scale 0..1 floats by 255 first).")
    if images.ndim != 4:
      fix = (" (one image: images[None])" if images.ndim == 3 else "")
      raise ValueError(f"{where} takes a batch [B, H, W, {self.num_channels}], got shape {images.shape}{fix}.")
    channels = images.shape[3]
    if channels != self.num_channels:
      how = {(1, 3): "convert grayscale to RGB (np.repeat(x, 3, axis=-1))",
             (3, 1): "convert RGB to grayscale", (4, 3): "drop the alpha channel (x[..., :3])"}.get(
                 (channels, self.num_channels), f"give {self.num_channels}-channel images")
      raise ValueError(f"{where} expects images with {self.num_channels} channels, got {channels} (shape "
                       f"{images.shape}): {how}.")
    size = self.meta["input"]
    batch = size["batch"]
    if isinstance(batch, int) and images.shape[0] != batch:
      raise ValueError(f"{where} was exported for batches of exactly {batch}, got {images.shape[0]}: split or pad "
                       "the batch, or re-export with a symbolic batch (the default).")
    for axis, name in ((1, "height"), (2, "width")):
      fix = _side_fix(name, images.shape[axis], size[name])
      if fix is not None:
        raise ValueError(
            f"{where} does not take images of {name} {images.shape[axis]} (shape {images.shape}): it expects "
            f"{name} {_describe_side(size[name])} ({self.meta['recipe']['model'].get('name', 'the model')}, "
            f"exported input shape {tuple(size['shape'])}). Fix: {fix}.")
    return images

  def __call__(self, images: Any) -> dict[str, np.ndarray]:
    """images uint8 [B, H, W, C] -> {"labels": int32 [B, H, W], "probs": float32 [B, H, W, K], ...} (numpy).

    Raises:
      ValueError: the images' dtype, rank, channels or size do not fit the exported shapes (naming expected,
        got and the fix).
    """
    images = self.check_input(images)
    return {k: np.asarray(v) for k, v in self._call(images).items()}

  def colorize(self, labels: np.ndarray) -> np.ndarray:
    """int labels [..., H, W] -> uint8 RGB [..., H, W, 3] in the dataset's palette."""
    return np.asarray(self.palette, np.uint8)[np.asarray(labels)]

  def __repr__(self) -> str:
    i = self.meta["input"]
    return (f"ExportedSegmenter({str(self.path)!r}, {self.meta['recipe']['model'].get('name')}, "
            f"{self.num_classes} classes, input {tuple(i['shape'])} uint8, platforms {self.exported.platforms})")


class ExportedDetector:
  """A deserialized instance export (segjax.serving.export_instance): call it on uint8 images of its fixed size.

  Attributes:
    path, meta, exported: as ExportedSegmenter.
    class_names: the K object classes (class id k names class_names[k - 1]).
    size: the (height, width) it takes; smaller images are zero-padded bottom/right, their sizes passed.
  """

  def __init__(self, path: pathlib.Path, meta: dict[str, Any], exported: Any):
    self.path, self.meta, self.exported = path, meta, exported
    self.class_names: tuple[str, ...] = tuple(meta["class_names"])
    self.size = (int(meta["input"]["height"]["fixed"]), int(meta["input"]["width"]["fixed"]))
    self._call = jax.jit(exported.call)

  def __call__(self, images: Any, image_sizes: Any = None) -> dict[str, np.ndarray]:
    """images uint8 [B, H, W, 3] (H, W = `size`), image_sizes int32 [B, 2] (default: all of H, W) ->
    {"boxes", "scores", "classes", "valid"[, "masks"]} (numpy; rows with valid False are padding).

    Raises:
      ValueError: images of another dtype, rank or size, naming the fix.
    """
    images = np.asarray(images)
    where = self.path / EXPORTED_FILE
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (*self.size, 3):
      raise ValueError(f"{where} takes uint8 images [B, {self.size[0]}, {self.size[1]}, 3], got {images.dtype} "
                       f"{images.shape}: pad smaller images with zeros at the bottom/right to {self.size} and pass "
                       "their true sizes as image_sizes (larger ones: resize first, or export with --height/--width).")
    batch = self.meta["input"]["batch"]
    if isinstance(batch, int) and images.shape[0] != batch:
      raise ValueError(f"{where} was exported for batches of exactly {batch}, got {images.shape[0]}.")
    if image_sizes is None:
      image_sizes = np.tile(np.asarray(self.size, np.int32), (images.shape[0], 1))
    return {k: np.asarray(v) for k, v in self._call(images, np.asarray(image_sizes, np.int32)).items()}


def read_meta(path: str | pathlib.Path) -> dict[str, Any]:
  """The parsed model.json of export directory `path`, checked for format and version.

  Raises:
    FileNotFoundError: `path` or its model.json is missing.
    ValueError: model.json is not a segjax export description, or of a format version this loader does not know.
  """
  path = pathlib.Path(path)
  meta_file = path / META_FILE
  if not path.is_dir():
    raise FileNotFoundError(f"{path} is not a directory: pass the directory `python -m segjax.export --out=DIR` "
                            f"wrote (it holds {EXPORTED_FILE} and {META_FILE}).")
  if not meta_file.is_file():
    raise FileNotFoundError(f"{meta_file} is missing: {path} holds {sorted(p.name for p in path.iterdir())[:10]}, "
                            f"not a segjax export. Export with `python -m segjax.export --config=... --workdir=... "
                            f"--out={path}`.")
  try:
    meta = json.loads(meta_file.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{meta_file} is not valid JSON ({e}): the file is damaged; export again.") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise ValueError(f"{meta_file} is not a segjax export description (its 'format' is "
                     f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r}).")
  version = meta.get("format_version")
  if version != FORMAT_VERSION:
    newer = isinstance(version, int) and version > FORMAT_VERSION
    fix = ("upgrade segjax (or copy a newer segjax/serving.py) to load it" if newer
           else "export the checkpoint again with this segjax")
    raise ValueError(f"{meta_file} has format_version {version!r}; this loader reads version {FORMAT_VERSION} only: "
                     f"{fix}.")
  return meta


def load(path: str | pathlib.Path) -> ExportedSegmenter | ExportedDetector:
  """Loads the export directory `path` (model.jaxexport + model.json).

  Raises:
    FileNotFoundError: `path`, model.json or model.jaxexport is missing.
    ValueError: an unknown format version, a damaged file, or an export for platforms this process does not run.
  """
  path = pathlib.Path(path)
  meta = read_meta(path)
  exported_file = path / meta.get("files", {}).get("exported", EXPORTED_FILE)
  if not exported_file.is_file():
    raise FileNotFoundError(f"{exported_file} is missing beside {path / META_FILE}: copy both files together, or "
                            "export again.")
  try:
    exported = jax.export.deserialize(bytearray(exported_file.read_bytes()))
  except ImportError as e:
    raise ImportError(f"Loading {exported_file} needs the `flatbuffers` package, which jax's deserializer imports: "
                      f"pip install flatbuffers ({e}).") from e
  except Exception as e:  # pylint: disable=broad-except  (flatbuffers raises assorted types on bad bytes)
    raise ValueError(f"{exported_file} could not be deserialized ({type(e).__name__}: {e}): the file is damaged, "
                     f"or was written by a jax too far from this one ({jax.__version__}; it was written by jax "
                     f"{meta.get('jax_version')}). Export again with this jax.") from e
  backend = jax.default_backend()
  runnable = _BACKEND_PLATFORMS.get(backend, (backend,))
  if not any(p in exported.platforms for p in runnable):
    raise ValueError(f"{exported_file} was exported for platforms {list(exported.platforms)}, but this process runs "
                     f"on {backend!r}: export again with --platforms={','.join((*exported.platforms, runnable[0]))}, "
                     f"or run where one of those platforms is the default backend (JAX_PLATFORMS).")
  if meta.get("task") == "instance":
    return ExportedDetector(path, meta, exported)
  return ExportedSegmenter(path, meta, exported)
