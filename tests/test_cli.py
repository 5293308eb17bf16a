"""segjax/cli.py: a user error on the command line is one message naming the value and the fix, exit status 2, no
traceback (unless SEGJAX_TRACEBACK=1); bugs keep theirs."""

import os
import subprocess
import sys

import pytest

from segjax import cli
from tests.conftest import REPO


def _run(*args, env=None, script="train.py"):
  env = {**{k: v for k, v in os.environ.items() if k != cli.TRACEBACK_ENV}, "PYTHONPATH": str(REPO),
         "JAX_PLATFORMS": "cpu", **(env or {})}
  return subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)


def _one_message(proc, *patterns):
  assert proc.returncode == cli.EXIT_USER_ERROR, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr
  for pattern in patterns:
    assert pattern in lines[0], lines[0]
  return lines[0]


def test_misspelt_key_prints_the_suggestion_as_text(tmp_path):
  line = _one_message(_run("--config=configs/quickstart.py", f"--workdir={tmp_path}", "--config.batchsize=8"),
                      "train.py: error: the recipe has no key 'batchsize' (--config.batchsize=8).",
                      'Did you mean "batch_size" instead of "batchsize"?')
  assert "\\n" not in line and "\\'" not in line  # text, not an escaped repr
  assert not any(tmp_path.iterdir())


def test_bad_value_missing_recipe_and_unknown_flag(tmp_path):
  _one_message(_run("--config=configs/quickstart.py", f"--workdir={tmp_path}", "--config.model.name=unet3"),
               "config.model.name='unet3': choose one of [", "(set SEGJAX_TRACEBACK=1 to see the traceback)")
  _one_message(_run("--config=configs/nope.py", f"--workdir={tmp_path}", script="eval.py"),
               "eval.py: error: --config=configs/nope.py could not be loaded", "No such file or directory",
               "e.g. --config=configs/quickstart.py")
  _one_message(_run("--config=configs/quickstart.py", f"--workdir={tmp_path}", "--bogus", script="predict.py"),
               "Unknown command line flag 'bogus'")


def test_traceback_on_request(tmp_path):
  proc = _run("--config=configs/quickstart.py", f"--workdir={tmp_path}", "--config.model.name=unet3",
              env={cli.TRACEBACK_ENV: "1"})
  assert proc.returncode != 0
  assert "Traceback (most recent call last)" in proc.stderr and "ValueError: config.model.name='unet3'" in proc.stderr


def test_bugs_keep_their_traceback(monkeypatch, capsys):
  def main(argv):
    del argv
    raise TypeError("a bug")

  monkeypatch.setattr(sys, "argv", ["prog"])
  with pytest.raises(TypeError, match="a bug"):
    cli.run(main)


def test_user_error_in_process(monkeypatch, capsys):
  def main(argv):
    del argv
    raise FileNotFoundError("--workdir=x does not exist: train first")

  monkeypatch.setattr(sys, "argv", ["prog"])
  monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
  with pytest.raises(SystemExit) as info:
    cli.run(main)
  assert info.value.code == cli.EXIT_USER_ERROR
  assert capsys.readouterr().err.startswith("prog: error: --workdir=x does not exist: train first")


def test_config_takes_a_shipped_recipe_name(tmp_path):
  """--config=quickstart is configs/quickstart.py (what a wheel installed outside a clone is given); the recipe
  loads, so the misspelt key is what fails. Paths stay as given; a name that is no recipe fails naming the
  shipped ones."""
  from segjax import config as config_lib  # pylint: disable=import-outside-toplevel

  quickstart = str(REPO / "configs" / "quickstart.py")
  assert cli.resolve_config_args(["p", "--config=quickstart", "--config", "quickstart.py:arg", "--config=x/y.py"]) \
      == ["p", f"--config={quickstart}", "--config", f"{quickstart}:arg", "--config=x/y.py"]
  assert config_lib.load_recipe("quickstart").to_dict() == config_lib.load_recipe(quickstart).to_dict()
  assert config_lib.parse_member(f"quickstart:{tmp_path}")[1:] == (str(tmp_path), None)
  _one_message(_run("--config=quickstart", f"--workdir={tmp_path}", "--config.batchsize=8"),
               "train.py: error: the recipe has no key 'batchsize'")
  _one_message(_run("--config=quickstrat", f"--workdir={tmp_path}", script="eval.py"),
               "eval.py: error: --config=quickstrat could not be loaded", "shipped with segjax (", "quickstart,")


def test_console_scripts_name_the_cli_modules():
  """pyproject's console scripts point at the package's CLI modules, which the root scripts wrap."""
  import importlib  # pylint: disable=import-outside-toplevel
  import tomllib  # pylint: disable=import-outside-toplevel

  scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
  assert sorted(scripts) == ["segjax-browse", "segjax-eval", "segjax-export", "segjax-predict", "segjax-train"]
  for name, target in scripts.items():
    module, function = target.split(":")
    assert callable(getattr(importlib.import_module(module), function)), target
    command = name.removeprefix("segjax-")
    if command != "browse":  # the four CLIs of a clone have root scripts; browse is `python -m segjax.browse`
      assert f"from segjax.apps import {command}_cli" in (REPO / f"{command}.py").read_text()
