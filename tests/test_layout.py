"""The package's one-way dependencies: which subpackage may import which, and no import circles.

Read statically from the source (every import statement, also those inside functions), so a
rule broken on a path no test runs is still caught.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "vggsound_jax"
TRAINING_CORE = (
  "vggsound_jax.trainer",
  "vggsound_jax.train_state",
  "vggsound_jax.checkpoints",
  "vggsound_jax.preemption",
  "vggsound_jax.evaluation",
  "vggsound_jax.input_pipeline",
  "vggsound_jax.distributed",
  "vggsound_jax.sharding",
  "vggsound_jax.optimizers",
  "vggsound_jax.warm_start",
  "vggsound_jax.finetune",
  "vggsound_jax.probe",
  "vggsound_jax.crossval",
  "vggsound_jax.faults",
)
# Subpackage -> what none of its modules may import.
FORBIDDEN = {
  "vggsound_jax.audio": (
    "vggsound_jax.models",
    "vggsound_jax.serving",
    "vggsound_jax.conversion",
    "vggsound_jax.datasets",
    "vggsound_jax.cli",
    *TRAINING_CORE,
  ),
  "vggsound_jax.models": (
    "vggsound_jax.serving",
    "vggsound_jax.conversion",
    "vggsound_jax.datasets",
    "vggsound_jax.cli",
    *TRAINING_CORE,
  ),
  "vggsound_jax.conversion": (
    "vggsound_jax.serving",
    "vggsound_jax.datasets",
    "vggsound_jax.cli",
    *TRAINING_CORE,
    "torch",
  ),
  "vggsound_jax.serving": ("vggsound_jax.conversion", "vggsound_jax.datasets", "vggsound_jax.cli", *TRAINING_CORE),
  "vggsound_jax.datasets": ("vggsound_jax.serving", "vggsound_jax.conversion", "vggsound_jax.cli", *TRAINING_CORE),
}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _under_type_checking(node, parents) -> bool:
  return any(isinstance(p, ast.If) and "TYPE_CHECKING" in ast.unparse(p.test) for p in parents)


def imports(path: pathlib.Path, *, module_level_only: bool = False) -> set[str]:
  """The modules a file imports (`from a import b` counts as a.b when a.b is a module)."""
  tree = ast.parse(path.read_text())
  found = set()

  def visit(node, parents, in_function):
    for child in ast.iter_child_nodes(node):
      inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
      if isinstance(child, (ast.Import, ast.ImportFrom)) and not (
        module_level_only and (in_function or _under_type_checking(child, parents))
      ):
        if isinstance(child, ast.Import):
          found.update(alias.name for alias in child.names)
        elif child.module and child.level == 0:
          found.add(child.module)
          found.update(f"{child.module}.{alias.name}" for alias in child.names)
      visit(child, parents + [child], inner)

  visit(tree, [], False)
  return found


def package_files() -> list[pathlib.Path]:
  return sorted(p for p in PACKAGE.rglob("*.py") if "testing" not in p.relative_to(PACKAGE).parts)


def known_modules() -> set[str]:
  return {module_name(p) for p in package_files()}


@pytest.mark.parametrize("subpackage", sorted(FORBIDDEN))
def test_subpackages_import_only_what_their_rule_allows(subpackage):
  broken = []
  for path in package_files():
    name = module_name(path)
    if name != subpackage and not name.startswith(subpackage + "."):
      continue
    for imported in imports(path):
      if any(imported == f or imported.startswith(f + ".") for f in FORBIDDEN[subpackage]):
        broken.append(f"{name} imports {imported}")
  assert not broken, "\n".join(broken)


def test_the_two_converters_do_not_know_each_other():
  resnet, vggish = PACKAGE / "conversion/resnet.py", PACKAGE / "conversion/vggish.py"
  assert not any(i.startswith("vggsound_jax.conversion.vggish") for i in imports(resnet))
  assert not any(i.startswith("vggsound_jax.conversion.resnet") for i in imports(vggish))


def test_no_import_circles_between_modules():
  modules = known_modules()
  graph = {}
  for path in package_files():
    graph[module_name(path)] = {i for i in imports(path, module_level_only=True) if i in modules} - {module_name(path)}
  # A package's __init__ re-exporting its own submodules is how Python packages work, not a circle.
  for name, targets in graph.items():
    graph[name] = {t for t in targets if not t.startswith(name + ".")}
  index, low, stack, on_stack, circles = {}, {}, [], set(), []

  def strongconnect(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        strongconnect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      if len(component) > 1:
        circles.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      strongconnect(v)
  assert not circles, circles


def test_the_rules_see_real_imports():
  # The checker itself: it must find an import that is there, or every rule above passes vacuously.
  assert "vggsound_jax.audio.ffmpeg_compat" in imports(PACKAGE / "audio/decode.py")
  assert "vggsound_jax.models.config" in imports(PACKAGE / "models/resnet.py", module_level_only=True)
