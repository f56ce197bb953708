"""The package is floors that import only downwards (docs/design.md draws them): this reads every module's imports,
at its top and inside functions, and checks that none reaches a floor above its own, that nothing imports the
command floor, and that no module takes another's private names."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "combinax"

# Bottom to top. A module belongs to the floor of the longest prefix of its name listed here.
FLOORS = [
    ("the base", ["combinax.shapes", "combinax.paths", "combinax.configurable", "combinax.sharding"]),
    ("storage", ["combinax.store"]),
    ("data and quantized weights", ["combinax.data", "combinax.quant"]),
    ("layers", ["combinax.layers"]),
    ("the pipeline", ["combinax.parallel"]),
    ("models and decoding", ["combinax.models", "combinax.decoding", "combinax.speculative"]),
    ("pretrained models", ["combinax.pretrained"]),
    ("training", ["combinax.train"]),
    ("techniques", ["combinax.growth", "combinax.distill", "combinax.federated", "combinax.retrieval"]),
    ("commands", ["combinax.cli"]),
]
COMMANDS = len(FLOORS) - 1
SURFACE = "combinax"   # the package's own __init__: the public surface, which may import any floor but the commands


def module_name(path: Path) -> str:
  parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor_of(module: str) -> int:
  if module.endswith(".__main__"):   # `python -m` entry points are commands, wherever they sit
    return COMMANDS
  found = [(len(prefix), level) for level, (_, prefixes) in enumerate(FLOORS) for prefix in prefixes
           if module == prefix or module.startswith(prefix + ".")]
  if not found:
    raise AssertionError(f"{module} is on no floor: add it to FLOORS (and to docs/design.md)")
  return max(found)[1]


def _is_main_block(node) -> bool:
  test = getattr(node, "test", None)
  return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
          and test.left.id == "__name__")


class Import:
  def __init__(self, source: str, target: str, name: str | None, line: int, entry_point: bool):
    self.source, self.target, self.name, self.line, self.entry_point = source, target, name, line, entry_point

  def __repr__(self):
    return f"{self.source}:{self.line} imports {self.target}" + (f".{self.name}" if self.name else "")


def imports_of(module: str) -> list[Import]:
  """Every import of a combinax module in `module` (the imported name, for `from x import name` of a non-module)."""
  path = MODULES[module]
  tree = ast.parse(path.read_text())
  package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
  main_blocks = [n for n in tree.body if _is_main_block(n)]
  in_main = {id(n) for block in main_blocks for n in ast.walk(block)}
  found = []
  for node in ast.walk(tree):
    entry = id(node) in in_main
    if isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
      if not base.startswith("combinax"):
        continue
      for alias in node.names:
        submodule = f"{base}.{alias.name}"
        found.append(Import(module, submodule, None, node.lineno, entry) if submodule in MODULES else
                     Import(module, base, alias.name, node.lineno, entry))
    elif isinstance(node, ast.Import):
      found += [Import(module, a.name, None, node.lineno, entry) for a in node.names if a.name.startswith("combinax")]
  return found


ALL_IMPORTS = [i for module in MODULES for i in imports_of(module)]


def test_every_module_is_on_a_floor():
  for module in MODULES:
    if module != SURFACE:
      floor_of(module)


def test_no_module_imports_a_floor_above_its_own():
  upward = []
  for i in ALL_IMPORTS:
    if i.source == SURFACE:
      continue
    source = COMMANDS if i.entry_point else floor_of(i.source)
    if floor_of(i.target) > source:
      upward.append(f"{i} ({FLOORS[source][0]} -> {FLOORS[floor_of(i.target)][0]})")
  assert not upward, "imports that go up a floor:\n" + "\n".join(upward)


def test_nothing_imports_the_command_floor_but_commands_and_entry_points():
  into = [str(i) for i in ALL_IMPORTS if floor_of(i.target) == COMMANDS and not i.entry_point
          and floor_of(i.source) != COMMANDS]
  assert not into, "\n".join(into)
  assert not [i for i in ALL_IMPORTS if i.source == SURFACE and i.target.startswith("combinax.cli")]


def test_training_imports_no_technique():
  techniques = ("combinax.growth", "combinax.distill", "combinax.federated", "combinax.retrieval")
  assert not [str(i) for i in ALL_IMPORTS if i.source.startswith("combinax.train") and i.target.startswith(techniques)]


def test_no_module_takes_another_modules_private_names():
  taken = [str(i) for i in ALL_IMPORTS if i.name is not None and i.name.startswith("_") and i.target != i.source]
  # `module._name` on a module imported by name
  for module, path in MODULES.items():
    tree = ast.parse(path.read_text())
    modules = {(alias.asname or alias.name): i.target for i in imports_of(module) if i.name is None
               for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
               for alias in node.names if getattr(node, "lineno", None) == i.line}
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
          and node.attr.startswith("_") and not node.attr.startswith("__")):
        taken.append(f"{module}:{node.lineno} uses {modules[node.value.id]}.{node.attr}")
  assert not taken, "\n".join(taken)


@pytest.mark.parametrize("layout", ["docs/design.md", "README.md"])
def test_the_documented_layout_names_every_floor(layout):
  text = (PACKAGE.parent / layout).read_text()
  for _, prefixes in FLOORS:
    for prefix in prefixes:
      name = prefix.split(".", 1)[1]
      assert f"{name}/" in text or f"{name}.py" in text, f"{layout} does not show {prefix}"
