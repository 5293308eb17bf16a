"""Stop requests: SIGTERM (what TPU VMs and most schedulers send before a kill) and Ctrl-C, on one or many hosts."""

from __future__ import annotations

import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils


class Preemption:
  """Whether the job was asked to stop (SIGTERM, what TPU VMs and most schedulers send before a kill, or Ctrl-C).

  One process: SIGTERM and SIGINT handlers set a flag (installed from the main thread only; the previous handlers
  come back on `close`); a second Ctrl-C aborts at once (KeyboardInterrupt). Several processes: JAX's
  distributed runtime already watches SIGTERM, and `reached_preemption_sync_point` makes every process stop at
  the same step, so that their checkpoint agrees.
  """

  def __init__(self):
    self.requested: str | None = None  # what asked to stop: "SIGTERM" or "Ctrl-C"
    self._previous = {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C raises KeyboardInterrupt
      sys.stderr.write("\nCtrl-C: stopping after this step and saving its checkpoint; press Ctrl-C again to abort "
                       "at once (losing the steps since the last checkpoint).\n")
    self.requested = self.requested or ("Ctrl-C" if signum == signal.SIGINT else "SIGTERM")

  @property
  def reason(self) -> str:
    return self.requested or "SIGTERM"

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}
