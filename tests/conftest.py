"""Test setup: 8 fake CPU devices, so sharded code paths run as they would on a TPU slice."""

import os
import pathlib

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
from segjax import platform  # noqa: E402  (imports no JAX)

platform.configure_xla_cpu()  # the tests run with the XLA:CPU settings train.py and eval.py use

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def prepare_builder(builder_cls, data_dir, manual_dir=None):
  """Prepares a segjax tfds builder (array_record) from `manual_dir` into `data_dir` and returns it."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  builder = builder_cls(data_dir=os.fspath(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir) if manual_dir else None, try_download_gcs=False))
  return builder


def read_image(path):
  """The pixels of an image file as PIL decodes them (the independent reference for builder tests)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel

  with Image.open(path) as img:
    return np.asarray(img)


def save_image(path: pathlib.Path, image) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path)


def as_str(filename) -> str:
  return filename.decode() if isinstance(filename, bytes) else filename


def import_torchvision(required: bool = True):
  """torchvision (the reference for weight import; torchmetrics imports it too), or a skip when it is absent.

  PyPI's torchvision wheel is built for CUDA; beside the CPU torch it cannot load its C extension
  (libc10_cuda.so) and fails on import while registering its detection operators. The models need none of them,
  so the import is retried with those registrations left out. `required=False` returns None instead of skipping.
  """
  import sys  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel

  pytest.importorskip("torch")
  try:
    import torchvision  # pylint: disable=import-outside-toplevel
  except ImportError:
    if required:
      pytest.skip("torchvision is not installed (pip install -e '.[test]')")
    return None
  except (RuntimeError, OSError):
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
      sys.modules[name] = types.ModuleType(name)
    import torchvision  # pylint: disable=import-outside-toplevel,reimported
  return torchvision


def shared_dataset(name: str) -> pathlib.Path:
  """Path of a dataset under ../shared/data, or skip the test saying why."""
  path = SHARED_DATA / name
  if not path.is_dir():
    pytest.skip(f"{path} is absent: real-data tests need ../shared/data/{name} beside the checkout")
  return path


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory) -> str:
  """A tfds data_dir with the built-in shapes dataset prepared once per test session (~10 s)."""
  from segjax.data import datasets  # pylint: disable=import-outside-toplevel  (after XLA_FLAGS is set)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  datasets.get_builder("shapes", data_dir=data_dir)
  return data_dir


