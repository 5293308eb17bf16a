"""Every recipe in configs/ imports, validates, honours the common keys and builds its model."""

import ast
import importlib.util
import pathlib

import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from segjax import config as config_lib
from segjax import experiment, models
from segjax.tasks import instance as instance_task
from segjax.tasks import panoptic as panoptic_task
from tests.conftest import REPO

RECIPES = sorted((REPO / "configs").glob("*.py"))


def load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_the_readme_recipes_exist():
  assert {"quickstart", "unet_isbi2012", "unet_camvid"} <= {p.stem for p in RECIPES}


def test_every_registry_model_has_a_recipe():
  configs = [load(p) for p in RECIPES]
  assert {c.model.name for c in configs if c.task == "semantic"} == set(models.MODELS)
  assert {c.model.name for c in configs if c.task == "instance"} == set(instance_task.MODELS)
  assert {c.model.name for c in configs if c.task == "panoptic"} == set(panoptic_task.MODELS)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_builds(path, tmp_path):
  config = load(path)
  if config.dataset.name == "folder":  # configs/folder.py takes the folders and classes from flags
    _fill_folder_keys(config, tmp_path)
  if config.dataset.name in ("coco", "instance_folder"):  # instance data are read (prepared) to know the classes
    _fill_instance_keys(config, tmp_path)
  if config.dataset.name == "coco_panoptic":
    _fill_coco_panoptic_keys(config, tmp_path)
  config_lib.validate(config)
  config.num_train_steps, config.batch_size, config.seed = 7, 8, 123
  if config.task == "semantic":
    config.dataset.manual_dir = "/some/dir"
  with pytest.raises(AttributeError):  # locked: a misspelt key is an error, not a silent no-op
    config.num_train_step = 7
  exp = experiment.build(config)
  state = exp.abstract_state()
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  assert n_params > 0
  assert state.step.shape == ()


def _fill_instance_keys(config, root):
  """A one-image COCO-format dataset / Penn-Fudan-style folder standing in for the recipe's data."""
  import json  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from tests.data.instance.common import write_folder  # pylint: disable=import-outside-toplevel
  config.dataset.data_dir = str(root / "tfds")
  config.dataset.manual_dir = None
  if config.dataset.name == "instance_folder":
    write_folder(root)
    config.instance.dataset.images_dir = str(root / "PNGImages")
    config.instance.dataset.masks_dir = str(root / "PedMasks")
    return
  (root / "images").mkdir()
  Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / "images" / "a.png")
  ann = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 24}],
         "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "dog"}],
         "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "iscrowd": 0, "area": 30.0,
                          "bbox": [2, 3, 6, 5], "segmentation": [[2, 3, 8, 3, 8, 8, 2, 8]]}]}
  (root / "instances.json").write_text(json.dumps(ann))
  pair = (str(root / "images"), str(root / "instances.json"))
  config.instance.dataset.splits = {"train": pair, "validation": pair}


def _fill_coco_panoptic_keys(config, root):
  """A one-image COCO panoptic dataset (a thing and a stuff segment) standing in for the recipe's data."""
  import json  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from segjax.data.panoptic import features  # pylint: disable=import-outside-toplevel
  config.dataset.data_dir = str(root / "tfds")
  config.dataset.manual_dir = None
  for sub in ("images", "panoptic"):
    (root / sub).mkdir()
  Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / "images" / "a.png")
  ids = np.full((20, 24), 2, np.int64)
  ids[3:9, 4:10] = 1
  Image.fromarray(features.id2rgb(ids)).save(root / "panoptic" / "a.png")
  ann = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 24}],
         "categories": [{"id": 1, "name": "person", "isthing": 1}, {"id": 90, "name": "sky", "isthing": 0}],
         "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": [
             {"id": 1, "category_id": 1, "iscrowd": 0, "area": 36, "bbox": [4, 3, 6, 6]},
             {"id": 2, "category_id": 90, "iscrowd": 0, "area": 444, "bbox": [0, 0, 24, 20]}]}]}
  (root / "panoptic.json").write_text(json.dumps(ann))
  split = (str(root / "images"), str(root / "panoptic.json"), str(root / "panoptic"))
  config.panoptic.dataset.splits = {"train": split, "validation": split}


