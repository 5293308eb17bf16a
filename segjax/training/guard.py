"""The non-finite and divergence guard of the training loop (`config.on_nonfinite`, `config.divergence_factor`)."""

from __future__ import annotations

import collections
import logging
from typing import Sequence

import jax
import ml_collections
import numpy as np

from segjax import checkpoint as checkpoint_lib

log = logging.getLogger(__name__)


class NonFiniteGuard:
  """Reads each step's `finite` flag and loss one step late (so the host never waits on the step it just
  launched) and stops training on a non-finite step (or counts it, as `config.on_nonfinite` says) or on a loss
  that explodes: over `config.divergence_factor` x the median of the last finite losses. The train step itself
  never applies a non-finite update.

  The loss of step s is computed on the weights after step s-1, so the checkpoint of step c is verified good only
  once the loss of step c+1 was seen fine: finite and within sqrt(divergence_factor) x the median. The guard tells
  the Checkpointer, whose retention then keeps it. A loss between the two bounds neither stops training nor
  verifies anything: it is suspect, and where a divergence follows, its run-up counts as bad. On a stop at step s,
  the checkpoints after step f-2 (f: the first suspect step of the run-up, else s), whose weights gave the bad
  losses, are moved aside, and the message names the newest good step and the command that resumes from it.
  """

  HISTORY = 50  # finite losses the median is taken over
  MIN_HISTORY = 3  # losses needed before the divergence check starts

  def __init__(self, config: ml_collections.ConfigDict, ckpt: checkpoint_lib.Checkpointer, start: int = 0,
               history: Sequence[float] = ()):
    self.mode, self.factor, self.ckpt = config.on_nonfinite, config.divergence_factor, ckpt
    self.learning_rate = config.optimizer.learning_rate
    self.pending: tuple[int, jax.Array, jax.Array] | None = None
    # A resumed run continues the history of the run it resumes (MetricsWriter.losses_up_to).
    self.losses = collections.deque((x for x in history if np.isfinite(x)), maxlen=self.HISTORY)
    self.skipped = 0
    self.suspect_since: int | None = None  # first step of the current run of suspect losses
    ckpt.protect_up_to(start)  # the checkpoint resumed from is the good one until a newer one proves good

  def push(self, step: int, train_metrics: dict[str, jax.Array]) -> None:
    self.flush()
    self.pending = (step, train_metrics["finite"], train_metrics["loss"])

  def flush(self) -> None:
    """Checks the step pushed last. Call it before saving: a refused step must never be saved.

    Raises:
      FloatingPointError: that step's loss was not finite (on_nonfinite="stop") or exploded.
    """
    if self.pending is None:
      return
    step, finite, loss = self.pending
    self.pending = None
    finite, loss = jax.device_get((finite, loss))
    if bool(finite):
      loss = float(loss)
      if self.factor and len(self.losses) >= self.MIN_HISTORY:
        median = float(np.median(self.losses))
        if loss > self.factor * median:
          self._stop(step, f"Step {step}: the loss {loss:.3g} is over {self.factor:g} x the median {median:.3g} of "
                     f"the last {len(self.losses)} good steps' losses (config.divergence_factor): training diverged, "
                     "so it stops.", nonfinite=False)
        if loss > self.factor ** 0.5 * median:
          self.suspect_since = self.suspect_since or step
          return
      self.losses.append(loss)
      self.suspect_since = None
      self.ckpt.protect_up_to(step - 1)
      return
    self.skipped += 1
    if self.mode == "skip":
      log.warning("Step %d: non-finite loss or gradients; the update was skipped (%d so far).", step,
                  self.skipped)
      return
    self._stop(step, f"Step {step}: the loss or the gradients are not finite (NaN or inf), so training stops. "
               f"The update of step {step} was not applied and is not saved.", nonfinite=True)

  def _stop(self, step: int, what: str, nonfinite: bool) -> None:
    self.ckpt.wait()
    # The loss of step f was computed on the weights after step f - 1: those are the first bad ones.
    last_good = (self.suspect_since or step) - 2
    steps = self.ckpt.all_steps()
    good = max((s for s in steps if s <= last_good), default=None)
    bad = [s for s in steps if s > last_good]
    message = what
    if bad:
      aside = self.ckpt.set_aside(bad, "diverged")
      message += (f" The checkpoint{'s' if len(bad) > 1 else ''} of step{'s' if len(bad) > 1 else ''} "
                  f"{', '.join(map(str, bad))} (weights from step {last_good + 1} on, which gave that loss) "
                  f"{'were' if len(bad) > 1 else 'was'} moved to {aside} (nothing deleted).")
    # A tenth: a run that blew up by orders of magnitude diverged again 3 steps after resuming with half (tests).
    lower = f"--config.optimizer.learning_rate={self.learning_rate / 10:g}"
    if good is not None:
      message += (f" The newest good checkpoint is step {good} in {self.ckpt.directory}. To go on from it, rerun "
                  f"with --config.resume_from_step={good} {lower} (a tenth of the current)")
    else:
      message += f" No good checkpoint remains: rerun with {lower} (a tenth of the current) to start again from step 0"
    message += ", and/or set --config.optimizer.grad_clip_norm (e.g. 1.0)"
    if nonfinite:
      message += "; or check the data, or set --config.on_nonfinite=skip to skip such steps and go on"
    raise FloatingPointError(message + ".")
