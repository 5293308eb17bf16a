"""The Python API (`segjax.train`, `segjax.evaluate`, `segjax.load`): what train.py, eval.py and predict.py do, as
functions of a recipe and a workdir.

`segjax/__init__.py` imports this module only when one of its names is used, so `import segjax` (and
`from segjax import serving`) stays light.

XLA:CPU settings: every function here starts with `platform.configure_xla_cpu()`, as the CLIs' main() does. XLA
reads XLA_FLAGS once, when JAX starts its first backend, so the settings apply only if the first segjax call
comes before the process's first JAX computation; after that they cannot change anything, and `_configure_xla`
says so in a warning. Importing this module starts no backend (tests/test_api.py checks it). They are not set at
`import segjax`: importing any segjax module (a recipe file imports segjax.config, a server segjax.serving) should
not change the XLA flags of the user's process and of every subprocess it starts.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pathlib
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from segjax import checkpoint as checkpoint_lib
from segjax import config as config_lib
from segjax import experiment, models, platform, sharding
from segjax import state as state_lib
from segjax.evaluation import inference
from segjax.ops import conv as conv_lib

log = logging.getLogger(__name__)

Recipe = ml_collections.ConfigDict | str | pathlib.Path


def _configure_xla() -> None:
  """The CLIs' XLA:CPU settings (segjax.platform), with a warning when JAX already runs without them."""
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel  (no public way to ask)

  missing = [flag for flag in platform.CPU_FLAGS if flag not in os.environ.get("XLA_FLAGS", "")]
  platform.configure_xla_cpu()
  started = getattr(xla_bridge, "backends_are_initialized", lambda: False)()
  if missing and started and jax.default_backend() == "cpu":
    log.warning("JAX started before segjax was called, without segjax's XLA:CPU flags %s (segjax.platform): they "
                "apply from the next process on. Call segjax first, or set XLA_FLAGS before JAX starts.", missing)


