"""segjax installs where JAX does, and a wheel works outside a clone.

- Build requirements: the oneDNN headers (Linux x86-64 wheels only) are asked for on Linux x86-64 only, so the
  build needs nothing but setuptools on macOS, Linux aarch64 and Windows (pyproject markers, evaluated here).
- Resolution: `pip install --dry-run --only-binary=:all: --platform ...` of segjax's runtime dependencies (the
  ranges of pyproject.toml, and the exact set of constraints.txt) succeeds for macOS arm64 and Linux aarch64,
  Python 3.11 and 3.12. Needs the package index; skipped, saying so, without it. pip evaluates the markers of
  transitive requirements against this machine, not the target, which is why Windows is not checked this way
  (orbax's `uvloop; platform_system != "Windows"` is asked for a win_amd64 wheel, which does not exist);
  segjax's own markers are evaluated for the target before pip sees them.
- Wheel (slow): `pip wheel` of the clone, installed into a fresh venv outside it, runs `segjax-train
  --config=quickstart` for 3 steps and `segjax-eval` on the result, from a folder outside the clone.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import urllib.request

from packaging.requirements import Requirement
import pytest

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONSTRAINTS = REPO / "constraints.txt"

# Marker environments of the targets (PEP 508 names). pip's --platform takes one tag per flag and does not expand
# manylinux_2_28 to older glibc versions (jaxlib's aarch64 wheels are manylinux_2_27, array-record's 2_17),
# so Linux lists them all; a macOS tag covers the older macOS versions (scipy needs macOS 14 on arm64).
TARGETS = {
    "macos-arm64": ({"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64",
                     "os_name": "posix"}, ["macosx_14_0_arm64"]),
    "linux-aarch64": ({"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64",
                       "os_name": "posix"}, ["manylinux2014_aarch64"] + [f"manylinux_2_{v}_aarch64"
                                                                         for v in range(17, 29)]),
    "windows-amd64": ({"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64",
                       "os_name": "nt"}, ["win_amd64"]),
    "linux-x86_64": ({"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                      "os_name": "posix"}, ["manylinux2014_x86_64"] + [f"manylinux_2_{v}_x86_64"
                                                                      for v in range(17, 29)]),
}
# Dependencies published as source only: pure Python, so a wheel built here installs anywhere (tfds needs it).
SDIST_ONLY = ["promise"]


def _environment(target: str, python: str) -> dict[str, str]:
  return dict(TARGETS[target][0], python_version=python, python_full_version=f"{python}.0",
              implementation_name="cpython", platform_python_implementation="CPython", extra="")


def _for_target(requirements: list[str], target: str, python: str, extra: str = "") -> list[str]:
  """`requirements` that apply on the target, without their markers (pip would evaluate them on this machine)."""
  env = dict(_environment(target, python), extra=extra)
  kept = []
  for text in requirements:
    r = Requirement(text)
    if r.marker is None or r.marker.evaluate(env):
      r.marker = None
      kept.append(str(r))
  return kept


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("python", ["3.11", "3.12"])
def test_markers_ask_for_onednn_on_linux_x86_64_only(target, python):
  build = _for_target(PYPROJECT["build-system"]["requires"], target, python)
  cpu = _for_target(PYPROJECT["project"]["optional-dependencies"]["cpu"], target, python, extra="cpu")
  runtime = [Requirement(r).name for r in _for_target(PYPROJECT["project"]["dependencies"], target, python)]
  if target == "linux-x86_64":
    assert any(r.startswith("onednn-devel-cpu-gomp==") for r in build), build
    assert [Requirement(r).name for r in cpu] == ["onednn-cpu-gomp"]
  else:
    assert [Requirement(r).name for r in build] == ["setuptools"], build
    assert cpu == []
  assert ("array-record" in runtime) == (target != "windows-amd64")  # no Windows wheels exist
  assert {"jax", "jaxlib", "flax", "grain", "tensorflow-datasets"} <= set(runtime)


def test_runtime_dependencies_are_ranges_and_constraints_pin_them():
  """A library declares ranges (installing it must not downgrade numpy or jax); constraints.txt holds the exact
  versions, one for every runtime dependency."""
  pinned = {}
  for line in CONSTRAINTS.read_text().splitlines():
    if line.strip() and not line.startswith("#"):
      r = Requirement(line)
      assert len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==", line
      pinned[r.name.lower().replace("_", "-")] = next(iter(r.specifier)).version
  for text in PYPROJECT["project"]["dependencies"]:
    r = Requirement(text)
    assert all(s.operator != "==" for s in r.specifier), f"{text}: declare a range, pin in constraints.txt"
    name = r.name.lower().replace("_", "-")
    assert name in pinned, f"{r.name} is not pinned in constraints.txt"
    assert r.specifier.contains(pinned[name]), f"constraints.txt pins {r.name}=={pinned[name]} outside {text}"


def _index_reachable() -> str:
  """'' when the package index answers, else why not."""
  url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/") + "/pip/"
  try:
    with urllib.request.urlopen(url, timeout=10):
      return ""
  except Exception as e:  # pylint: disable=broad-except
    return f"the package index {url} is unreachable ({e})"


@pytest.fixture(scope="module")
def sdist_wheels(tmp_path_factory):
  """Wheels built here of the source-only dependencies, for --find-links."""
  why_not = _index_reachable()
  if why_not:
    pytest.skip(f"{why_not}: the dry-run resolutions need it")
  folder = tmp_path_factory.mktemp("sdist_wheels")
  proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-c", str(CONSTRAINTS),
                         "-w", str(folder), *SDIST_ONLY], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  return folder


@pytest.mark.parametrize("target", ["macos-arm64", "linux-aarch64"])
@pytest.mark.parametrize("python", ["3.11", "3.12"])
@pytest.mark.parametrize("pinned", [False, True], ids=["ranges", "constraints"])
def test_dependencies_resolve_on_other_platforms(target, python, pinned, sdist_wheels, tmp_path):
  requirements = tmp_path / "requirements.txt"
  requirements.write_text("\n".join(_for_target(PYPROJECT["project"]["dependencies"], target, python)) + "\n")
  command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
             "--python-version", python, "--find-links", str(sdist_wheels), "-r", str(requirements)]
  for tag in TARGETS[target][1]:
    command += ["--platform", tag]
  if pinned:
    command += ["-c", str(CONSTRAINTS)]
  proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  assert "Would install" in proc.stdout and " jaxlib-0.10." in proc.stdout, proc.stdout[-2000:]


@pytest.mark.slow
def test_wheel_installed_outside_the_clone_trains_and_evaluates(tmp_path):
  """The wheel carries the commands and the recipes: a fresh venv outside the clone, whose dependencies come from
  this one's site-packages (a .pth file: no download; the .pth files there, this clone's editable segjax among
  them, are not processed), runs segjax-train --config=quickstart and segjax-eval from a folder outside the clone."""
  wheels, venv, cwd = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
  cwd.mkdir()
  # One CPU device, as a user's machine has (conftest simulates 8 for the rest of the suite); nothing of the clone.
  # Nor CI's SEGJAX_REQUIRE_ONEDNN=1: this wheel is built without the library on purpose.
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("PYTHON") and k not in ("XLA_FLAGS", "SEGJAX_REQUIRE_ONEDNN")}
  # Built from a copy: an in-tree build leaves build/lib behind, whose stale modules later wheels would carry.
  source = tmp_path / "source"
  shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "build", "runs", "tmp", "workdir*", "*.egg-info",
                                                              "__pycache__", "*.so"))
  # The library is a CPU speed-up, not what this test is about: skipping it saves a minute of compiling.
  proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                         str(wheels), str(source)], env={**env, "SEGJAX_BUILD_ONEDNN": "0"}, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  wheel, = wheels.glob("segjax-*.whl")
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
  python = venv / "bin" / "python"
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
  (pathlib.Path(site) / "segjax_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  proc = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  where = subprocess.run([python, "-c", "import segjax, segjax.config as c; print(segjax.__file__); "
                          "print(c.resolve_recipe('quickstart'))"], cwd=cwd, env=env, capture_output=True,
                         text=True, check=True).stdout.split()
  assert all(pathlib.Path(p).is_relative_to(venv) for p in where), where  # the wheel's segjax and recipes

  workdir, data = tmp_path / "run", tmp_path / "tfds"
  env = {**env, "JAX_PLATFORMS": "cpu"}
  train = subprocess.run([venv / "bin" / "segjax-train", "--config=quickstart", f"--workdir={workdir}",
                          "--config.num_train_steps=3", f"--config.dataset.data_dir={data}"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=600)
  assert train.returncode == 0, train.stderr[-3000:]
  assert (workdir / "checkpoints").is_dir() and (workdir / "metrics.jsonl").is_file()
  # Built without the oneDNN library: a single-CPU run says once that it trains on XLA's kernels, and why.
  assert train.stderr.count("Convolutions run on XLA's kernels") == 1, train.stderr[-3000:]
  evaluate = subprocess.run([venv / "bin" / "segjax-eval", "--config=quickstart", f"--workdir={workdir}",
                             "--split=test[:8]", f"--config.dataset.data_dir={data}"], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  assert list((workdir / "eval").glob("*/metrics.json")), list(workdir.rglob("*"))
  for folder in (venv, source):  # many files; pytest keeps the tmp folders of recent runs
    shutil.rmtree(folder)


def test_auto_backend_says_once_that_it_uses_xla(monkeypatch, caplog):
  """Without the oneDNN library (no compiler at install time, another platform), "auto" on one CPU device uses
  XLA's kernels and warns once per process, with the reason; not on several devices, nor for "xla"."""
  from segjax.ops import conv  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(conv, "available", lambda: (False, "the library was not built (no C++ compiler)"))
  monkeypatch.setattr(conv, "_fallback_warned", False)
  with caplog.at_level("WARNING", logger="segjax.ops.conv"):
    assert conv.resolve_backend("auto", num_devices=8, platform="cpu") == "xla"
    assert conv.resolve_backend("xla", num_devices=1, platform="cpu") == "xla"
    assert not caplog.records
    for _ in range(3):
      assert conv.resolve_backend("auto", num_devices=1, platform="cpu") == "xla"
  assert len(caplog.records) == 1, caplog.records
  assert "XLA's kernels" in caplog.text and "no C++ compiler" in caplog.text