def _fill_folder_keys(config, root):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  for sub in ("images", "masks"):
    (root / sub).mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.png")
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "a.png")
  folder = config.dataset.folder
  folder.images_dir, folder.masks_dir, folder.class_names = str(root / "images"), str(root / "masks"), ("a", "b")


def test_validate_names_key_value_and_fix():
  config = load(REPO / "configs" / "quickstart.py")
  config.model.name = "unet2"
  with pytest.raises(ValueError, match=r"config.model.name='unet2': choose one of \[.*'unet', 'unet_valid'"):
    config_lib.validate(config)
  config = load(REPO / "configs" / "quickstart.py")
  config.loss.class_weights = (1.0, 2.0)
  with pytest.raises(ValueError, match="one weight per class"):
    config_lib.validate(config)


# ------------------------------------------------------------------------------------------------ presets
# A recipe for a dataset with a preset (config.use_dataset) starts from it and sets only what differs, so that a fix
# to the preset (its schedule, its augmentation) reaches every recipe. A hand copy drifts: configs/unet_isbi2012.py
# once copied the ISBI preset without the paper's augmentation.


def flat_items(tree):
  """{"dataset.crop_size": (256, 256), ...} of a ConfigDict's to_dict()."""
  return traverse_util.flatten_dict(tree, sep=".")


def preset(name):
  """The preset's effective config (defaults + use_dataset), or None for a dataset without one."""
  try:
    return config_lib.use_dataset(config_lib.default_config(), name)
  except ValueError:
    return None


def preset_keys(name) -> set[str]:
  """The keys use_dataset(name) sets, whatever their value (also those it sets to the default's): recorded from
  ConfigDict.__setitem__ (which attribute assignment and update() go through) while it runs."""
  config, paths, seen = config_lib.default_config(), {}, []

  def blocks(node, prefix):
    paths[id(node)] = prefix
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        blocks(value, f"{prefix}{key}.")

  blocks(config, "")
  setitem = ml_collections.ConfigDict.__setitem__

  def record(self, key, value):
    seen.append((id(self), key))
    setitem(self, key, value)

  ml_collections.ConfigDict.__setitem__ = record
  try:
    config_lib.use_dataset(config, name)
  finally:
    ml_collections.ConfigDict.__setitem__ = setitem
  keys = {paths[block] + key for block, key in seen}
  flat = flat_items(config.to_dict())
  return {k for k in flat if overridden(k, keys)}  # a whole block set: each of its keys


