"""The package's import graph: no cycle, and the layers README names, as a tested fact. Every import between
modules of minroberta (at the top of a file or inside a function) is an edge; importing a.b.c also runs the
subpackage a.b's __init__, so that is an edge too (the root package's __init__, which imports everything, is
left out). Run `python -m pytest tests/test_imports.py -q` to see it hold."""

import ast
import os

import minroberta

PACKAGE = os.path.dirname(minroberta.__file__)

# what the reference ops may import: the array module, the fast-form registry, and themselves
OPS_MAY_IMPORT = {"minroberta.backend", "minroberta.errors", "minroberta.dispatch"}
# the bottom layer imports nothing of the package above it
BOTTOM = {"minroberta.errors": set(), "minroberta.dispatch": set(),
          "minroberta.backend": {"minroberta.errors", "minroberta.device_standin"},
          "minroberta.device_standin": set()}
# the reference core: what a reader learns from, which runs as written until the engine is installed
CORE = ("minroberta.backend", "minroberta.config", "minroberta.errors", "minroberta.dispatch", "minroberta.ops",
        "minroberta.model", "minroberta.bert", "minroberta.heads", "minroberta.optim", "minroberta.loop",
        "minroberta.recipe", "minroberta.data", "minroberta.corpus", "minroberta.tokenizer",
        "minroberta.checkpoint", "minroberta.atomic", "minroberta.device_standin")


def module_name(path):
    relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
    return relative[:-len(".__init__")] if relative.endswith(".__init__") else relative


def imports_of(path, name):
    """The modules of the package that the file at `path` (module `name`) imports."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("minroberta"):
                found.add(target)
    return found


def graph():
    files = {}
    for folder, _, names in os.walk(PACKAGE):
        for file in names:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                files[module_name(path)] = path
    edges = {}
    for name, path in files.items():
        targets = set()
        for target in imports_of(path, name):
            while target not in files:   # `from .ops import linear_forward` names a function, not a module
                target = target.rsplit(".", 1)[0]
            parts = target.split(".")
            # the subpackages' __init__ run first, unless the importer is inside them (they are running already)
            targets.update(p for p in (".".join(parts[:i]) for i in range(2, len(parts) + 1))
                           if not name.startswith(p + "."))
        edges[name] = targets - {name, "minroberta"}
    return edges


def find_cycle(edges):
    """A list of modules that import each other in a ring, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None
    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_ops_import_nothing_above_them():
    for name, targets in graph().items():
        if name.startswith("minroberta.ops"):
            upward = {t for t in targets if not t.startswith("minroberta.ops") and t not in OPS_MAY_IMPORT}
            assert not upward, f"{name} imports {sorted(upward)}, above the ops"


def test_the_bottom_layer_imports_only_below_itself():
    edges = graph()
    for name, allowed in BOTTOM.items():
        assert edges[name] <= allowed, f"{name} imports {sorted(edges[name] - allowed)}"


def test_the_core_never_imports_the_engine():
    """The engine installs itself around the core; the core, imported and run alone, is exactly what it reads."""
    for name, targets in graph().items():
        if any(name == c or name.startswith(c + ".") for c in CORE):
            engine = {t for t in targets if t == "minroberta.engine" or t.startswith("minroberta.engine.")}
            assert not engine, f"{name} imports {sorted(engine)}, the engine"


def test_data_flows_one_way():
    """README's cli -> (engine, tasks) -> (loop, model, optim, data) -> ops -> backend: nothing imports a
    module above it."""
    above = {"minroberta.ops": {"minroberta.model", "minroberta.heads", "minroberta.optim", "minroberta.data",
                                "minroberta.loop", "minroberta.cli", "minroberta.engine", "minroberta.checkpoint"},
             "minroberta.model": {"minroberta.loop", "minroberta.cli", "minroberta.engine", "minroberta.checkpoint",
                                  "minroberta.finetune"},
             "minroberta.data": {"minroberta.loop", "minroberta.cli", "minroberta.model", "minroberta.engine"},
             "minroberta.optim": {"minroberta.loop", "minroberta.cli", "minroberta.model", "minroberta.engine"},
             "minroberta.loop": {"minroberta.cli", "minroberta.engine"},
             "minroberta.engine": {"minroberta.cli"}}
    for name, targets in graph().items():
        for layer, forbidden in above.items():
            if name == layer or name.startswith(layer + "."):
                hits = {t for t in targets if any(t == f or t.startswith(f + ".") for f in forbidden)}
                assert not hits, f"{name} imports {sorted(hits)}, above {layer}"
