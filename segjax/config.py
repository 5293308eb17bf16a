"""The recipe schema: every key a recipe may set, with its default, and the checks made once at the boundary.

Recipes in configs/ start from `default_config()` and override fields. The returned ConfigDict is locked, so a
misspelt key on the command line (`--config.batchsize=8`) fails at parse time instead of being ignored.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from segjax.data import augment
from segjax.data import folder
from segjax.evaluation import conventions
from segjax import loss_config
from segjax import models
from segjax import sharding
from segjax import tasks
from segjax.tasks import instance_config, panoptic_config
from segjax import weights
from segjax.ops import conv as conv_lib


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # What the run learns (segjax.tasks): "semantic" (every pixel a class), or "package.module:Class" naming a
  # segjax.tasks.Task of your own, imported when the recipe is built.
  c.task = "semantic"
  c.seed = 0
  c.num_train_steps = 1000
  c.batch_size = 16  # global, over all processes and devices
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.eval_every_steps = 0  # 0: no evaluation during training (run eval.py)
  c.eval_batch_size = 16
  c.eval_split = "validation"
  c.num_visualizations = 6  # examples eval.py writes as PNGs
  # A step whose loss or gradients are not finite is never applied; "stop" then ends training with an error
  # naming the step (checkpoints stay intact), "skip" goes on and counts such steps in metrics.jsonl.
  c.on_nonfinite = "stop"
  # A loss over this factor x the median of the last 50 finite losses stops training as diverged (0: never).
  # Healthy training's loss stays within a small multiple of its recent median (a hard batch: 2-10x); a diverging
  # run's grows by orders of magnitude within a few steps (1e11 at step 5 in issue 19), so 1e3 fires on those
  # only. The stop names the newest good checkpoint; checkpoints after it are moved aside, never deleted.
  c.divergence_factor = 1e3
  # Resume from this checkpoint step instead of the latest (newer ones are moved to DIR/checkpoints_rewound, not
  # deleted; those saved by a run with the same resume_from_step are its continuation and stay). 0: from scratch.
  c.resume_from_step = ml_collections.FieldReference(None, field_type=int)

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "shapes"
  c.dataset.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: tfds default
  c.dataset.manual_dir = ml_collections.FieldReference(None, field_type=str)
  c.dataset.train_split = "train"
  c.dataset.crop_size = (64, 64)  # (height, width) of training crops; smaller images are padded
  # (min, max) factor each training example is resized by before cropping, drawn uniformly; (0.5, 0.5) trains
  # at half resolution (evaluate it with inference.scales=(0.5,) to score full-resolution labels).
  c.dataset.train_scale = (1.0, 1.0)
  # How inference mode "whole" sizes evaluation images. (h, w): every image padded to it, batched (an image larger
  # is an error); None: the first example's size rounded up to the model's divisor (a split of one size);
  # "per_image": each image at its own size, as predict.py runs it (splits of mixed sizes; compiles once per
  # distinct size). Padding carries weight 0, so it never enters a metric. Tiled modes are always per image.
  c.dataset.eval_size = ml_collections.FieldReference(None, field_type=object)
  # Per-channel normalisation in 0..255 units, applied on device; a single value is broadcast over channels.
  c.dataset.mean = (127.5,)
  c.dataset.std = (127.5,)
  # "mean_std" uses mean/std above; "per_image" standardises each image (tf.image.per_image_standardization).
  c.dataset.normalization = "mean_std"
  c.dataset.worker_count = 0  # grain worker processes for decoding; 0 decodes in the main process
  # PIL's pixel limit (Image.MAX_IMAGE_PIXELS) while a dataset is prepared; PIL refuses images over twice it as
  # possible decompression bombs. None: PIL's default (89,478,485).
  c.dataset.max_image_pixels = ml_collections.FieldReference(None, field_type=int)
  # dataset.name = "folder": the user's images/masks folders (segjax.data.folder.FolderParams documents each
  # key); `name` names the prepared copy under data_dir.
  c.dataset.folder = folder.config_block()
  c.dataset.folder.name = "custom"
  # MMSegmentation's reduce_zero_label (ADE20K-style masks): raw label 0 is "other" and becomes ignored, every
  # other id c becomes c - 1. The class list given by the dataset is then the reduced one.
  c.dataset.reduce_zero_label = False
  # Before training, count the labelled pixels of each class in the training split (once per workdir, cached in
  # DIR/label_stats.json): an error if nothing is labelled, a warning naming classes without a pixel and images
  # that are all "ignore" (segjax.data.label_stats). False skips the count.
  c.dataset.check_labels = True

  # Device-side joint augmentation of image and mask (segjax.data.augment.AugmentConfig documents each op);
  # every op is off except horizontal flips. MMSeg's PhotoMetricDistortion colour jitter: saturation=(0.5, 1.5),
  # hue_delta=18 (OpenCV's hue units, 180 a turn), each with probability 0.5 (saturation_prob, hue_prob).
  c.augment = augment.config_block(hflip_prob=0.5)

  # The chosen model's constructor options (see segjax.models); a recipe for another model replaces the block
  # with `models.model_config(name, ...)`.
  c.model = models.model_config("unet")

  # Pretrained backbone weights (segjax.weights): a Keras .h5 (keras-applications layout) or a torchvision state
  # dict (.pth / .safetensors) loaded over the fresh initialisation before training starts.
  c.init_from = ml_collections.ConfigDict()
  c.init_from.path = ml_collections.FieldReference(None, field_type=str)
  c.init_from.format = "auto"  # auto (from the file) | keras_h5 | torch
  c.init_from.architecture = "auto"  # auto | vgg16 | vgg16_bn | resnet18 | resnet34 | resnet50 | resnet101
  c.init_from.target = "auto"  # parameter path of the backbone in the model, e.g. "backbone"; auto finds it
  # True: dataset.mean/std are replaced by the weights' own input convention (Caffe/Keras BGR mean subtraction
  # or torchvision's ImageNet mean/std), which the backbone was trained with.
  c.init_from.set_normalization = True

  # How eval.py and predict.py run the network over an image (segjax.inference documents each key).
  c.inference = ml_collections.ConfigDict()
  c.inference.mode = "whole"  # whole | slide | overlap_tile
  c.inference.tile_size = ml_collections.FieldReference(None, field_type=tuple)  # (h, w); default crop_size
  c.inference.stride = ml_collections.FieldReference(None, field_type=tuple)  # (h, w); default 2/3 of the tile
  c.inference.weighting = "mean"  # slide: "mean" or "gaussian" (nnU-Net) averaging of overlapping logits
  c.inference.gaussian_sigma = 0.125  # as a fraction of the tile side
  c.inference.hflip = False  # test-time augmentation: also predict the mirrored image and average
  c.inference.vflip = False
  c.inference.scales = (1.0,)  # test-time augmentation: image scales whose predictions are averaged
  c.inference.merge = "probs"  # average softmax probabilities ("probs") or raw logits ("logits")
  c.inference.tile_batch = 8  # tiles per device call

  # Which convention eval.py prints as the headline numbers; metrics.json holds every convention.
  c.metrics = ml_collections.ConfigDict()
  c.metrics.convention = "segjax"  # segjax | mmseg | torchvision | smp_micro | smp_macro | smp_micro_imagewise ...
  c.metrics.num_ranked = 4  # eval.py draws this many worst and best images (by image mIoU) in worst.png/best.png

  # config.task="instance" (Mask R-CNN): max_instances, augmentation, loss weights, dataset options
  # (segjax.tasks.instance_config documents each key); semantic recipes leave it alone.
  c.instance = instance_config.config_block()
  # config.task="panoptic" (Panoptic FPN): the joint loss's weights, the fusion's thresholds, dataset options
  # (segjax.tasks.panoptic_config); it also reads config.instance.
  c.panoptic = panoptic_config.config_block()

  # Segmentation losses summed with their weights (segjax.loss_config documents each key; docs/losses.md).
  c.loss = loss_config.config_block()

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # adamw | adam | sgd
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"  # cosine | constant | poly
  c.optimizer.warmup_steps = 0
  c.optimizer.weight_decay = 1e-4
  c.optimizer.momentum = 0.9  # sgd only
  c.optimizer.poly_power = 0.9
  c.optimizer.boundaries = ()  # "step": steps at which the rate is multiplied by decay_factor (Detectron2's STEPS)
  c.optimizer.decay_factor = 0.1
  c.optimizer.grad_clip_norm = 0.0  # 0: no clipping

  # Exponential moving average of the parameters, kept in the train state (and its checkpoints) and used by
  # evaluation, prediction and export in place of the raw parameters: ema = decay * ema + (1 - decay) * params
  # after every update, starting at the initial parameters. 0 is off (no EMA in the state). warmup: decay
  # min(decay, (1 + t) / (10 + t)) at update t, TensorFlow's ExponentialMovingAverage(num_updates).
  c.ema = ml_collections.ConfigDict()
  c.ema.decay = 0.0  # e.g. 0.999 or 0.9999 (timm's ModelEma)
  c.ema.warmup = False

  # Gradient accumulation: each step splits its global batch into this many microbatches, run one after another
  # (activations of one microbatch in memory at a time) and averages their gradients; batch_size stays the
  # global batch of one optimiser step.
  c.grad_accum_steps = 1

  # Convolution kernels (segjax.ops.conv): "auto" runs them on oneDNN on a single CPU device when segjax's oneDNN
  # library is installed (pip install -e '.[cpu]'), on XLA's own kernels everywhere else; "xla" always XLA's;
  # "onednn" insists (an error where it cannot run). Same parameters and results either way (to rounding).
  c.conv_backend = "auto"

  # The (data, spatial, model) device mesh; see segjax.sharding. data=-1 takes every device the others leave.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # batch split (data parallel)
  c.mesh.spatial = 1  # image rows split (very large images)
  c.mesh.model = 1  # parameters split by `rules`
  # (regex over the state path, mesh axes of the trailing dims); first match wins, unmatched leaves replicated.
  c.mesh.rules = sharding.DEFAULT_RULES

  # Multi-host (jax.distributed). mode "auto" initialises when a coordinator address is given (here or in
  # $JAX_COORDINATOR_ADDRESS) or a Cloud TPU VM slice is detected; "on" always initialises (JAX auto-detects what
  # is unset: TPU, SLURM, Open MPI, Kubernetes); "off" never.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.mode = "auto"
  c.distributed.coordinator_address = ml_collections.FieldReference(None, field_type=str)  # "host:port"
  c.distributed.num_processes = ml_collections.FieldReference(None, field_type=int)
  c.distributed.process_id = ml_collections.FieldReference(None, field_type=int)
  c.distributed.local_device_ids = ml_collections.FieldReference(None, field_type=tuple)
  c.distributed.initialization_timeout = 300  # seconds to wait for every process
  return c


def use_dataset(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Sets `c.dataset`, the evaluation split and the training schedule to the project's standard for `name`.

  Recipes for several models on one dataset share these values (and override what their paper changes), so a
  fix here reaches all of them. Paths are
  relative to the repository root, where the README runs the commands; override with
  `--config.dataset.manual_dir`.
  """
  d = c.dataset
  d.name = name
  if name == "shapes":
    d.crop_size, d.mean, d.std = (64, 64), (127.5,), (127.5,)
    c.eval_split = "validation"
    # Minutes on a CPU. Dice on top of cross-entropy: 85% of the pixels are background, and Dice weighs every
    # class equally.
    c.num_train_steps, c.batch_size, c.eval_batch_size = 1800, 8, 50
    c.log_every_steps, c.checkpoint_every_steps = 25, 200
    c.optimizer.learning_rate, c.optimizer.warmup_steps = 3e-3, 20
    c.loss.dice_weight = 1.0
  elif name == "camvid":
    d.manual_dir = "../shared/data/camvid"
    d.train_split, c.eval_split = "train", "validation"
    d.crop_size = (360, 480)  # whole frames, as SegNet trains; random horizontal flips
    # Per-channel mean/std of the 367 CamVid training images in 0..255 (RGB), computed with numpy.
    d.mean, d.std = (105.0, 108.4, 110.3), (78.3, 79.5, 78.3)
    d.worker_count = 2
    c.num_train_steps, c.batch_size, c.eval_batch_size = 20000, 8, 4
    c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 50, 1000, 2000
  elif name == "isbi2012":
    d.manual_dir = "../shared/data/isbi2012-membrane"
    # The challenge's test labels are withheld: train on 25 of the 30 labelled images, evaluate on 5.
    d.train_split, c.eval_split = "train[:25]", "train[25:]"
    d.crop_size, d.mean, d.std = (256, 256), (127.5,), (127.5,)
    # The U-Net paper's augmentation: shifts (the random crop), rotations, flips (the stack has no preferred
    # orientation), gray-value variations and elastic deformations (N(0, 10 px) on a 3x3 grid, bicubic).
    c.augment.update(dict(hflip_prob=0.5, vflip_prob=0.5, rotate_degrees=15.0, elastic_sigma=10.0, elastic_grid=3,
                          brightness=0.05, contrast=0.2))
    c.num_train_steps, c.batch_size, c.eval_batch_size = 4000, 8, 5
    c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 50, 500, 1000
  else:
    raise ValueError(f"use_dataset: no preset for dataset {name!r}; set config.dataset.* directly")
  return c


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks `config` against new keys and returns it (what every recipe's get_config returns)."""
  config.lock()
  return config


def validate(config: ml_collections.ConfigDict) -> "Settings":
  """Checks values that the type system of ConfigDict cannot; raises ValueError naming key, value and fix.

  Returns:
    The typed sections the run reads (`Settings`), built once here.
  """
  def fail(key, value, fix):
    raise ValueError(f"config.{key}={value!r}: {fix}")

  try:
    task = tasks.resolve(config.task)
  except ValueError as e:
    raise ValueError(str(e)) from None
  spec = task.dataset_spec(config)  # raises naming config.dataset.name and the known datasets
  for key in ("num_train_steps", "batch_size", "eval_batch_size", "log_every_steps", "checkpoint_every_steps",
              "keep_checkpoints"):
    if config[key] <= 0:
      fail(key, config[key], "must be a positive integer")
  scale = tuple(config.dataset.train_scale)
  if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
    fail("dataset.train_scale", scale, "give (min, max) with 0 < min <= max, e.g. (0.5, 0.5) or (0.5, 2.0)")
  eval_size = config.dataset.eval_size
  if eval_size is not None and eval_size != "per_image" and (
      not isinstance(eval_size, (tuple, list)) or len(eval_size) != 2
      or not all(isinstance(v, int) and v > 0 for v in eval_size)):
    fail("dataset.eval_size", eval_size, "give (height, width), both positive, 'per_image' (each image at its own "
         "size) or None (the first example's size)")
  if len(config.dataset.crop_size) != 2 or min(config.dataset.crop_size) <= 0:
    fail("dataset.crop_size", config.dataset.crop_size, "give (height, width), both positive")
  if config.conv_backend not in conv_lib.BACKENDS:
    fail("conv_backend", config.conv_backend, f"choose one of {list(conv_lib.BACKENDS)}")
  if config.optimizer.name not in ("adamw", "adam", "sgd"):
    fail("optimizer.name", config.optimizer.name, "choose adamw, adam or sgd")
  if config.optimizer.schedule not in ("cosine", "constant", "poly", "step"):
    fail("optimizer.schedule", config.optimizer.schedule, "choose cosine, constant, poly or step")
  boundaries = tuple(config.optimizer.boundaries)
  if config.optimizer.schedule == "step" and (
      not boundaries or list(boundaries) != sorted(boundaries)
      or not all(config.optimizer.warmup_steps < b for b in boundaries)):
    fail("optimizer.boundaries", boundaries, "give increasing steps after the warm-up, e.g. (60000, 80000)")
  loss_config.check(config.loss, fail)
  task.check_config(config, spec, fail)
  if config.on_nonfinite not in ("stop", "skip"):
    fail("on_nonfinite", config.on_nonfinite, "choose 'stop' or 'skip'")
  if config.divergence_factor < 0 or 0 < config.divergence_factor <= 1:
    fail("divergence_factor", config.divergence_factor, "give a factor > 1 (default 1e3), or 0 to disable")
  if config.resume_from_step is not None and config.resume_from_step < 0:
    fail("resume_from_step", config.resume_from_step, "give a checkpoint step >= 0 (None: the latest)")
  if config.metrics.convention not in conventions.CONVENTIONS:
    fail("metrics.convention", config.metrics.convention, f"choose one of {list(conventions.CONVENTIONS)}")
  if config.dataset.normalization not in ("mean_std", "per_image"):
    fail("dataset.normalization", config.dataset.normalization, "choose 'mean_std' or 'per_image'")
  if augment.from_config(config.augment).colour and spec.num_channels != 3:  # from_config raises naming the key
    fail("augment", (config.augment.saturation, config.augment.hue_delta), f"saturation and hue_delta need RGB "
         f"images; {spec.name} has {spec.num_channels} channel(s): leave them at (1.0, 1.0) and 0")
  if not 0 <= config.ema.decay < 1:
    fail("ema.decay", config.ema.decay, "give a decay in [0, 1), e.g. 0.999 (0: no moving average)")
  if config.grad_accum_steps < 1 or config.batch_size % config.grad_accum_steps:
    fail("grad_accum_steps", config.grad_accum_steps,
         f"must be >= 1 and divide batch_size={config.batch_size} (each microbatch is batch_size / grad_accum_steps)")
  for key in ("spatial", "model"):
    if config.mesh[key] < 1:
      fail(f"mesh.{key}", config.mesh[key], "must be >= 1 (1: the axis is not used)")
  if config.mesh.data != -1 and config.mesh.data < 1:
    fail("mesh.data", config.mesh.data, "must be -1 (every device) or >= 1")
  sharding.check_rules(config.mesh.rules)
  if config.distributed.mode not in ("auto", "on", "off"):
    fail("distributed.mode", config.distributed.mode, "choose 'auto', 'on' or 'off'")
  for key in ("mean", "std"):
    value = config.dataset[key]
    if len(value) not in (1, spec.num_channels):
      fail(f"dataset.{key}", value, f"give 1 or {spec.num_channels} values for {spec.name}")
  weights.check_config(config)  # init_from.*: raises naming the key
  return settings(config)


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """config.optimizer, typed (segjax.state.make_optimizer reads it)."""
  name: str
  learning_rate: float
  schedule: str
  warmup_steps: int
  weight_decay: float
  momentum: float
  poly_power: float
  grad_clip_norm: float
  boundaries: tuple[int, ...]
  decay_factor: float


LossSettings = loss_config.LossSettings  # config.loss, typed


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """The training loop's keys of the recipe's top level, typed."""
  seed: int
  num_train_steps: int
  batch_size: int
  grad_accum_steps: int
  log_every_steps: int
  checkpoint_every_steps: int
  keep_checkpoints: int
  eval_every_steps: int
  eval_batch_size: int
  eval_split: str
  num_visualizations: int
  on_nonfinite: str
  divergence_factor: float
  resume_from_step: int | None


@dataclasses.dataclass(frozen=True)
class Settings:
  """The typed sections of a validated recipe: what the loop, the optimiser and the loss read."""
  loop: LoopSettings
  optimizer: OptimizerSettings
  loss: LossSettings
  augment: augment.AugmentConfig


def _section(cls, block):
  return cls(**{f.name: block[f.name] for f in dataclasses.fields(cls)})


def settings(config: ml_collections.ConfigDict) -> Settings:
  """The typed sections of `config` (call `validate` first: this only copies and converts)."""
  loss = loss_config.settings(config.loss)
  optimizer = _section(OptimizerSettings, config.optimizer)
  optimizer = dataclasses.replace(optimizer, boundaries=tuple(int(b) for b in optimizer.boundaries))
  return Settings(loop=_section(LoopSettings, config), optimizer=optimizer,
                  loss=loss, augment=augment.from_config(config.augment))


def resolve_recipe(spec: str) -> str:
  """The recipe file that `--config=spec` (or a --member's recipe) names: `spec` itself when it is a file, else,
  for a bare name (`quickstart` or `quickstart.py`, no folder), the recipe of that name shipped with segjax;
  anything else unchanged (loading it then fails, naming it).

  The recipes are configs/*.py at the top of a clone, and the package segjax.configs in an installed wheel
  (setup.py maps one to the other), so `segjax-train --config=quickstart` works outside a clone.
  """
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel

  if not spec or pathlib.Path(spec).is_file() or "/" in spec or "\\" in spec:
    return spec
  name = spec[:-len(".py")] if spec.endswith(".py") else spec
  folders = []
  try:
    found = importlib.util.find_spec("segjax.configs")  # a wheel's segjax/configs, or an editable install's map
  except ImportError:
    found = None
  if found is not None and found.submodule_search_locations:
    folders += [pathlib.Path(p) for p in found.submodule_search_locations]
  clone = pathlib.Path(__file__).resolve().parents[1]
  if (clone / "pyproject.toml").is_file():  # segjax imported from a source tree (PYTHONPATH=clone)
    folders.append(clone / "configs")
  for folder in folders:
    if (folder / f"{name}.py").is_file():
      return str(folder / f"{name}.py")
  return spec


def load_recipe(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of the recipe file `path`, or of the shipped recipe named `path` (`quickstart`;
  resolve_recipe): what --config gives train.py and eval.py.

  Raises:
    FileNotFoundError: no such file or recipe, naming it.
    ValueError: the file has no get_config().
  """
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel

  file = pathlib.Path(resolve_recipe(path))
  if not file.is_file():
    raise FileNotFoundError(f"Recipe {path} does not exist (from {pathlib.Path.cwd()}); give the path of a recipe "
                            "file (recipes live in configs/) or the name of a recipe shipped with segjax "
                            "(e.g. quickstart).")
  spec = importlib.util.spec_from_file_location(file.stem, file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"Recipe {path} defines no get_config(); see configs/quickstart.py for the shape of a recipe.")
  return module.get_config()


def parse_member(text: str) -> tuple[ml_collections.ConfigDict, str, int | None]:
  """An ensemble member given as "RECIPE:WORKDIR[:STEP]" -> (recipe, workdir, checkpoint step or None).

  Raises:
    ValueError: a malformed value, naming it and the expected form.
  """
  parts = text.split(":")
  step = None
  if len(parts) == 3 and parts[2].isdigit():
    step = int(parts[2])
    parts = parts[:2]
  if len(parts) != 2 or not all(parts):
    raise ValueError(f"--member={text!r}: give RECIPE:WORKDIR or RECIPE:WORKDIR:STEP, e.g. "
                     "--member=configs/fcn8s_camvid.py:runs/fcn8s (the recipe the member was trained with).")
  return load_recipe(parts[0]), parts[1], step
