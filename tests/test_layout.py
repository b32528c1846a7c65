"""The package's shape: arrows one way between the four rooms, no cycle inside one.

``infra -> statemachine -> handlers -> schemas``: a module may import from its own
room or a room to its right. Inside a room the import graph has no cycle, and no
import hides behind ``TYPE_CHECKING`` or inside a function (a late import is a cycle
in disguise; only the command line defers loading a subcommand's modules). Private
names are not imported across files, and a private module (``_name.py``) serves
only its own room.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ["schemas", "handlers", "statemachine", "infra"]      # each may import only from itself and rightwards
RANK = {"infra": 0, "statemachine": 1, "handlers": 2, "schemas": 3}


def _imports(path: Path, room: str) -> list[tuple[str, int, bool, list[str]]]:
    """(imported module as room.module, line, at module level, imported names) for package-relative imports."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level == 1:
                target_room, module = room, node.module
            else:
                parts = (node.module or "").split(".")
                target_room, module = parts[0], ".".join(parts[1:]) or None
            names = [a.name for a in node.names]
            if module is None:  # from . import a, b
                for name in names:
                    out.append((f"{target_room}.{name}", node.lineno, id(node) in top, []))
            else:
                out.append((f"{target_room}.{module.split('.')[0]}", node.lineno, id(node) in top, names))
    return out


def _modules() -> dict[str, Path]:
    return {f"{room}.{f.stem}": f for room in ROOMS for f in sorted((ROOT / room).glob("*.py"))}


def test_arrows_point_one_way_between_rooms():
    wrong = []
    for mod, path in _modules().items():
        room = mod.split(".")[0]
        for target, line, _, _ in _imports(path, room):
            if RANK[target.split(".")[0]] < RANK[room]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert wrong == []


def test_every_relative_import_is_at_module_level_and_not_behind_type_checking():
    """infra's command line may load a subcommand's modules when it runs (start-up time);
    nowhere else is an import deferred."""
    late = []
    for mod, path in _modules().items():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                late.append(f"{path.relative_to(ROOT)}:{node.lineno} imports under TYPE_CHECKING")
        for target, line, at_top, _ in _imports(path, mod.split(".")[0]):
            if not at_top and mod != "infra.cli":
                late.append(f"{path.relative_to(ROOT)}:{line} imports {target} inside a block")
    assert late == []


def test_no_import_cycle_inside_a_room():
    modules = _modules()
    graph = {mod: {t for t, *_ in _imports(path, mod.split(".")[0]) if t in modules and t != mod}
             for mod, path in modules.items() if not mod.endswith(".__init__")}
    graph = {m: {t for t in deps if t in graph} for m, deps in graph.items()}
    done: set[str] = set()
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            cycles.append(" -> ".join(trail[trail.index(node):] + [node]))
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, trail + [node])
        done.add(node)

    for mod in sorted(graph):
        visit(mod, [])
    assert cycles == []


def test_private_modules_and_names_stay_in_their_file():
    leaks = []
    for mod, path in _modules().items():
        room = mod.split(".")[0]
        for target, line, _, names in _imports(path, room):
            private_module = target.split(".")[1].startswith("_") and not mod.endswith(".__init__")
            private_names = [n for n in names if n.startswith("_")]
            # A package's private module is its own business: the public module beside it may use it.
            if private_names or (private_module and target.split(".")[0] != room):
                leaks.append(f"{path.relative_to(ROOT)}:{line} imports {target} {private_names or ''}")
    assert leaks == []
