"""The package's shape: no import cycle between modules or between folders (function-level imports included), no
module over the size a reader can hold, and tests/ mirroring segjax/.

Imports are read from the source with `ast` (every `import` statement anywhere in a module, including inside
functions; `if TYPE_CHECKING:` blocks excluded, they never run), so a lazy import that hides a cycle from Python's
import machinery is still found.
"""

import ast
import pathlib

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "segjax"
MAX_MODULE_LINES = 450
MAX_TEST_LINES = 400


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
  test = node.test
  return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
      isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: pathlib.Path, name: str, known: set[str]) -> set[str]:
  """The segjax modules `path` imports anywhere in its body."""
  tree = ast.parse(path.read_text(), str(path))
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()

  def resolve(target: str) -> str | None:
    while target and target not in known:  # `from segjax.x import name`: name may be a module or an attribute
      target = target.rpartition(".")[0]
    return target or None

  def visit(node):
    if isinstance(node, ast.If) and _is_type_checking(node):
      for child in node.orelse:
        visit(child)
      return
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("segjax"):
          found.add(resolve(alias.name))
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
      if base.startswith("segjax"):
        for alias in node.names:
          full = f"{base}.{alias.name}"
          found.add(full if full in known else resolve(base))
    for child in ast.iter_child_nodes(node):
      visit(child)

  visit(tree)
  found.discard(None)
  found.discard(name)
  return found


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  known = set(modules)
  graph = {name: _imports(path, name, known) for name, path in modules.items()}
  # Importing segjax.a.b runs segjax/a/__init__.py first; that edge is Python's, not a design choice.
  for name, deps in graph.items():
    graph[name] = {d for d in deps if not name.startswith(d + ".")}
  return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as a list of nodes, or None (iterative DFS, colours)."""
  colour, parent = {}, {}
  for root in sorted(graph):
    if root in colour:
      continue
    stack = [(root, iter(sorted(graph[root])))]
    colour[root] = 1
    while stack:
      node, children = stack[-1]
      child = next(children, None)
      if child is None:
        colour[node] = 2
        stack.pop()
        continue
      if colour.get(child) == 1:
        path = [node]
        while path[-1] != child:
          path.append(parent[path[-1]])
        return path[::-1] + [child]
      if child not in colour:
        colour[child], parent[child] = 1, node
        stack.append((child, iter(sorted(graph.get(child, ())))))
  return None


def _folder(module: str) -> str:
  """A module's node in the folder graph: its subpackage (segjax.data, segjax.training, ...), or the module itself
  for the top-level modules of segjax/."""
  parts = module.split(".")
  return ".".join(parts[:2])


def test_cycle_finder_finds_a_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) in (["a", "b", "c", "a"], ["b", "c", "a", "b"],
                                                                      ["c", "a", "b", "c"])
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_import_reader_sees_function_level_and_relative_imports(tmp_path):
  src = tmp_path / "segjax" / "x" / "m.py"
  src.parent.mkdir(parents=True)
  src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n  from segjax import hidden\n"
                 "def f():\n  from segjax.y import z\n  from . import n\n")
  known = {"segjax.y", "segjax.y.z", "segjax.x.n", "segjax.hidden"}
  assert _imports(src, "segjax.x.m", known) == {"segjax.y.z", "segjax.x.n"}


def test_no_import_cycle_between_modules():
  cycle = _cycle(_graph())
  assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_no_import_cycle_between_folders():
  folders: dict[str, set[str]] = {}
  for module, deps in _graph().items():
    node = _folder(module)
    folders.setdefault(node, set()).update(_folder(d) for d in deps if _folder(d) != node)
  cycle = _cycle(folders)
  assert cycle is None, f"import cycle between folders: {' -> '.join(cycle)}"


def test_no_module_over_the_limit():
  long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py")
          if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
  assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_test_file_over_the_limit():
  long = {str(p.relative_to(REPO)): n for p in (REPO / "tests").rglob("test_*.py")
          if (n := len(p.read_text().splitlines())) > MAX_TEST_LINES * 1.1}
  assert not long, f"test files over ~{MAX_TEST_LINES} lines: {long}"


@pytest.mark.parametrize("folder", ["models", "ops", "data", "training", "evaluation", "serving", "weights", "tasks"])
def test_tests_mirror_the_package(folder):
  assert (PACKAGE / folder).is_dir()
  assert list((REPO / "tests" / folder).glob("test_*.py")), f"tests/{folder}/ has no tests of segjax/{folder}/"
