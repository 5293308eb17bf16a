"""Checkpoints with orbax: train state and the recipe, saved asynchronously.

The data position needs no item of its own: the input pipeline's batch for step s is a pure function of the
recipe and s (segjax.data.pipeline.train_dataset), so the restored step is the iterator state.

A step directory becomes visible only once orbax has finalised it (written to a temporary name, then renamed),
so a process killed mid-save leaves the previous checkpoint as the latest complete one.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from segjax.data import datasets

log = logging.getLogger(__name__)


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for segjax's two items: state and config."""

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3, async_save: bool = True):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                           create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, config: ml_collections.ConfigDict | None = None) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    if config is not None:
      items["config"] = ocp.args.JsonSave(config.to_dict())
    self.manager.save(step, args=ocp.args.Composite(**items))

  def restore(self, step: int, abstract_state: Any) -> Any:
    """Restores the state into the shardings of `abstract_state`."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    return self.manager.restore(step, args=ocp.args.Composite(**items)).state

  def restore_config(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _classes(recipe: dict[str, Any]) -> tuple[list[str] | None, int | None]:
  """Class names and image channels a saved recipe's dataset has (None where it cannot be told)."""
  dataset = recipe.get("dataset", {})
  if dataset.get("name") == datasets.FOLDER:
    folder = dataset.get("folder", {})
    return folder.get("class_names"), folder.get("num_channels")
  spec = datasets.DATASETS.get(dataset.get("name"))
  return (list(spec.class_names), spec.num_channels) if spec else (None, None)


def check_compatible(ckpt: Checkpointer, step: int, config: ml_collections.ConfigDict, action: str) -> None:
  """Refuses to restore a checkpoint whose model or classes differ from `config`'s, saying what differs.

  Compared: every `config.model` key (architecture, widths, dtypes: what the parameters' shapes and meaning
  depend on), the class names and the image channels. Everything else (schedule, data paths, even another
  dataset with the same classes) may change between runs.

  Raises:
    ValueError: naming each differing key with both values.
  """
  try:
    saved = ckpt.restore_config(step)
  except Exception as e:  # pylint: disable=broad-except  (orbax raises several types for a missing item)
    log.warning("Checkpoint %s step %d holds no readable recipe (%s); not checking compatibility.",
                ckpt.directory, step, e)
    return
  now = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as the checkpoint stores them
  old_model, new_model = _flat(saved.get("model", {}), "model."), _flat(now["model"], "model.")
  diffs = [f"{key}: {old_model.get(key, '<absent>')!r} in the checkpoint, {new_model.get(key, '<absent>')!r} now"
           for key in sorted(set(old_model) | set(new_model)) if old_model.get(key) != new_model.get(key)]
  (old_classes, old_channels), (new_classes, new_channels) = _classes(saved), _classes(now)
  if old_classes is not None and new_classes is not None and list(old_classes) != list(new_classes):
    diffs.append(f"classes: {len(old_classes)} {list(old_classes)} in the checkpoint "
                 f"({saved['dataset']['name']}), {len(new_classes)} {list(new_classes)} now "
                 f"({now['dataset']['name']})")
  if old_channels is not None and new_channels is not None and old_channels != new_channels:
    diffs.append(f"image channels: {old_channels} in the checkpoint, {new_channels} now")
  if diffs:
    raise ValueError(
        f"Cannot {action} {ckpt.directory} at step {step}: it was trained with another model or classes. "
        + "; ".join(diffs) + ". Use the recipe it was trained with (saved with the checkpoint, see "
        "Checkpointer.restore_config) or another --workdir.")
