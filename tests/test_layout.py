"""The package's house, read from its source: the programs at its top, the library in rooms that
each import only the rooms below them, global flags only in programs."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "artstyle_jax"
# The library's rooms, lowest first: a room may import itself and the rooms before it.
ROOMS = ("runtime", "data", "storage", "models", "method", "evaluators", "pictures", "runs")
# Rooms of programs (`python -m artstyle_jax.bench NAME`, `python -m artstyle_jax.tools.X`).
PROGRAM_ROOMS = ("bench", "tools")
MAX_TOP_MODULES = 12


def _modules() -> list[pathlib.Path]:
  return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _room(path: pathlib.Path) -> str | None:
  """The room of a module of the package, None for a module at its top."""
  parts = path.relative_to(PACKAGE).parts
  return parts[0] if len(parts) > 1 else None


def _is_program(path: pathlib.Path) -> bool:
  return _room(path) is None or _room(path) in PROGRAM_ROOMS or path.name == "__main__.py"


def _imported_rooms(path: pathlib.Path) -> set[str]:
  """The package's top-level names (rooms or top modules) that `path` imports, relative imports included."""
  package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      modules = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package[:len(package) - node.level + 1] + ((base,) if base else ()))
      modules = [f"{base}.{alias.name}" for alias in node.names] if base == "artstyle_jax" else [base]
    else:
      continue
    for module in modules:
      parts = module.split(".")
      if parts[0] == "artstyle_jax" and len(parts) > 1:
        names.add(parts[1])
  return names


def _library_modules() -> list[pathlib.Path]:
  return [p for p in _modules() if not _is_program(p)]


def test_the_top_holds_only_programs_cli_and_the_package_init():
  """At most 12 modules at the top, each a program (it runs under `__main__`) but cli.py and
  __init__.py; every other directory of the package is a room the layout names."""
  top = [p for p in PACKAGE.glob("*.py")]
  assert len(top) <= MAX_TOP_MODULES, sorted(p.name for p in top)
  for path in top:
    if path.name not in ("__init__.py", "cli.py"):
      assert 'if __name__ == "__main__":' in path.read_text(), f"{path.name} is at the top but is no program"
  directories = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
  assert directories == set(ROOMS) | set(PROGRAM_ROOMS)


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_room_imports_only_itself_and_the_rooms_below_it(path):
  """No library module imports a program (a top module, bench, tools) or a room above its own,
  so no two rooms import each other, directly or round about."""
  room = _room(path)
  allowed = set(ROOMS[:ROOMS.index(room) + 1])
  assert _imported_rooms(path) <= allowed, f"{room} may import {sorted(allowed)}"


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_library_defines_no_global_flags(path):
  """absl flags of `flags.FLAGS` are defined and marked parsed only by programs; a library may
  define flags into its caller's own FlagValues (`flag_values=`)."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
      name = node.func.attr
      if name.startswith("DEFINE") or name.startswith("mark_flag"):
        assert any(k.arg == "flag_values" for k in node.keywords), f"line {node.lineno}: {name} of flags.FLAGS"
      assert name != "mark_as_parsed", f"line {node.lineno} marks flags.FLAGS parsed"


@pytest.mark.parametrize("room", ROOMS + PROGRAM_ROOMS)
def test_each_room_says_what_lives_in_it_and_what_it_may_import(room):
  """A room's __init__.py docstring names what it holds and, for the library, the rooms it imports."""
  docstring = ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text()))
  assert docstring, f"{room}/__init__.py has no docstring"
  if room in ROOMS:
    assert "import" in docstring.lower(), f"{room}'s docstring does not say what it may import"


def test_the_rooms_order_is_the_one_the_readme_describes():
  """README's layout section lists the rooms lowest first, as the test holds them."""
  readme = (PACKAGE.parent / "README.md").read_text()
  positions = [readme.find(f"`{room}/`") for room in ROOMS]
  assert -1 not in positions, [room for room, at in zip(ROOMS, positions) if at == -1]
  assert positions == sorted(positions)