def _dotted(node) -> str | None:
  """"dataset.crop_size" for the target `c.dataset.crop_size` (any root name), None for anything else."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  return ".".join(reversed(parts)) if isinstance(node, ast.Name) and parts else None


def explicit_keys(path) -> set[str]:
  """The config keys a recipe file sets itself: `c.a.b = ...` (also in tuple targets and augmented assignments),
  `c.a = ...` (the whole block) and `c.a.update(dict(k=...))` / `c.a.update({"k": ...})` (a.k; the whole block
  for any other update argument); a recipe built on another (`load_recipe(resolve_recipe("name"))`) also sets
  the keys that one sets."""
  keys = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for target in targets:
        for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
          keys.add(_dotted(t))
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
      block, (arg,) = _dotted(node.func.value), node.args
      if isinstance(arg, ast.Call) and getattr(arg.func, "id", None) == "dict":
        keys.update(f"{block}.{kw.arg}" for kw in arg.keywords)
      elif isinstance(arg, ast.Dict) and all(isinstance(k, ast.Constant) for k in arg.keys):
        keys.update(f"{block}.{k.value}" for k in arg.keys)
      else:
        keys.add(block)
    elif (isinstance(node, ast.Call) and "resolve_recipe" in (getattr(node.func, "attr", None),
                                                              getattr(node.func, "id", None))
          and isinstance(node.args[0], ast.Constant)):
      keys |= explicit_keys(pathlib.Path(config_lib.resolve_recipe(node.args[0].value)))
  keys.discard(None)
  return keys


def overridden(key: str, explicit: set[str]) -> bool:
  return any(key == e or key.startswith(e + ".") for e in explicit)


PRESET_RECIPES = [p for p in RECIPES if preset(load(p).dataset.name) is not None]


def test_the_recipe_key_scanner_sees_every_form_of_override(tmp_path):
  recipe = tmp_path / "recipe.py"
  recipe.write_text("def get_config():\n  c = f()\n  c.a.b = 1\n  c.d, c.e.f = 2, 3\n  c.g += 1\n  c.model = m()\n"
                    "  c.augment.update(dict(x=1, y=2))\n  c.h.update({'z': 1})\n  c.i.update(other)\n  return c\n")
  assert explicit_keys(recipe) == {"a.b", "d", "e.f", "g", "model", "augment.x", "augment.y", "h.z", "i"}
  assert overridden("model.depth", {"model"}) and not overridden("model_x", {"model"})
  derived = tmp_path / "derived.py"
  derived.write_text("def get_config():\n  c = load_recipe(resolve_recipe('unet_camvid_cpu'))\n  c.model = m()\n"
                     "  return c\n")
  assert explicit_keys(derived) == explicit_keys(REPO / "configs" / "unet_camvid_cpu.py") | {"model"}
  # use_dataset's keys include those it sets to the default's value (camvid's log_every_steps is 50 either way).
  assert {"log_every_steps", "dataset.train_split", "dataset.crop_size"} <= preset_keys("camvid")
  assert {"augment.vflip_prob", "augment.elastic_sigma"} <= preset_keys("isbi2012")
  assert "augment.vflip_prob" not in preset_keys("camvid") and "model.depth" not in preset_keys("isbi2012")


def test_recipes_with_a_preset_cover_every_such_dataset():
  assert {load(p).dataset.name for p in PRESET_RECIPES} >= {"shapes", "camvid", "isbi2012"}


@pytest.mark.parametrize("path", PRESET_RECIPES, ids=lambda p: p.stem)
def test_recipe_keeps_the_presets_values_unless_it_overrides_them(path):
  config = flat_items(load(path).to_dict())
  name = config["dataset.name"]
  ours, explicit = flat_items(preset(name).to_dict()), explicit_keys(path)
  drifted = {k: (config[k], ours[k]) for k in sorted(preset_keys(name)) if not overridden(k, explicit)
             and config[k] != ours[k]}
  assert not drifted, (f"{path.name}: (recipe, preset) values of keys use_dataset({name!r}) sets and the recipe does "
                       f"not override: start from config_lib.use_dataset(...): {drifted}")


@pytest.mark.parametrize("path", PRESET_RECIPES, ids=lambda p: p.stem)
def test_recipe_does_not_restate_the_preset(path):
  """A recipe line that sets a preset key (or any dataset/augment key) to the preset's own value is a copy that
  would not follow a fix to the preset."""
  config = flat_items(load(path).to_dict())
  name = config["dataset.name"]
  ours, keys = flat_items(preset(name).to_dict()), preset_keys(name)
  restated = sorted(k for k in explicit_keys(path) if k in ours and k in config and config[k] == ours[k]
                    and (k in keys or k.startswith(("dataset.", "augment."))))
  assert not restated, f"{path.name} sets these keys to use_dataset({name!r})'s own values: {restated}"


@pytest.mark.parametrize("path", [p for p in RECIPES if load(p).dataset.name == "isbi2012"], ids=lambda p: p.stem)
def test_isbi_recipes_train_with_the_papers_augmentation(path):
  augment = load(path).augment.to_dict()
  assert augment == preset("isbi2012").augment.to_dict()
  # The U-Net paper's: rotations, both flips, elastic deformation, gray-value changes.
  assert augment["rotate_degrees"] > 0 and augment["vflip_prob"] > 0 and augment["hflip_prob"] > 0
  assert augment["elastic_sigma"] > 0 and augment["brightness"] > 0 and augment["contrast"] > 0
