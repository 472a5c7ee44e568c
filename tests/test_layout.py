"""The package's layout, checked from its source: commands are the top-level modules and
nothing imports them, the library has no import cycles, and no function is over 80 lines."""

import ast
import os
import pathlib

PKG = pathlib.Path(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) / "r3jax"
COMMANDS = {"train", "compare", "convert_gguf", "eval_gen", "eval_pairs", "frontier", "plan", "plot", "sample", "score"}


def modules() -> dict[str, ast.Module]:
  out = {}
  for path in PKG.rglob("*.py"):
    name = ".".join(("r3jax",) + path.relative_to(PKG).with_suffix("").parts).removesuffix(".__init__")
    out[name] = ast.parse(path.read_text(), str(path))
  return out


def imports(tree: ast.Module, names: set[str]) -> set[str]:
  """The r3jax modules a module imports, at module level or inside functions."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("r3jax"):
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        found.add(full if full in names else node.module)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name in names)
  return found - {"r3jax"}


def test_top_level_modules_are_the_commands_and_nothing_imports_them():
  top = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
  assert top == COMMANDS
  mods = modules()
  for name, tree in mods.items():
    assert not {f"r3jax.{c}" for c in COMMANDS} & imports(tree, set(mods)), name
    if name.removeprefix("r3jax.") in COMMANDS:  # A command: flags and a thin main.
      assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), name


def test_no_import_cycles_between_library_modules():
  mods = modules()
  graph = {name: imports(tree, set(mods)) & set(mods) for name, tree in mods.items()}
  state = {}

  def visit(node, path):
    state[node] = "open"
    for nxt in graph[node]:
      assert state.get(nxt) != "open", " -> ".join(path + [nxt])
      if nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = "done"

  for name in graph:
    if name not in state:
      visit(name, [name])


def test_no_function_is_longer_than_80_lines():
  long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
          for name, tree in modules().items() for node in ast.walk(tree)
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 > 80]
  assert not long, long
