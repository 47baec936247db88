"""The import graph of reportgen and models_zoo has no cycle, and the core build does not import the Python API.

Every module is read with `ast` (nothing is imported), and every in-package ``import`` / ``from ... import``
statement counts: at the top of the module and inside functions and methods alike, since an in-function import is
as much a dependency as a top-level one, only later. Two kinds of statement are left out, because they never run:
imports under ``if TYPE_CHECKING:`` (for annotations only). Plugin discovery (``pkgutil.iter_modules(__path__)``
then ``importlib.import_module``, as `reportgen.analyses.all_analyses` does) is not an import statement and is not
seen here: a registry that loads its plugins on first use is not a dependency of the package on its plugins.

Edges: ``import a.b`` -> ``a.b``; ``from a import b`` -> ``a.b`` when ``b`` is a submodule, else ``a`` (the names
are read from ``a`` itself); relative imports are resolved against the importing module's package. Importing
``a.b`` also runs ``a/__init__.py``, but that is the package's own initialization, not an edge.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("reportgen", "models_zoo")


def find_modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under each package folder of ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node that can run: everywhere, functions included, but not under TYPE_CHECKING."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path, packages=PACKAGES) -> dict[str, dict[str, int]]:
    """module -> {imported in-package module: line of the first statement that imports it}."""
    modules = find_modules(root, packages)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        edges: dict[str, int] = {}

        def add(target: str, line: int) -> None:
            if target in modules and not (target == name and is_package):  # a package's own names: no edge
                edges.setdefault(target, line)

        for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in packages:
                        add(alias.name, node.lineno)
                continue
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] not in packages:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in modules else source, node.lineno)
        graph[name] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components (Tarjan) that hold a cycle: more than one module, or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the number of modules (~100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
            if len(component) > 1 or v in graph.get(v, {}):
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def shortest_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest cycle (first == last) through the component's first module, found breadth-first inside it."""
    start, members = component[0], set(component)
    parent: dict[str, str | None] = {start: None}
    queue, last = [start], None
    while queue and last is None:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                last = v
                break
            if w in members and w not in parent:
                parent[w] = v
                queue.append(w)
    path = [start]
    while last is not None:
        path.append(last)
        last = parent[last]
    return path[::-1]


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component."""
    return [shortest_cycle(graph, c) for c in strongly_connected(graph)]


def describe(cycle: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    """``a (a.py:12) -> b (b.py:40) -> a``: each module with the line where it imports the next one."""
    steps = [f"{a} ({modules[a].relative_to(ROOT)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(steps + [cycle[-1]])


def reachable(graph: dict[str, dict[str, int]], start: str) -> dict[str, str]:
    """Every module ``start`` imports, directly or not: module -> the module that imports it on one shortest path."""
    seen = {start: ""}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, {})):
            if w not in seen:
                seen[w] = v
                queue.append(w)
    return seen


# --- the walker itself, on a small package made for it -------------------------------------------------------------

def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_walker_finds_cycles_through_function_bodies_and_relative_imports(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import thing\n",
        "pkg/b.py": "def f():\n    from . import c\n",           # in a function, `from . import submodule`
        "pkg/c.py": "class K:\n    def m(self):\n        import pkg.a\n",  # in a method, absolute
        "pkg/sub/__init__.py": "from ..d import VALUE\n",
        "pkg/sub/e.py": "from . import NAME\n",                    # a name of the package itself: edge to pkg.sub
        "pkg/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub import e\nimport os\n",
    })
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.b": 1}
    assert graph["pkg.b"] == {"pkg.c": 2}
    assert graph["pkg.c"] == {"pkg.a": 3}
    assert graph["pkg.sub"] == {"pkg.d": 1}
    assert graph["pkg.sub.e"] == {"pkg.sub": 1}
    assert graph["pkg.d"] == {}  # TYPE_CHECKING imports never run
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]

    # without the TYPE_CHECKING guard, d -> sub.e -> sub -> d is a second cycle
    _write(tmp_path, {"pkg/d.py": "def f():\n    from .sub import e\n"})
    assert find_cycles(import_graph(tmp_path, ("pkg",)))[1] == ["pkg.d", "pkg.sub.e", "pkg.sub", "pkg.d"]


# --- the repository ------------------------------------------------------------------------------------------------

def test_no_import_cycle():
    modules = find_modules(ROOT)
    assert {"reportgen.build", "reportgen.api", "reportgen.analyses.influence", "models_zoo.nets"} <= set(modules)
    graph = import_graph(ROOT)
    components = strongly_connected(graph)
    assert not components, "import cycles:\n" + "\n".join(
        describe(shortest_cycle(graph, c), graph, modules) + f"  [modules in this tangle: {', '.join(c)}]"
        for c in components)


def test_core_build_does_not_import_the_python_api():
    graph = import_graph(ROOT)
    via = reachable(graph, "reportgen.build")
    assert "reportgen.capture" in via  # the walk does reach the build's dependencies
    if "reportgen.api" in via:
        chain, v = [], "reportgen.api"
        while v:
            chain.append(v)
            v = via[v]
        raise AssertionError("the core build imports the Python API: " + " -> ".join(chain[::-1]))


# The imports kept inside functions are there for start-up time: `reportgen --help` loads neither numpy nor torch, and
# what the build's early checks and `reportgen analyses` load (the build, the config, every analysis module, the
# image set, the zoo's registry) loads no torch, plotting or learning library. A fresh interpreter says what it loaded.
LIGHT = """
import json, sys
import reportgen.cli
cli = sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'torch'})
import models_zoo, reportgen.archive, reportgen.build, reportgen.data, reportgen.distributed, reportgen.layers
import reportgen.site, reportgen.snapshots, reportgen.api, reportgen.imaging.notebook
from reportgen.analyses import all_analyses
assert all_analyses()
heavy = {'torch', 'torchvision', 'matplotlib', 'sklearn', 'scipy', 'timm', 'transformers', 'PIL'}
print(json.dumps({'cli': cli, 'checks': sorted({m.split('.')[0] for m in sys.modules} & heavy)}))
"""


def test_lazy_imports_keep_start_up_light():
    proc = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert loaded["cli"] == [], f"`reportgen --help` imports {loaded['cli']}"
    assert loaded["checks"] == [], f"the modules the early checks load import {loaded['checks']}"


# The manifest names torchvision's version without importing torchvision (2 s: it imports torch._dynamo), and a
# zoo CNN is loaded and told from torchvision's segmenters and detectors without it either.
TORCHVISION_FREE = """
import sys
from models_zoo import get
from reportgen.build import torchvision_version
from reportgen.tasks import declared_task
found, task = torchvision_version(), declared_task(get('shapes-cnn').build_model())
assert 'torchvision' not in sys.modules, 'torchvision was imported'
import torchvision
print(found == torchvision.__version__, task)
"""


def test_version_and_task_without_importing_torchvision():
    proc = subprocess.run([sys.executable, "-c", TORCHVISION_FREE], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "None"]
