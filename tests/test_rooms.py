"""The rooms, pinned: which modules may import what (read from their source with ast).

- Only the NATS room imports ``nats``; nats errors are translated there.
- The pure core imports nothing of jetlane outside itself, and no network,
  process or clock module.
- The drive loop, runner, client, API and CLI reach NATS through the log's
  methods, never through its connection (no ``.nc``, ``.js``).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "runtime" / "jetlane"

NATS_ROOM = {"_connection", "_log", "_router", "_streams", "_pull", "_scan"}
CORE = {
    "_history",
    "_decisions",
    "_replay",
    "_recorded",
    "_context",
    "_steps",
    "_definition",
    "_status",
    "_durations",
    "_determinism",
    "_errors",
}
NOT_IN_CORE = {"nats", "socket", "subprocess", "time", "threading", "concurrent"}


def modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def imports(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(top-level packages imported absolutely, jetlane modules imported relatively)."""
    absolute: set[str] = set()
    relative: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            absolute |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module is not None:
                absolute.add(node.module.split(".")[0])
            elif node.level == 1:
                if node.module is None:
                    relative |= {alias.name for alias in node.names}
                else:
                    relative.add(node.module.split(".")[0])
    return absolute, relative


def test_only_the_nats_room_imports_nats() -> None:
    importers = {name for name, tree in modules().items() if "nats" in imports(tree)[0]}
    assert importers <= NATS_ROOM, importers - NATS_ROOM


def test_the_core_stands_alone() -> None:
    found = modules()
    assert set(found) >= CORE, CORE - set(found)
    for name in CORE:
        absolute, relative = imports(found[name])
        assert not absolute & NOT_IN_CORE, (name, absolute & NOT_IN_CORE)
        assert relative <= CORE, (name, relative - CORE)


def test_nobody_outside_the_nats_room_touches_the_connection() -> None:
    for name, tree in modules().items():
        if name in NATS_ROOM:
            continue
        touched = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in ("nc", "js")
        }
        assert not touched, (name, touched)


def test_the_drive_loop_does_not_know_nats() -> None:
    _, relative = imports(modules()["_drive"])
    assert not relative & NATS_ROOM, relative & NATS_ROOM
