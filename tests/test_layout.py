"""The house's rules, read from the code: no import cycles, and only the allowed arrows between rooms.

Rooms (docs/ARCHITECTURE.md): ``runtime/wire`` and ``runtime/bundle`` are shared by
both sides and import neither ``edge`` nor ``cloud``; ``bundle`` does not import
``wire`` (it is files on disk); ``edge`` and ``cloud`` never import each other;
``exporter/`` uses only ``bundle``, ``backends`` and ``errors`` of the runtime; no
module of ``runtime/`` nor ``cli.py`` imports the exporter, torch, torchvision or
onnx at module level (the TorchScript backend imports torch when it is chosen).  Imports are read with ``ast``, inside functions too: no torch,
no sockets, runs in a second.
"""
import ast
import os

from conftest import REPO

PACKAGES = ("runtime", "exporter")


def modules():
    """{module name: path} for every module of the runtime and the exporter."""
    found = {}
    for package in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    found[".".join(parts)] = path
    return found


def imports(path, name):
    """(imported module, line, inside a function) for every import in the file, relative ones resolved."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    tree = ast.parse(open(path).read())
    out = []

    def visit(node, nested):
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                out.append((base, child.lineno, inner))
                out.extend((base + "." + a.name, child.lineno, inner) for a in child.names)
            visit(child, inner)
    visit(tree, False)
    return out


def graph():
    mods = modules()
    edges = {}
    for name, path in mods.items():
        edges[name] = {}
        for target, line, nested in imports(path, name):
            if target in mods and target != name:
                edges[name].setdefault(target, (line, nested))
    return mods, edges


def room(module):
    parts = module.split(".")
    if parts[0] == "runtime" and len(parts) > 1 and parts[1] in ("wire", "bundle", "edge", "cloud", "backends"):
        return "runtime." + parts[1]
    return parts[0] if parts[0] == "exporter" else module


FORBIDDEN = {  # room -> rooms it must not import
    "runtime.wire": ("runtime.edge", "runtime.cloud", "exporter"),
    "runtime.bundle": ("runtime.wire", "runtime.edge", "runtime.cloud", "exporter"),
    "runtime.backends": ("runtime.wire", "runtime.edge", "runtime.cloud", "exporter"),
    "runtime.edge": ("runtime.cloud", "exporter"),
    "runtime.cloud": ("runtime.edge", "exporter"),
}
EXPORTER_MAY_USE = ("runtime.bundle", "runtime.backends", "runtime.errors")


def test_no_import_cycles():
    _, edges = graph()
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def strong(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))
    for v in sorted(edges):
        if v not in index:
            strong(v)
    assert cycles == [], "import cycles: {}".format(cycles)


def test_only_allowed_arrows_between_rooms():
    _, edges = graph()
    wrong = []
    for source, targets in sorted(edges.items()):
        for target, (line, _) in sorted(targets.items()):
            if room(target) in FORBIDDEN.get(room(source), ()):
                wrong.append("{} -> {} (line {})".format(source, target, line))
            if room(source) == "exporter" and target.startswith("runtime") and not target.startswith(
                    EXPORTER_MAY_USE):
                wrong.append("{} -> {} (line {}): the exporter uses only {}".format(
                    source, target, line, ", ".join(EXPORTER_MAY_USE)))
    assert wrong == [], "forbidden imports:\n" + "\n".join(wrong)


def test_the_edge_path_never_imports_the_exporter_or_torch_at_module_level():
    paths = dict((name, path) for name, path in modules().items() if name.startswith("runtime"))
    paths["cli"] = os.path.join(REPO, "cli.py")
    wrong = []
    for name, path in sorted(paths.items()):
        for target, line, nested in imports(path, name):
            if target.split(".")[0] in ("exporter", "torch", "torchvision", "onnx") and not nested:
                wrong.append("{}:{} imports {}".format(name, line, target))
    assert wrong == [], "\n".join(wrong)


def test_the_rules_see_a_forbidden_arrow(tmp_path):
    """The graph reader itself: an edge module importing the cloud is caught, relative or absolute."""
    path = tmp_path / "m.py"
    path.write_text("from ..cloud import server\nimport runtime.cloud.stats\ndef f():\n    import torch\n")
    found = imports(str(path), "runtime.edge.m")
    assert ("runtime.cloud.server", 1, False) in found and ("runtime.cloud.stats", 2, False) in found
    assert ("torch", 4, True) in found
