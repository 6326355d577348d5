"""The dependency rule (docs/architecture.md): imports point one way, and nothing imports in a circle.

  config, sharding  <-  models  <-  weights  <-  training, inference  <-  evaluation  <-  tools
  serve (the HTTP server) sits on inference; nothing imports it.
  data_pipelines sits beside weights (it may use config, models, weights; never training,
  inference or evaluation); experiments (presets) use config, weights and data_pipelines (the demo
  corpus's names and colours); launch drives the rest.

Every `import` in the source is read (those inside functions too), without importing anything.
"""

import ast
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("flamingo_jax", "data_pipelines", "experiments", "launch")

CONFIG, SHARDING = "flamingo_jax.config", "flamingo_jax.sharding"
MODELS, WEIGHTS = "flamingo_jax.models", "flamingo_jax.weights"
TRAINING, INFERENCE = "flamingo_jax.training", "flamingo_jax.inference"
EVALUATION, TOOLS, DATA = "flamingo_jax.evaluation", "flamingo_jax.tools", "data_pipelines"
SERVE = "flamingo_jax.serve"
# Each layer and the layers it may import (besides itself).
ALLOWED = {
    SERVE: {CONFIG, SHARDING, MODELS, WEIGHTS, DATA, INFERENCE},  # Nothing imports it.
    CONFIG: set(),
    SHARDING: set(),
    MODELS: {CONFIG, SHARDING},
    WEIGHTS: {CONFIG, SHARDING, MODELS},
    DATA: {CONFIG, MODELS, WEIGHTS},
    TRAINING: {CONFIG, SHARDING, MODELS, WEIGHTS, DATA},
    INFERENCE: {CONFIG, SHARDING, MODELS, WEIGHTS, DATA},
    EVALUATION: {CONFIG, SHARDING, MODELS, WEIGHTS, DATA, TRAINING, INFERENCE},
    "experiments": {CONFIG, WEIGHTS, DATA},
    TOOLS: {CONFIG, SHARDING, MODELS, WEIGHTS, DATA, TRAINING, INFERENCE, EVALUATION, "experiments"},
    "launch": {CONFIG, TRAINING, EVALUATION, TOOLS},
    "flamingo_jax": {CONFIG, MODELS},  # The package's own __init__: the public API.
}


def modules(root: pathlib.Path, packages=PACKAGES) -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every .py file of `packages` under `root`."""
  out = {}
  for package in packages:
    for path in sorted((root / package).rglob("*.py")):
      parts = path.relative_to(root).with_suffix("").parts
      out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


def imports(path: pathlib.Path, known: set[str]) -> set[str]:
  """The modules of `known` that the file imports (`from a.b import c` counts a.b.c when that is a
  module, else a.b); anywhere in the file."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out |= {alias.name for alias in node.names if alias.name in known}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        if full in known:
          out.add(full)
        elif node.module in known:
          out.add(node.module)
  return out


def graph(root: pathlib.Path, packages=PACKAGES) -> dict[str, set[str]]:
  found = modules(root, packages)
  return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Every strongly connected group of more than one node (Tarjan), each sorted."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in edges.get(node, ()):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      group = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        group.append(member)
        if member == node:
          break
      if len(group) > 1:
        out.append(sorted(group))

  for node in sorted(edges):
    if node not in index:
      visit(node)
  return out


def layer(module: str) -> str:
  """The layer of ALLOWED a module belongs to (the longest matching prefix)."""
  return max((name for name in ALLOWED if module == name or module.startswith(name + ".")), key=len)


def layer_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
  out: dict[str, set[str]] = {}
  for source, targets in edges.items():
    out.setdefault(layer(source), set()).update(layer(t) for t in targets if layer(t) != layer(source))
  return out


def forbidden(edges: dict[str, set[str]]) -> list[str]:
  """`a -> b` for every import that ALLOWED does not permit."""
  return sorted(f"{source} -> {target}" for source, targets in edges.items() for target in targets
                if layer(target) != layer(source) and layer(target) not in ALLOWED[layer(source)])


def test_no_module_imports_in_a_circle():
  assert cycles(graph(ROOT)) == []


def test_no_package_imports_in_a_circle():
  assert cycles(layer_graph(graph(ROOT))) == []


def test_every_import_follows_the_dependency_rule():
  assert forbidden(graph(ROOT)) == []


def test_the_checks_catch_a_cycle_and_a_wrong_direction(tmp_path):
  package = tmp_path / "flamingo_jax"
  for sub in ("models", "training"):
    os.makedirs(package / sub)
    (package / sub / "__init__.py").write_text("")
  (package / "__init__.py").write_text("")
  (package / "models" / "a.py").write_text("from flamingo_jax.models import b\n")
  (package / "models" / "b.py").write_text(
      "def f():\n  from flamingo_jax.models.a import g\n  from flamingo_jax.training import step\n")
  (package / "training" / "step.py").write_text("import flamingo_jax.models.a\n")
  edges = graph(tmp_path, ("flamingo_jax",))
  assert cycles(edges) == [["flamingo_jax.models.a", "flamingo_jax.models.b",
                            "flamingo_jax.training.step"]]
  assert cycles(layer_graph(edges)) == [[MODELS, TRAINING]]
  assert forbidden(edges) == ["flamingo_jax.models.b -> flamingo_jax.training.step"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_over_400_lines(package):
  long = {str(path.relative_to(ROOT)): n for path in (ROOT / package).rglob("*.py")
          if (n := len(path.read_text().splitlines())) > 400}
  assert long == {}