def _recipe(config: Recipe, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` (a ConfigDict, or a recipe name or path for segjax.config.load_recipe) with `overrides`
  (top-level keys; a dict value updates that block) applied."""
  if isinstance(config, (str, pathlib.Path)):
    config = config_lib.load_recipe(str(config))
  elif not isinstance(config, ml_collections.ConfigDict):
    raise TypeError(f"config={config!r}: give a ConfigDict (segjax.config.load_recipe) or a recipe's name or path.")
  else:
    config = copy.deepcopy(config)  # the caller's recipe is not changed by the overrides
  for key, value in overrides.items():
    if key not in config:
      raise ValueError(f"the recipe has no key {key!r}; keys: {sorted(config)} (segjax/config.py).")
    if isinstance(value, dict):
      config[key].update(value)
    else:
      config[key] = value
  return config


def train(config: Recipe, workdir: str | pathlib.Path, *, progress: bool = True,
          **overrides: Any) -> state_lib.TrainState:
  """What train.py does: trains `config` in `workdir` (checkpoints, metrics.jsonl, TensorBoard, config.json),
  resuming from its latest checkpoint, and returns the final train state.

  Args:
    config: a recipe (segjax.config.load_recipe), or a recipe's name or path.
    workdir: the training directory.
    progress: show the progress bar.
    **overrides: recipe keys to change, e.g. `num_train_steps=20` or `optimizer=dict(learning_rate=1e-4)`.

  Raises:
    ValueError, OSError, FloatingPointError: what train.py reports as a user error (segjax.cli).
  """
  _configure_xla()
  from segjax.training import loop  # pylint: disable=import-outside-toplevel  (only train needs the loop)

  config = _recipe(config, overrides)
  sharding.initialize_distributed(config.distributed)
  return loop.train_and_evaluate(config, workdir, progress=progress)


def evaluate(config: Recipe | None, workdir: str | pathlib.Path, split: str | None = None, *,
             checkpoint_step: int | None = None, **overrides: Any) -> dict[str, Any]:
  """What eval.py does: evaluates a checkpoint of `workdir` on `split` (default: the recipe's eval_split), writes
  DIR/eval/<split>/, prints the table, and returns the metrics (metrics.json's contents).

  Args:
    config: the recipe the checkpoint was trained with (its `inference` block is used), a recipe's name or path,
      or None for the recipe saved with the checkpoint.
    workdir: the training directory.
    split: a split or tfds slice ("test", "test[:50]").
    checkpoint_step: the step to evaluate (default: the latest).
    **overrides: recipe keys to change, e.g. `inference=dict(mode="slide")`.
  """
  _configure_xla()
  from segjax.apps import eval as eval_app  # pylint: disable=import-outside-toplevel

  config = _recipe(saved_recipe(workdir, checkpoint_step) if config is None else config, overrides)
  sharding.initialize_distributed(config.distributed)
  return eval_app.run_eval(config, str(workdir), split=split, checkpoint_step=checkpoint_step)


# ---------------------------------------------------------------------------------------------------- recipes


def _tuples(value: Any) -> Any:
  # JSON stores tuples as lists; recipes hold tuples (sizes, means, mesh rules). A list field of the schema casts
  # a tuple back to a list on assignment.
  return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _merge(block: ml_collections.ConfigDict, saved: dict[str, Any]) -> None:
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(block.get(key), ml_collections.ConfigDict):
      _merge(block[key], value)
    else:
      block[key] = _tuples(value)


def recipe_from_dict(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """The recipe (locked, as load_recipe gives) whose `to_dict()` was saved as JSON: the schema's defaults updated
  with `saved`, its model block that of the saved model, lists turned back into tuples."""
  config = config_lib.default_config()
  model = saved.get("model", {}).get("name")
  if model is not None and saved.get("task") == "instance":  # Mask R-CNN's block (segjax.tasks.instance)
    from segjax.tasks import instance  # pylint: disable=import-outside-toplevel
    config.model = instance.model_config(model)
  elif model is not None and saved.get("task") == "panoptic":  # Panoptic FPN's block (segjax.tasks.panoptic)
    from segjax.tasks import panoptic  # pylint: disable=import-outside-toplevel
    config.model = panoptic.model_config(model)
  elif model is not None:  # a recipe replaces the whole model block; keep none of the default model's keys
    config.model = models.model_config(model)
  _merge(config, saved)
  return config_lib.finalize(config)


def saved_recipe(workdir: str | pathlib.Path, step: int | None = None) -> ml_collections.ConfigDict:
  """The recipe saved with checkpoint `step` of `workdir` (default: the newest checkpoint holding a readable one;
  DIR/config.json, the recipe of the last run, when none does).

  Raises:
    FileNotFoundError: `workdir` is no training directory.
    ValueError: `step` is not a checkpoint there, or no recipe is readable.
  """
  checkpoint_lib.check_workdir(workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir)
  try:
    steps = ckpt.all_steps()
    if step is not None and step not in steps:
      raise ValueError(f"checkpoint step {step} is not in {ckpt.directory}; available steps: {steps}")
    errors = []
    for s in ([step] if step is not None else reversed(steps)):
      try:
        return recipe_from_dict(ckpt.restore_config(s))
      except Exception as e:  # pylint: disable=broad-except  (orbax raises several types for a missing item)
        errors.append(f"step {s}: {checkpoint_lib.reason(e)}")
  finally:
    ckpt.close()
  fallback = pathlib.Path(workdir) / "config.json"
  if fallback.is_file():
    log.warning("No readable recipe in the checkpoints of %s (%s); using %s.", workdir, "; ".join(errors), fallback)
    return recipe_from_dict(json.loads(fallback.read_text()))
  raise ValueError(f"{workdir} holds no readable recipe: {'; '.join(errors) or 'no checkpoint'}, and no "
                   f"{fallback}. Train there with train.py or segjax.train first.")


# ---------------------------------------------------------------------------------------------------- predictor


class Normalization(NamedTuple):
  """How a Predictor's network normalises its input (segjax.forward): `method` "mean_std" ((x - mean) / std, in
  0..255 units) or "per_image" (each image standardised)."""
  method: str
  mean: tuple[float, ...]
  std: tuple[float, ...]


def load(workdir: str | pathlib.Path, step: int | None = None, *, config: Recipe | None = None,
         inference_overrides: dict[str, Any] | None = None) -> "Predictor":
  """A Predictor of checkpoint `step` (default: the newest that restores) of `workdir`, on one device.

  Args:
    workdir: the training directory.
    step: the checkpoint step.
    config: the recipe (default: the one saved with the checkpoint, so nothing else is needed).
    inference_overrides: `config.inference` keys to change, e.g. `dict(mode="slide", hflip=True)`.

  Raises:
    FileNotFoundError: `workdir` holds no checkpoint.
    ValueError: unknown step, a damaged checkpoint, a recipe of another model, a bad inference setting.
  """
  _configure_xla()
  config = saved_recipe(workdir, step) if config is None else _recipe(config, {})  # a copy either way
  if config.task == "instance":
    raise ValueError(f"{workdir} holds a {config.model.name} (instance) checkpoint; segjax.load serves semantic "
                     "networks. Detect with predict.py (segjax.apps.predict_instance.run), or export it (export.py) "
                     "and run it with segjax.serving.load.")
  if config.task == "panoptic":
    raise ValueError(f"{workdir} holds a {config.model.name} (panoptic) checkpoint; segjax.load serves semantic "
                     "networks. Predict with predict.py (segjax.apps.predict_panoptic) or score it with eval.py.")
  # One device: the recipe's mesh shape (mesh.model=2, say) may not fit it, and inference splits only the batch.
  config.mesh.data, config.mesh.spatial, config.mesh.model = -1, 1, 1
  if inference_overrides:
    config.inference.update(inference_overrides)
  params = inference.InferenceParams.from_config(config)  # a bad inference block fails before the restore
  exp, state, restored = experiment.restore(config, workdir, step, "predict with", jax.local_devices()[:1])
  return Predictor(config, exp, experiment.member(exp, state), params, restored)


class Predictor:
  """A trained network that segments numpy images: `predictor(images)` -> labels, `.probabilities(images)`.

  Images hold 0..255 values (uint8, or floats in those units) with the recipe's channels: ONE image [H, W, C] or
  [H, W] (grey), or a BATCH: an array [B, H, W, C] or a list of images of any sizes. A grey image is repeated to
  3 channels for an RGB network. The result has the input's form: labels [H, W] (uint8 when there are at most
  256 classes, else int32) for one image, [B, H, W] for an array batch, a list for a list.

  Attributes:
    class_names, palette, num_classes, num_channels: the dataset's (label c is class_names[c]).
    normalization: the input convention the network was trained with.
    inference: the inference mode and test-time augmentation (config.inference, segjax.evaluation.inference).
    config: the recipe; step: the checkpoint step; batch_size: images per call in mode "whole" (eval_batch_size).
  """

  def __init__(self, config: ml_collections.ConfigDict, exp: experiment.Experiment, member: inference.Member,
               params: inference.InferenceParams, step: int):
    self.config, self.step, self.inference = config, step, params
    self.class_names = tuple(exp.spec.class_names)
    self.palette = tuple(tuple(c) for c in exp.spec.palette)
    self.num_classes, self.num_channels = exp.spec.num_classes, exp.spec.num_channels
    self.normalization = Normalization(member.normalization, tuple(member.mean), tuple(member.std))
    self.batch_size = int(config.eval_batch_size)
    self.segmenter = inference.Segmenter([member], self.num_classes, params,
                                         conv_backend=conv_lib.resolve_backend(config.conv_backend, num_devices=1))
    # The weights are an argument, not constants baked into the program (Segmenter.batch_scores).
    self._batch_scores = jax.jit(lambda variables, images: self.segmenter.batch_scores(images, variables))

  def __repr__(self) -> str:
    return (f"Predictor({self.config.model.name}, step {self.step}, {self.num_classes} classes "
            f"{list(self.class_names)}, inference {self.inference.mode})")

  def __call__(self, images) -> np.ndarray | list[np.ndarray]:
    """Labels of one image or a batch (see the class docstring)."""
    return self._run(images, labels=True)

  def probabilities(self, images) -> np.ndarray | list[np.ndarray]:
    """Class probabilities, float32 [H, W, K] per image ([B, H, W, K] for an array batch): the softmax averaged
    over the test-time views (with inference.merge="logits", the softmax of the averaged logits). Their argmax is
    what `__call__` returns."""
    return self._run(images, labels=False)

  # ---------------------------------------------------------------------------------------------------------

  def _image(self, image, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
      image = image[..., None]
    if image.ndim != 3 or min(image.shape) == 0 or not (np.issubdtype(image.dtype, np.number)
                                                          and not np.issubdtype(image.dtype, np.complexfloating)):
      raise ValueError(f"{what} of shape {image.shape} and dtype {image.dtype}: give [H, W, {self.num_channels}] or "
                       "[H, W] numbers in 0..255 (one image), [B, H, W, C] or a list of images (a batch).")
    if image.shape[-1] == 1 and self.num_channels == 3:
      image = np.repeat(image, 3, axis=-1)  # grey -> RGB, as predict.py converts grey files
    if image.shape[-1] != self.num_channels:
      raise ValueError(f"{what} has {image.shape[-1]} channels; the network takes {self.num_channels} "
                       f"({'RGB' if self.num_channels == 3 else 'grey'}) images of 0..255 values.")
    return image

  def _run(self, images, labels: bool):
    if isinstance(images, (list, tuple)):
      return [self._run_one(self._image(x, f"images[{i}]"), labels) for i, x in enumerate(images)]
    array = np.asarray(images)
    if array.ndim in (2, 3):
      return self._run_one(self._image(array, "image"), labels)
    if array.ndim != 4:
      raise ValueError(f"images of shape {array.shape}: give one image [H, W, C] or [H, W], a batch [B, H, W, C] "
                       "or a list of images.")
    batch = np.stack([self._image(x, f"images[{i}]") for i, x in enumerate(array)]) if len(array) else array
    if self.inference.mode != "whole" or len(array) == 0:
      out = [self._run_one(x, labels) for x in batch]
      shape = batch.shape[1:3] + (() if labels else (self.num_classes,))
      return np.stack(out) if out else np.zeros((0, *shape), self._label_dtype if labels else np.float32)
    scores = self._whole_batch(batch)
    return self._labels(scores) if labels else self._probs(scores)

  def _run_one(self, image: np.ndarray, labels: bool) -> np.ndarray:
    if self.inference.mode == "whole":
      scores = self._whole_batch(image[None])[0]
      return self._labels(scores) if labels else self._probs(scores)
    if labels:
      return self.segmenter.predict_image(image)  # streams: no [H, W, K] scores held for a large image
    return self._probs(self.segmenter.image_scores(image))

  def _whole_batch(self, batch: np.ndarray) -> np.ndarray:
    """Scores [B, H, W, K] by mode "whole", `batch_size` images per call; the last call of several is padded with
    blank images to the same size, so a long batch compiles one program."""
    n = len(batch)
    size = min(n, self.batch_size)
    out = []
    for start in range(0, n, size):
      chunk = batch[start:start + size]
      if len(chunk) < size:
        chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
      scores = self._batch_scores(self.segmenter.variables, chunk)
      out.append(np.asarray(scores)[:n - start])
    return np.concatenate(out)

  @property
  def _label_dtype(self):
    return np.uint8 if self.num_classes <= 256 else np.int32

  def _labels(self, scores: np.ndarray) -> np.ndarray:
    return scores.argmax(-1).astype(self._label_dtype)

  def _probs(self, scores: np.ndarray) -> np.ndarray:
    if self.inference.merge == "logits":
      e = np.exp(scores - scores.max(-1, keepdims=True))
      scores = e / e.sum(-1, keepdims=True)
    return np.asarray(scores, np.float32)