def random_state(abstract, seed):
  """Every leaf of a state's shapes drawn at random, on the host: a stand-in for a trained state (no jit of the
  initialiser, which costs ~15 s on 2 cores). Kernels get fan-in scaled weights so activations stay in range;
  vectors (biases, BatchNorm scales, running means and variances) 1 +- 0.2, so every variance is positive and
  the running averages differ from their initial 0/1: predicting with batch statistics instead would differ."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)

  def draw(leaf):
    if not np.issubdtype(leaf.dtype, np.floating):
      return np.zeros(leaf.shape, leaf.dtype)
    if len(leaf.shape) >= 2:
      return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(leaf.dtype)
    return (1.0 + 0.2 * rng.normal(size=leaf.shape)).astype(leaf.dtype)

  return jax.tree.map(draw, abstract)


def random_checkpoint(config, workdir, seed: int = 0, step: int = 3):
  """Saves a checkpoint (at `step`) of `config`'s state drawn by `random_state` into `workdir`, on one device
  (orbax's first save over 8 fake devices costs ~10 s). Returns (Experiment, state)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from segjax import checkpoint, experiment  # pylint: disable=import-outside-toplevel

  exp = experiment.build(config, jax.devices()[:1])
  state = random_state(exp.abstract_state(), seed).replace(step=np.int32(step))
  ckpt = checkpoint.Checkpointer(workdir)
  ckpt.save(step, state, config)
  ckpt.close()
  return exp, state


def set_dotted(config, overrides):
  """`config` with each {"dotted.key": value} of `overrides` set in place (ml_collections' own
  update_from_flattened_dict would skip a misspelt key silently; this raises, or adds it to an unlocked block)."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def tiny_config(data_dir: str, **overrides):
  """The quickstart recipe shrunk to a U-Net that trains a step in milliseconds."""
  import importlib.util  # pylint: disable=import-outside-toplevel

  spec = importlib.util.spec_from_file_location("quickstart", REPO / "configs" / "quickstart.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.dataset.data_dir = data_dir
  config.dataset.crop_size = (32, 32)
  config.model.depth = 2
  config.model.base_features = 4
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  return set_dotted(config, overrides)


@pytest.fixture(scope="session")
def instance_data_dir(tmp_path_factory) -> str:
  """A tfds data_dir with the built-in instance_shapes dataset prepared once per test session (~10 s)."""
  from segjax.data.instance import registry  # pylint: disable=import-outside-toplevel  (after XLA_FLAGS is set)
  data_dir = str(tmp_path_factory.mktemp("tfds_instance"))
  registry.get_builder(registry.SHAPES, data_dir=data_dir)
  return data_dir


@pytest.fixture(scope="session")
def panoptic_data_dir(tmp_path_factory) -> str:
  """A tfds data_dir with the built-in panoptic_shapes dataset prepared once per test session (~10 s)."""
  from segjax.data.panoptic import registry  # pylint: disable=import-outside-toplevel  (after XLA_FLAGS is set)
  data_dir = str(tmp_path_factory.mktemp("tfds_panoptic"))
  registry.get_builder(registry.SHAPES, data_dir=data_dir)
  return data_dir


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> dict[str, str]:
  """Environment for running train.py / eval.py as subprocesses: this checkout importable, this session's fake
  devices, and one JAX persistent compilation cache shared by every CLI process of the session.

  Every process start re-traces and re-compiles; the cache skips the XLA compilation (the largest part) after the
  first process compiled a program: a tiny train.py restart costs 8-12 s of CPU instead of 30-40 s. A cached
  executable is the same binary, so results stay bitwise equal (tests/training/test_preemption.py checks that against an
  in-process run, which does not use the cache).
  """
  return dict(os.environ, PYTHONPATH=str(REPO),
              JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
              # Cache every program: by default only those that took over 1 s to compile are, and a restart
              # compiles ~100 small ones (optimiser schedule, orbax, init) besides the train step: 15 s of CPU
              # per restart with the default, 8-11 s with 0.
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def semantic_train_dataset(source, *, spec, batch_size, crop_size, seed, rows=None, scale_range=(1.0, 1.0)):
  """`pipeline.train_dataset` with the semantic task's host transform (`pipeline.RandomCrop`), as training uses."""
  from segjax.data import pipeline  # pylint: disable=import-outside-toplevel

  crop = pipeline.RandomCrop(crop_size, spec.ignore_label, spec.num_classes, spec.reduce_zero_label, scale_range)
  return pipeline.train_dataset(source, crop, batch_size=batch_size, seed=seed, rows=rows, name=spec.name)


def semantic_eval_batches(source, *, spec, batch_size, size, rows=None, num_threads=4):
  """`pipeline.eval_batches` with the semantic task's example and padding functions, as evaluation uses."""
  from segjax.data import pipeline  # pylint: disable=import-outside-toplevel

  return pipeline.eval_batches(source, example=pipeline.semantic_eval_example(spec, size),
                               padding=pipeline.semantic_padding(spec, size), batch_size=batch_size, rows=rows,
                               num_threads=num_threads)


def predict_logits(state, images, *, model, mean, std, normalization="mean_std"):
  """Logits of a train state through the one forward pass (`segjax.forward.Forward`) in inference mode."""
  from segjax import forward  # pylint: disable=import-outside-toplevel

  fwd = forward.Forward(model, mean, std, normalization)
  return fwd(forward.variables(state.params, state.batch_stats), images)
