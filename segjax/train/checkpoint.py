"""Checkpoints with orbax: train state, data-iterator position and the recipe, saved asynchronously.

A step directory becomes visible only once orbax has finalised it (written to a temporary name, then renamed),
so a process killed mid-save leaves the previous checkpoint as the latest complete one.
"""

from __future__ import annotations

import pathlib
from typing import Any

import grain
import ml_collections
import orbax.checkpoint as ocp


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for segjax's three items: state, data, config."""

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3, async_save: bool = True):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                           create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator=None,
           config: ml_collections.ConfigDict | None = None) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items["config"] = ocp.args.JsonSave(config.to_dict())
    self.manager.save(step, args=ocp.args.Composite(**items))

  def restore(self, step: int, abstract_state: Any, data_iterator=None) -> Any:
    """Restores the state into the shardings of `abstract_state` (and the iterator in place, if given)."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items)).state

  def restore_config(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
