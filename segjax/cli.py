"""What the command-line entry points share: a user error is one message and a non-zero exit, not a traceback.

A user error is anything segjax raises about the user's input or environment, with a message that already names
the file or key, the value and the fix: ValueError, OSError (missing files, a full disk: CheckpointSaveError),
FloatingPointError (training stopped on a non-finite or exploding loss). Other exceptions are bugs and keep
their traceback. `SEGJAX_TRACEBACK=1` shows the traceback of user errors too, for debugging.

Orbax's background threads log a failed write with tracebacks before segjax hears of it; the CLIs drop those
(and the "Event loop is closed" aftermath) unless SEGJAX_TRACEBACK is set: the failure still arrives as an
exception and is reported once.

Flag parsing gets the same treatment: a misspelt recipe key (`--config.batchsize=8`) prints ml_collections'
suggestion as text instead of an escaped repr inside three chained tracebacks, and a recipe that does not load
says why. `--config` takes a recipe file or the name of a recipe shipped with segjax (`--config=quickstart`,
segjax.config.resolve_recipe), so the installed commands (segjax-train, ...) work outside a clone.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging as absl_logging
import tqdm

TRACEBACK_ENV = "SEGJAX_TRACEBACK"
USER_ERRORS = (ValueError, OSError, FloatingPointError)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # what a shell reports for a process stopped by Ctrl-C


def _show_traceback() -> bool:
  return os.environ.get(TRACEBACK_ENV, "").lower() not in ("", "0", "false", "no")


def _fail(program: str, message: str, hint: bool = True) -> None:
  hint = f" (set {TRACEBACK_ENV}=1 to see the traceback)" if hint and not _show_traceback() else ""
  sys.stderr.write(f"{program}: error: {message.strip()}{hint}\n")
  sys.exit(EXIT_USER_ERROR)


def _chain(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def unknown_key_message(error: BaseException, argv: list[str]) -> str | None:
  """The text of a misspelt recipe key, or None if `error` is not one.

  ml_collections raises KeyError("'batchsize'\\nDid you mean \\"batch_size\\" ...") inside an AttributeError,
  whose str() is the repr of that text.
  """
  for e in _chain(error):
    if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) and "Did you mean" in e.args[0]:
      key, _, suggestion = e.args[0].partition("\n")
      key = key.strip("'\"")
      given = next((a for a in argv[1:] if a.startswith("--config.") and key in a.split("=", 1)[0]), None)
      where = f" ({given})" if given else ""
      return f"the recipe has no key {key!r}{where}. {suggestion.strip()}"
  return None


def _recipe_message(error: BaseException, argv: list[str]) -> str | None:
  """ml_collections' failure to load a --config recipe file, in one line; None for other errors."""
  text = str(error)
  if "Failed loading config file" not in text:
    return None
  given = next((a for a in sys.argv[1:] if a.startswith("--config=")), "--config")
  reason = text.strip().splitlines()[-1].strip()
  return (f"{given} could not be loaded ({reason}; from {os.getcwd()}): give the path of a recipe file, e.g. "
          f"--config=configs/quickstart.py, or the name of a recipe shipped with segjax ({_recipe_names()}).")


def _recipe_names() -> str:
  from segjax import config as config_lib  # pylint: disable=import-outside-toplevel

  found = config_lib.resolve_recipe("quickstart")
  if not os.path.isfile(found):
    return "none found: reinstall segjax"
  return ", ".join(sorted(name[:-3] for name in os.listdir(os.path.dirname(found))
                          if name.endswith(".py") and not name.startswith("_")))


def resolve_config_args(argv: list[str]) -> list[str]:
  """`argv` with the value of --config resolved to a recipe file (absl's config flag takes a path): a bare name,
  `--config=quickstart` or `--config=quickstart:ARGS`, becomes the shipped recipe's path; paths stay as given."""
  from segjax import config as config_lib  # pylint: disable=import-outside-toplevel

  def resolve(value: str) -> str:
    name, colon, args = value.partition(":")
    resolved = config_lib.resolve_recipe(name) if name else name
    return resolved + colon + args if resolved != name else value

  out = list(argv)
  for i in range(1, len(out)):
    if out[i].startswith("--config="):
      out[i] = "--config=" + resolve(out[i][len("--config="):])
    elif out[i] == "--config" and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
  return out


