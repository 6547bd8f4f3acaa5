"""The layering rules of README's "Architecture" section, checked on the source: the
library never imports the scripts in pipelines/, only the CLI imports the jobs, the
scripts import only the CLI, and no two library modules import each other in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "recbert"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def library_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {i for i in imports(path) if i in files and i != name} for name, path in files.items()}


def test_the_library_never_imports_the_pipeline_scripts():
    offenders = {m for m, p in ((module_name(p), p) for p in PACKAGE.rglob("*.py"))
                 if any(i == "pipelines" or i.startswith("pipelines.") for i in imports(p))}
    assert not offenders


def test_only_the_cli_imports_the_jobs_and_nothing_below_imports_the_cli():
    graph = library_graph()
    for module, deps in graph.items():
        if module.startswith("recbert.jobs") or module == "recbert.cli":
            continue
        assert not {d for d in deps if d.startswith("recbert.jobs") or d == "recbert.cli"}, module


def test_pipeline_scripts_import_only_the_cli():
    scripts = sorted((REPO / "pipelines").glob("*.py"))
    assert scripts
    for path in scripts:
        ours = {i for i in imports(path) if i.split(".")[0] in ("recbert", "pipelines")}
        assert all(i == "recbert.cli" or i.startswith("recbert.cli.") for i in ours), (path.name, ours)


def test_no_import_cycles_in_the_library():
    graph = library_graph()
    # a package's __init__ re-exporting its modules is not a dependency of those modules
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


LAYERS = [  # README "Architecture": a module imports only from its own layer or earlier ones
    ("recbert.errors", "recbert.finite", "recbert.io", "recbert.digest", "recbert.runtime", "recbert.allocator",
     "recbert.config", "recbert.tracking", "recbert.runs"),
    ("recbert.data",),
    ("recbert.model",),
    ("recbert.evaluation",),
    ("recbert.training",),
    ("recbert.heads", "recbert.exports", "recbert.index"),
    ("recbert.jobs",),
    ("recbert.cli",),
]
# config reads its lists of choices from these registries, which import nothing of recbert's
REGISTRY_LEAVES = {"recbert.model.blocks", "recbert.model.fusion", "recbert.training.losses",
                   "recbert.data.augmentations"}


def layer_of(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer of README's Architecture section")


def test_every_import_goes_to_the_same_or_an_earlier_layer():
    graph = library_graph()
    bad = []
    for module, deps in graph.items():
        if module == "recbert":
            continue
        for dep in deps:
            if dep == "recbert" or (module == "recbert.config" and dep in REGISTRY_LEAVES):
                continue
            if layer_of(dep) > layer_of(module):
                bad.append(f"{module} -> {dep}")
    assert not bad, bad
    # a registry leaf imports only what imports nothing above the first layer (errors, io,
    # the vocabulary) or modules that import nothing of recbert's (the chunked softmax)
    for leaf in REGISTRY_LEAVES:
        allowed = {"recbert.errors", "recbert.data.vocab", "recbert.io"}
        extra = {d for d in graph[leaf] if d.startswith("recbert.")} - allowed
        assert not {d for d in extra if graph.get(d)}, leaf
