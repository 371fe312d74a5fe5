"""The tree's shape (DESIGN.md "Layout"): which part may import which, and no import cycles.

    flags                  nothing of ours
    retrieval              flags
    controller (the core)  flags, retrieval, and the guard-source protocol (controller.sources.protocol)
    controller.sources     the core, flags, retrieval
    controller.views       nothing of ours: pure renderers of status and journal data
    controller.host        the core, sources, views, flags, retrieval
    controller.demo        all of the above
    controller.main        host and demo (the `rolloutd` entry point)
    deploy                 controller.views, the core's offline checkers (plan), flags

Read from the source with `ast`, so a test fails the moment an arrow points the wrong way.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("controller", "deploy", "retrieval", "flags")
WINGS = ("sources", "host", "demo", "views")
ALLOWED = {
    "flags": set(),
    "retrieval": {"flags"},
    "controller.core": {"flags", "retrieval", "controller.sources.protocol"},
    "controller.sources": {"controller.core", "flags", "retrieval"},
    "controller.views": set(),
    "controller.host": {"controller.core", "controller.sources", "controller.views", "flags", "retrieval"},
    "controller.demo": {
        "controller.core",
        "controller.sources",
        "controller.views",
        "controller.host",
        "flags",
        "retrieval",
    },
    "controller.main": {"controller.host", "controller.demo"},
    "deploy": {"controller.views", "controller.core", "flags"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            edges[name] |= {t for t in targets if t in modules and t != name}
    return edges


def wing(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "controller":
        return parts[0]
    if module in ("controller.main", "controller.__main__"):
        return "controller.main"
    if len(parts) > 2 and parts[1] in WINGS:
        return f"controller.{parts[1]}"
    return "controller.core"


def test_every_import_arrow_points_the_allowed_way() -> None:
    """No module imports a part of the tree above its own (e.g. controller → deploy, the core → host)."""
    wrong = []
    for source, targets in _imports(_modules()).items():
        for target in targets:
            here, there = wing(source), wing(target)
            if here != there and there not in ALLOWED[here] and target not in ALLOWED[here]:
                wrong.append(f"{source} ({here}) imports {target} ({there})")
    assert not wrong, "\n".join(sorted(wrong))


def test_there_is_no_import_cycle() -> None:
    """No chain of module imports leads back to where it started (Tarjan's strongly connected components)."""
    edges = _imports(_modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(_modules()):
        if module not in index:
            visit(module)
    assert not cycles, cycles


def test_the_wings_hold_what_the_design_says() -> None:
    """The modules a newcomer looks for are where DESIGN.md's layout puts them."""
    modules = _modules()
    for name in (
        "controller.sources.protocol",
        "controller.sources.prometheus",
        "controller.sources.builtin_signals",
        "controller.host.daemon",
        "controller.host.config",
        "controller.demo.run",
        "controller.demo.fleet",
        "controller.views.watch_view",
        "controller.views.report_html",
        "controller.main",
        "controller.decide",
        "controller.service",
        "deploy.cli",
    ):
        assert name in modules, name
    assert wing("controller.decide") == "controller.core" and wing("deploy.cli") == "deploy"