class _BackgroundNoise(logging.Filter):
  """Drops the errors orbax's background threads and asyncio log with tracebacks when a checkpoint write or read
  fails (dozens of lines for one full disk). The failure itself reaches segjax as an exception, which is reported
  as one message (CheckpointSaveError, or a damaged checkpoint's fallback)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    return not (record.name == "asyncio" or f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


def _orbax_aftermath(unraisable) -> bool:
  """Whether an unraisable exception is orbax's aftermath of a failed write or read: its abandoned coroutines and
  tensorstore callbacks report "Event loop is closed" and the same I/O error, hundreds of times."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    return True
  return "Encountered error while reading array index" in str(error) or any(
      name in repr(unraisable.object) for name in ("orbax", "tensorstore", "_read_array_index"))


def quiet_orbax_aftermath() -> None:
  """Drops `_orbax_aftermath` unraisables (7,600 lines of stderr for one truncated checkpoint file, saying nothing
  the one-line reason does not); other unraisable exceptions still reach the previous hook. Installed once, by the
  CLIs at start and by a checkpoint restore that failed (library use)."""
  previous = sys.unraisablehook
  if getattr(previous, "_segjax_quiet", False):
    return

  def hook(unraisable):
    if not _orbax_aftermath(unraisable):
      previous(unraisable)

  hook._segjax_quiet = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def _silence_background_noise() -> None:
  noise = _BackgroundNoise()
  for name in ("absl", "asyncio"):
    logging.getLogger(name).addFilter(noise)
  quiet_orbax_aftermath()


class _ConsoleHandler(logging.Handler):
  """segjax's log records as terminal lines that do not tear the progress bar (tqdm.write): INFO as the bare
  message, WARNING and above prefixed with their level."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      message = record.getMessage()
      if record.exc_info:
        message += "\n" + logging.Formatter().formatException(record.exc_info)
      if record.levelno != logging.INFO:
        message = f"{record.levelname}: {message}"
      tqdm.tqdm.write(message, file=sys.stderr)
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


def configure_logging() -> None:
  """Console logging of the CLIs, honouring absl's --verbosity.

  Without --verbosity, segjax's own events (resumed from step N, dataset prepared, convolution backend, warnings)
  show at INFO and third-party libraries (absl, jax, orbax) only from WARNING on. With --verbosity (absl's: -1
  WARNING, 0 INFO, 1 DEBUG, ...), segjax and the libraries both follow it.
  """
  own = logging.getLogger("segjax")
  if not any(isinstance(h, _ConsoleHandler) for h in own.handlers):
    own.addHandler(_ConsoleHandler())
  own.propagate = False  # printed once, by the handler above, not again by absl's on the root logger
  if flags.FLAGS["verbosity"].present:
    own.setLevel(logging.NOTSET)  # the root logger's level, which absl sets from --verbosity
  else:
    absl_logging.set_verbosity(absl_logging.WARNING)
    own.setLevel(logging.INFO)


def _parse_flags(argv: list[str]) -> list[str]:
  program = os.path.basename(argv[0]) if argv else "segjax"
  try:
    return flags.FLAGS(resolve_config_args(argv))
  except flags.Error as e:
    _fail(program, f"{e}. Pass --helpshort to see the flags.", hint=False)
  except (KeyError, AttributeError) as e:
    message = unknown_key_message(e, argv)
    if message is None or _show_traceback():
      raise
    _fail(program, message, hint=False)
  except USER_ERRORS as e:  # a recipe file that does not exist or does not load
    if _show_traceback():
      raise
    _fail(program, str(e))
  raise AssertionError("unreachable")


def run(main: Callable[[list[str]], object]) -> None:
  """`absl.app.run(main)` with user errors reported as one message and exit status 2, Ctrl-C as status 130."""

  def guarded(argv):
    program = os.path.basename(argv[0]) if argv else "segjax"
    try:
      return main(argv)
    except KeyboardInterrupt:
      if _show_traceback():
        raise
      sys.stderr.write(f"{program}: interrupted (Ctrl-C).\n")
      sys.exit(EXIT_INTERRUPTED)
    except USER_ERRORS as e:
      if _show_traceback():
        raise
      _fail(program, _recipe_message(e, argv) or str(e))

  if not _show_traceback():
    _silence_background_noise()
  app.run(guarded, flags_parser=_parse_flags)
