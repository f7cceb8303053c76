"""The package's structure: every import points down (no cycle, imports inside functions
counted; the layers themselves are import-linter's contracts in setup.cfg, run by `lint-imports`)
and no module grows past 700 lines."""

import ast
import configparser
import glob
import os

from conftest import ROOT

MAX_LINES = 700


def _modules() -> dict[str, str]:
  """{dotted module name: path} of every module under gpt_jax/."""
  paths = glob.glob(os.path.join(ROOT, 'gpt_jax', '**', '*.py'), recursive=True)
  names = {}
  for path in paths:
    name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
    names[name.removesuffix('.__init__')] = path
  return names


def import_graph() -> dict[str, set[str]]:
  """{module: the gpt_jax modules it imports anywhere in its file}, `from a import b` counted as
  an import of a.b where a.b is a module and of a otherwise (a package's __init__ runs either
  way, so a.b also counts as a when a is a package)."""
  modules = _modules()

  def resolve(name: str) -> str | None:
    while name and name not in modules:
      name = name.rpartition('.')[0]
    return name or None

  graph = {}
  for name, path in modules.items():
    package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
    targets = set()
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          parts = package.split('.')[:len(package.split('.')) - node.level + 1]
          base = '.'.join(parts + ([base] if base else []))
        targets.add(base)
        targets.update(f'{base}.{alias.name}' for alias in node.names)
    graph[name] = {resolve(t) for t in targets if t.split('.')[0] == 'gpt_jax'} - {None, name}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan's algorithm)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
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

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_the_cycle_finder_finds_a_cycle():
  graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}, 'e': set()}
  assert cycles(graph) == [['a', 'b', 'c']]


def test_the_import_graph_sees_imports_inside_functions():
  graph = import_graph()
  assert 'gpt_jax.trainer' in graph['gpt_jax.train']  # imported inside train.main
  assert 'gpt_jax.lora' in graph['gpt_jax.lora.__main__']  # `from gpt_jax.lora import ...`


def test_no_import_cycle():
  assert cycles(import_graph()) == []


def test_nothing_imports_a_command_main():
  graph = import_graph()
  importers = {name: sorted(m for m in graph if name in graph[m])
               for name in graph if name.endswith('.__main__')}
  assert importers and all(not found for found in importers.values()), importers


def test_no_module_over_700_lines():
  long = {}
  for name, path in _modules().items():
    with open(path, encoding='utf-8') as f:
      lines = sum(1 for _ in f)
    if lines > MAX_LINES:
      long[name] = lines
  assert long == {}


def test_every_module_has_a_floor_in_the_layers_contract():
  """A module left out of setup.cfg's layers would go unchecked by lint-imports."""
  config = configparser.ConfigParser()
  config.read(os.path.join(ROOT, 'setup.cfg'))
  layers = config['importlinter:contract:layers']['layers']
  listed = {name.strip() for line in layers.splitlines() for name in line.replace(':', '|')
            .split('|') if name.strip()}
  top = {name.split('.')[1] for name in _modules() if name.count('.') >= 1}
  assert top - listed == set()
