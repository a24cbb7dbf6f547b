"""The package's import graph: no cycle between modules, `interop` loads no objective, and
every function-local import says why it is there."""
import ast
import os
import subprocess
import sys

from helpers import ROOT

PACKAGE = os.path.join(ROOT, "flip_jax")


def _modules() -> dict[str, str]:
  found = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        module = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".")
        found[module.removesuffix(".__init__")] = path
  return found


def _ancestors(module: str) -> list[str]:
  parts = module.split(".")
  return [".".join(parts[:i]) for i in range(1, len(parts))]


def _graph(modules) -> dict[str, set[str]]:
  """module -> the package modules it imports (anywhere in the file), plus the packages
  whose __init__ such an import runs (outside the module's own ancestors)."""
  graph = {}
  for module, path in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Import):
        targets.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for alias in node.names:
          sub = f"{node.module}.{alias.name}"
          targets.add(sub if sub in modules else node.module)
    edges = set()
    for target in targets:
      if target not in modules:
        continue
      edges.add(target)
      edges.update(p for p in _ancestors(target) if p not in _ancestors(module) and p != "flip_jax")
    graph[module] = edges - {module}
  return graph


def _cycles(graph) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in graph:
    if v not in index:
      visit(v)
  return found


def test_no_import_cycle_between_package_modules():
  assert _cycles(_graph(_modules())) == []


def test_the_cycle_finder_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_importing_interop_loads_no_objective():
  code = ("import sys, flip_jax.interop.teacher, flip_jax.interop.ours, flip_jax.convert; "
          "print(sorted(m for m in sys.modules if m.startswith('flip_jax.objectives')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.stdout.strip() == "[]"


def test_function_local_imports_say_why():
  """An import inside a function is for a heavy optional dependency or a real cycle, and
  its line carries a comment saying which."""
  bare = []
  for module, path in _modules().items():
    lines = open(path).read().splitlines()
    for node in ast.walk(ast.parse("\n".join(lines))):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for inner in ast.walk(node):
          if isinstance(inner, (ast.Import, ast.ImportFrom)) and "#" not in lines[inner.lineno - 1]:
            bare.append(f"{module}:{inner.lineno}: {lines[inner.lineno - 1].strip()}")
  assert bare == []
