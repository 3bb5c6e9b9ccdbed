"""The import layering of docs/architecture.md, checked on the source: nothing below imports upward."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fnet"

# unit -> the units it may import (fnet itself only for __version__). Everything else is a layering error.
ALLOWED = {
    "runtime": {"fnet"},
    "simulate": {"runtime"},
    "metrics": {"runtime"},
    "fuzz": {"runtime"},
    "dataset": {"runtime"},
    "evaluate": {"runtime", "metrics"},
    "train": {"fnet", "runtime", "dataset", "simulate", "metrics", "evaluate"},
    "export": {"runtime", "train", "simulate", "metrics"},
    "reproduce": {"runtime", "dataset", "train", "export", "metrics", "evaluate"},
    "cli": {"fnet", "runtime", "dataset", "simulate", "train", "export", "reproduce", "evaluate", "metrics"},
    # fnet-bench, a command beside cli.py: the runtime's backends, torch (train/export) only for --arch
    "bench": {"fnet", "cli", "runtime", "simulate", "metrics", "train", "export"},
    # fnet-gpu-check runs the other commands in child processes: it imports only the runtime's helpers
    "gpucheck": {"fnet", "runtime"},
    "report": {"runtime"},  # fnet-report: a torch-free page from a catalog, re-reading spectra
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "fnet"


def import_graph() -> dict[str, set[str]]:
    """Unit -> units it imports, counting imports inside functions too."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = module if rel.name == "__init__" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    targets.append(".".join(base + ([node.module] if node.module else [])))
                elif node.module:
                    targets.append(node.module)
            elif isinstance(node, ast.Import):
                targets += [n.name for n in node.names]
            for target in targets:
                if target.split(".")[0] == "fnet" and _unit(target) != _unit(module):
                    edges[_unit(module)].add(_unit(target))
    return edges


def test_nothing_imports_upward():
    graph = import_graph()
    assert set(graph) <= set(ALLOWED), f"new top-level unit(s) {set(graph) - set(ALLOWED)}: add them to the map"
    wrong = {unit: sorted(targets - ALLOWED[unit]) for unit, targets in graph.items() if targets - ALLOWED[unit]}
    assert not wrong, f"imports that break the layering (docs/architecture.md): {wrong}"


def test_the_runtime_imports_no_other_part_of_the_toolkit():
    assert import_graph()["runtime"] <= {"fnet"}


def test_no_module_is_a_catch_all():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 480}
    assert not long, f"modules over ~450 lines, split them by job: {long}"
