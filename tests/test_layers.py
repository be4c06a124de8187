"""The package's layers (docs/design.md, "Layout"): a module imports only from layers below it,
never in a cycle, and imports usf_fast modules at the top of the file (function-level imports are
for optional heavy dependencies)."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# bottom to top; a module may import any module of a lower layer, and inside a sub-package
# (models, adapters, search) its siblings, as long as there is no cycle
LAYERS = [
    ("math", ["_version", "files", "coefficients", "noise_schedules", "walk"]),
    ("data", ["schedule", "model"]),
    ("presets", ["presets"]),
    ("program", ["program", "checks"]),
    ("contract", ["contract"]),
    ("kernels", ["kernels"]),
    ("backends", ["backends"]),
    ("lowerings", ["plan", "dense"]),
    ("executors", ["reference", "executor", "graph"]),
    ("api", ["api"]),
    ("metrics", ["metrics", "pictures"]),
    ("models", ["models"]),
    ("adapters", ["adapters"]),
    ("search", ["search"]),
    ("cli", ["cli"]),
    # the package facade
    ("facade", ["__init__"]),
]
SUBPACKAGES = ("models", "adapters", "search", "kernels", "cli")
# function-level imports of usf_fast modules, each with its reason
LAZY_OK = {
    ("usf_fast.backends", "usf_fast.kernels.combine"),   # triton is optional: loaded when the backend is asked for
    ("usf_fast.cli.search", "usf_fast.search"),          # 0.4 s of start-up every other command would pay
    ("usf_fast.cli.search", "usf_fast.search.report"),
    ("usf_fast.cli.search", "usf_fast.adapters.pipeline"),   # diffusers: seconds of start-up for pipelines only
}


def _files():
    """module name (e.g. 'usf_fast.search.s3') → source path."""
    out = {}
    for base, pkg in ((os.path.join(ROOT, "usf_fast"), "usf_fast"), (os.path.join(ROOT, "kernels"), "usf_fast.kernels")):
        for dirpath, _, names in os.walk(base):
            for n in names:
                if n.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, n), base)[:-3].replace(os.sep, ".")
                    mod = pkg if rel == "__init__" else f"{pkg}.{rel.removesuffix('.__init__')}"
                    out[mod] = os.path.join(dirpath, n)
    return out


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom, files) -> list[str]:
    """The usf_fast modules `from base import a, b` reads: base.a where that is a module, else base
    (compiled extensions, usf_fast._C_*, are not Python modules of the tree)."""
    if node.level == 0:
        base = node.module or ""
    else:
        parts = mod.split(".")
        parts = parts if is_pkg else parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
            for a in node.names if not a.name.startswith("_C_")]


def import_graph():
    """module → {(imported usf_fast module, top level?)}."""
    files = _files()
    graph = {}
    for mod, path in files.items():
        tree = ast.parse(open(path).read())
        top = {id(n) for n in tree.body}
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = _resolve(mod, path.endswith("__init__.py"), node, files)
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name in files and name != mod:
                    deps.add((name, id(node) in top))
        graph[mod] = deps
    return graph


def layer_of(mod: str) -> int:
    parts = mod.split(".")
    name = parts[1] if len(parts) > 1 else "__init__"
    for k, (_, members) in enumerate(LAYERS):
        if name in members:
            return k
    raise KeyError(f"{mod}: not in any layer of tests/test_layers.py (add it)")


def upward_imports(graph) -> list[str]:
    bad = []
    for mod, deps in graph.items():
        for dep, _ in deps:
            same_pkg = mod.split(".")[:2] == dep.split(".")[:2] and mod.split(".")[1] in SUBPACKAGES
            if not same_pkg and layer_of(dep) >= layer_of(mod) and mod != "usf_fast":
                bad.append(f"{mod} imports {dep} ({LAYERS[layer_of(mod)][0]} -> {LAYERS[layer_of(dep)][0]})")
    return bad


def cycles(graph) -> list[list[str]]:
    """Every import cycle (as a path), by depth-first search."""
    found, state = [], {}

    def visit(m, path):
        state[m] = 1
        for dep, _ in sorted(graph.get(m, ())):
            if dep == "usf_fast":   # the package facade: every import of a submodule runs it first
                continue
            if state.get(dep) == 1:
                found.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def test_every_module_has_a_layer():
    for mod in import_graph():
        layer_of(mod)


def test_no_module_imports_from_its_own_or_a_higher_layer():
    assert upward_imports(import_graph()) == []


def test_there_is_no_import_cycle():
    assert cycles(import_graph()) == []


def test_usf_fast_modules_are_imported_at_the_top_of_the_file():
    lazy = [(m, d) for m, deps in import_graph().items() for d, top in deps if not top and (m, d) not in LAZY_OK]
    assert lazy == []


def test_the_checks_catch_an_upward_import_and_a_cycle():
    bad = {"usf_fast.walk": {("usf_fast.plan", True)}, "usf_fast.plan": {("usf_fast.walk", True)}}
    assert upward_imports(bad) == ["usf_fast.walk imports usf_fast.plan (math -> lowerings)"]
    assert cycles(bad) == [["usf_fast.plan", "usf_fast.walk", "usf_fast.plan"]]
    with pytest.raises(KeyError, match="not in any layer"):
        layer_of("usf_fast.somewhere_new")
