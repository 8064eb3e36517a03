"""The rooms, pinned: which modules may import what (read from their source with ast).

jetlane/_core/   pure: wire types, replay core, context, atoms, errors; no I/O, no nats
jetlane/_nats/   the only importers of nats: connection, reply router, log, streams, pulls
jetlane/         drive loop, runner, client, index, metrics, testing, wire, embedded
jetlane/api/     the HTTP API, over the client
jetlane/cli/     the command line, over the client (and a runner)
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "runtime" / "jetlane"
NOT_IN_CORE = {"nats", "socket", "subprocess", "time", "threading", "concurrent"}
PUBLIC_CONNECTION = {"ConnectOptions", "Names", "Log"}


def modules() -> dict[str, ast.Module]:
    """Every module by its path under the package (``_core/replay``, ``_runner``, ...)."""
    return {
        str(p.relative_to(PACKAGE).with_suffix("")): ast.parse(p.read_text(), str(p))
        for p in sorted(PACKAGE.rglob("*.py"))
    }


def room(name: str) -> str:
    return name.split("/")[0] if "/" in name else ""


def imported(tree: ast.Module) -> list[tuple[int, str, list[str]]]:
    """(level, module, names) of every import; absolute imports have level 0."""
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(0, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", [a.name for a in node.names]))
    return found


def test_the_rooms_exist() -> None:
    rooms = {room(name) for name in modules()}
    assert {"_core", "_nats", "api", "cli", ""} <= rooms


def test_only_the_nats_room_imports_nats() -> None:
    importers = {
        name
        for name, tree in modules().items()
        for level, module, _ in imported(tree)
        if level == 0 and module.split(".")[0] == "nats"
    }
    assert importers and all(room(name) == "_nats" for name in importers), importers


def test_the_core_imports_only_itself_and_no_io() -> None:
    for name, tree in modules().items():
        if room(name) != "_core":
            continue
        for level, module, _ in imported(tree):
            if level == 0:
                assert module.split(".")[0] not in NOT_IN_CORE, (name, module)
            else:
                assert level == 1, (name, module, "reaches outside _core")


def test_nobody_outside_the_nats_room_touches_the_connection() -> None:
    for name, tree in modules().items():
        if room(name) == "_nats":
            continue
        touched = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in ("nc", "js")
        }
        assert not touched, (name, touched)


def test_the_drive_loop_knows_no_nats_and_api_and_cli_go_through_the_client() -> None:
    for name, tree in modules().items():
        for _, module, names in imported(tree):
            if "_nats" not in module.split("."):
                continue
            assert name != "_drive", module
            if room(name) in ("api", "cli"):
                # only the public connection objects (also jetlane.Log, jetlane.Names, ...)
                assert set(names) <= PUBLIC_CONNECTION, (name, module, names)


def test_nats_errors_are_translated_in_one_place() -> None:
    """Only _nats/errors.py turns nats-py errors into jetlane's (streams' set-up retries
    and the connection's first connect look at them inside the room)."""
    allowed = {"_nats/errors", "_nats/streams", "_nats/connection"}
    for name, tree in modules().items():
        if name in allowed:
            continue
        named = {
            ast.unparse(node)
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and ast.unparse(node).startswith("nats.")
        }
        assert not any(".errors" in n for n in named), (name, named)
