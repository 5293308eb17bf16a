"""One training run per workdir: DIR/train.lock, created atomically, names the run holding it.

Two train.py processes on one workdir would interleave metrics.jsonl and race orbax over the same step
directories. The lock file is created with O_CREAT | O_EXCL (atomic, also on NFS v3+) and holds the holder's host,
pid and start time as JSON. A second run refuses at once, naming them. A lock left by a process that no longer
exists on this host (killed with SIGKILL, or the machine rebooted) is stale and taken over, saying so; a lock of
another host cannot be checked from here, so the message says how to remove it by hand. Multi-host: process 0
alone takes it (the others run the same command on other hosts).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import socket
import time

import jax

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"


class WorkdirInUseError(OSError):
  """Another training run holds the workdir's lock; the message names it and what to do."""


def _process_start(pid: int) -> float | None:
  """When process `pid` started (seconds since the epoch), where Linux's /proc tells; else None."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks since boot
    boot = next(int(line.split()[1]) for line in pathlib.Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError, StopIteration):
    return None


def _alive(pid: int, since: float) -> bool:
  """Whether the process `pid` that took a lock at time `since` still runs (on this host)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, another user's
    pass
  started = _process_start(pid)
  # A process with that pid that started after the lock was taken is another one (the pid was reused).
  return started is None or started <= since + 1.0


class WorkdirLock:
  """Context manager holding DIR/train.lock for the duration of a training run (process 0 only)."""

  def __init__(self, workdir: str | pathlib.Path):
    self.path = pathlib.Path(workdir).absolute() / LOCK_NAME
    self.held = False
    self._record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                    "started_text": time.strftime("%Y-%m-%d %H:%M:%S %Z")}

  def __enter__(self) -> "WorkdirLock":
    if jax.process_index() == 0:
      self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    """Takes the lock, or a stale one of a dead process of this host.

    Raises:
      WorkdirInUseError: a live run (or one on another host) holds it.
    """
    for _ in range(10):  # another process may take or drop it between two looks
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._read()
        if holder is None:
          continue  # just created, not yet written, or just released: look again
        if self._stale(holder):
          self._take_over(holder)
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(self._record, f)
      self.held = True
      return
    raise WorkdirInUseError(f"Could not take {self.path}: other processes keep taking and dropping it.")

  def _read(self) -> dict | None:
    text = None
    for _ in range(20):  # a holder writes its record right after creating the file
      try:
        text = self.path.read_text()
      except FileNotFoundError:
        return None
      try:
        return json.loads(text)
      except ValueError:
        time.sleep(0.05)
    return {"host": "?", "pid": "?", "started_text": "?", "unreadable": text}

  def _stale(self, holder: dict) -> bool:
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
      if not _alive(holder["pid"], float(holder.get("started", 0))):
        return True
    where = "this host" if holder.get("host") == socket.gethostname() else f"host {holder.get('host')}"
    raise WorkdirInUseError(
        f"{self.path.parent} is in use by another training run: pid {holder.get('pid')} on {where}, started "
        f"{holder.get('started_text')} (lock file {self.path}). Two runs in one workdir would mix their "
        "checkpoints and metrics. Wait for it to finish, stop it (Ctrl-C or `kill <pid>` saves its step), or use "
        "another --workdir. If that process no longer runs (its host crashed), delete the lock file.")

  def _take_over(self, holder: dict) -> None:
    # Rename, not unlink: of two processes taking over at once only one rename succeeds, and the content
    # check catches the case where the file renamed is no longer the stale one.
    moved = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
    try:
      os.rename(self.path, moved)
    except FileNotFoundError:
      return
    try:
      if json.loads(moved.read_text()) != holder:  # someone else's fresh lock: put it back
        os.rename(moved, self.path)
        return
    except ValueError:
      pass
    moved.unlink()
    log.warning("Took over %s: its holder, pid %s on this host (started %s), no longer runs.", self.path,
                holder.get("pid"), holder.get("started_text"))

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    try:
      if json.loads(self.path.read_text()) == self._record:
        self.path.unlink()
    except (OSError, ValueError):
      pass
