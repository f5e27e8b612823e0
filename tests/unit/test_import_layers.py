"""Packages import downward only: no cycles between packages, no upward imports, and no
private names taken from another package.

Every module under orchestrator/ is read with `ast`, so imports inside functions count too
(they are how heavy libraries stay lazy, not a way around the layers). A package is the
first name under orchestrator/; a top-level module is a package of its own.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

SOURCE = Path(__file__).resolve().parents[2] / "orchestrator"
ROOT = "orchestrator"  # orchestrator/__init__.py itself: the version, nothing else

# Lowest first: a module may import from its own layer or a lower one. rundir, summary and
# ranks are leaves (standard library only) that training, forgetting, merging and refresh share.
LAYERS: list[set[str]] = [
    {ROOT, "digest", "jsonfile", "exitcodes", "cron", "ranks", "rundir", "summary"},
    {"spec"},
    {"checkpoint", "store", "launchers", "builtin", "data", "raycluster"},
    {"models"},
    {"forgetting"},
    {"merging", "training"},
    {"refresh"},
    {"pipeline"},
    {"controller"},
    {"api"},
    {"cli"},
]
LAYER = {package: level for level, packages in enumerate(LAYERS) for package in packages}

# (importing module, imported module) pairs that still break the rules: being removed by the
# run-pipeline redesign. The list may only shrink: an entry that no longer breaks a rule fails
# the test until it is deleted here.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


class Edge(NamedTuple):
    source: str             # the importing module
    target: str             # the imported module
    names: frozenset[str]   # names taken from it (none for `import x` or a submodule)
    line: int               # the first such import in the source file


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def _imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, name taken from it or None, line) for every import in `path`."""
    here = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule, None, node.lineno) if submodule in MODULES
                             else (base, alias.name, node.lineno))
    return [(target, name, line) for target, name, line in found
            if target == ROOT or target.startswith(ROOT + ".")]


def _edges() -> dict[tuple[str, str], Edge]:
    """Every import of one package's module by another package's, one edge per module pair."""
    edges: dict[tuple[str, str], Edge] = {}
    for module, path in MODULES.items():
        for target, name, line in _imports(module, path):
            if package_of(module) == package_of(target):
                continue
            old = edges.get((module, target))
            names = (old.names if old else frozenset()) | ({name} if name else set())
            edges[(module, target)] = Edge(module, target, names, min(line, old.line) if old else line)
    return edges


EDGES = _edges()


def _reach(edges) -> dict[str, set[str]]:
    """Package -> every package it imports, directly or through others."""
    graph = defaultdict(set)
    for edge in edges:
        graph[package_of(edge.source)].add(package_of(edge.target))
    reach = {}
    for start in list(graph):
        seen, todo = set(), [start]
        while todo:
            for package in graph[todo.pop()] - seen:
                seen.add(package)
                todo.append(package)
        reach[start] = seen
    return reach


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def problems(edge: Edge, reach: dict[str, set[str]]) -> list[str]:
    """The rules `edge` breaks, given which packages reach which."""
    source, target = package_of(edge.source), package_of(edge.target)
    found = []
    if source in LAYER and target in LAYER and LAYER[target] > LAYER[source]:
        found.append(f"imports upward ({source} is layer {LAYER[source]}, {target} layer {LAYER[target]})")
    private = sorted(n for n in edge.names | set(edge.target.split(".")) if _private(n))
    if private:
        found.append(f"takes private {', '.join(private)} from {target}")
    if source in reach.get(target, ()):
        found.append(f"closes a cycle ({target} already imports {source}, directly or not)")
    return found


def _where(edge: Edge) -> str:
    return f"{MODULES[edge.source].relative_to(SOURCE.parent)}:{edge.line}"


def test_every_package_has_a_layer():
    missing = sorted({package_of(m) for m in MODULES} - set(LAYER))
    assert not missing, (f"no layer for {', '.join(missing)}: add each to LAYERS in {Path(__file__).name}, "
                         "above every package it imports from")


def test_packages_import_downward_only():
    new = [edge for pair, edge in EDGES.items() if pair not in KNOWN_VIOLATIONS]
    reach = _reach(new)
    broken = [f"{_where(e)}: {e.source} -> {e.target}: {'; '.join(p)}" for e in new if (p := problems(e, reach))]
    assert not broken, ("these imports break the package layers; move what both sides need down into a lower "
                        "package, or hand it in from the caller:\n  " + "\n  ".join(broken))


def test_known_violations_only_shrink():
    gone = sorted(pair for pair in KNOWN_VIOLATIONS if pair not in EDGES)
    reach = _reach(EDGES.values())
    fixed = sorted(pair for pair in KNOWN_VIOLATIONS if pair in EDGES and not problems(EDGES[pair], reach))
    assert not gone and not fixed, (f"delete from KNOWN_VIOLATIONS: {gone + fixed} (the import is gone, or it "
                                     "no longer breaks a rule)")


def test_the_checks_see_imports_inside_functions_and_private_names():
    """The checks themselves: a lazy import counts, and a private name is caught."""
    lazy = [(t, n) for t, n, _ in _imports("orchestrator.spec.rules", MODULES["orchestrator.spec.rules"])]
    assert ("orchestrator.spec.storage", "check_uri") in lazy
    edge = Edge("orchestrator.refresh.x", "orchestrator.training.run", frozenset({"_helper"}), 1)
    assert problems(edge, {}) == ["takes private _helper from training"]
    upward = Edge("orchestrator.spec.x", "orchestrator.models.build", frozenset({"load"}), 1)
    assert problems(upward, {"models": {"spec"}})[0].startswith("imports upward (spec is layer 1, models layer 3)")
