"""Checkpoints with orbax: train state and the recipe, saved asynchronously.

The data position needs no item of its own: the input pipeline's batch for step s is a pure function of the
recipe and s (segjax.data.pipeline.train_dataset), so the restored step is the iterator state.

A step directory becomes visible only once orbax has finalised it (written to a temporary name, then renamed),
so a process killed mid-save leaves the previous checkpoint as the latest complete one.
"""

from __future__ import annotations

import pathlib
from typing import Any

import ml_collections
import orbax.checkpoint as ocp


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
