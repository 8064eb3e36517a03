"""The operations commands: ``jetlane api`` and ``jetlane runs``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec

from .._client import Client
from .._core.errors import ConfigError
from .._core.status import STATUS_FILTERS, check_status_filter

OpenClient = Callable[..., AbstractAsyncContextManager[Client]]


def add_commands(
    sub: Any,
    conn: argparse.ArgumentParser,
    out: argparse.ArgumentParser,
    flag: Callable[..., None],
    switch: Callable[..., None],
) -> None:
    api = sub.add_parser(
        "api",
        parents=[conn],
        help="serve the HTTP API (start runs, send events, status, history, list)",
        description="The HTTP API over the same log (OpenAPI at /openapi.json).",
    )
    flag(api, "--host", "JETLANE_API_HOST", "address to bind", "127.0.0.1")
    flag(api, "--port", "JETLANE_API_PORT", "port to listen on", 8080, type=int)
    flag(api, "--api-token", "JETLANE_API_TOKEN", "require this bearer token on every call")
    switch(
        api,
        "--queue-unserved",
        "JETLANE_API_QUEUE_UNSERVED",
        "accept starts for jobs no runner serves yet (queued) instead of 404",
    )

    runs = sub.add_parser("runs", parents=[conn, out], help="list runs from the run index")
    actions = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[conn, out], help="runs, newest first")
    listing.add_argument("--job", help="only runs of this job")
    listing.add_argument(
        "--status",
        help=f"only runs in this status, or paused ones: {', '.join(STATUS_FILTERS)}",
    )
    listing.add_argument("--limit", type=int, default=50, help="page size (default 50)")
    listing.add_argument("--cursor", help="the cursor a previous page printed")
    listing.add_argument("--build", help="only runs pinned to this build")
    actions.add_parser(
        "waiting",
        parents=[conn, out],
        help="runs waiting for a runner: job unserved, code blocked, or their build drained",
    )
    pin = actions.add_parser(
        "pin",
        parents=[conn, out],
        help="move runs to the runners of another build (after draining theirs)",
        description="Send a `pin` input: the run is advanced only by runners of --build "
        "from its next wake-up on (it blocks visibly if that code does not fit its history).",
    )
    pin.add_argument("run_ids", nargs="*", metavar="RUN", help="runs to re-pin")
    pin.add_argument("--build", required=True, help="the build to pin them to")
    pin.add_argument("--from-build", help="re-pin every run pinned to this build not ended")
    pin.add_argument("--reason", help="recorded with the pin in each run's history")
    actions.add_parser(
        "rebuild-index",
        parents=[conn, out],
        help="recompute the run index from every history (it is derived data)",
    )


async def cmd_api(args: argparse.Namespace, open_client: OpenClient) -> int:
    from ..api import api_server

    async with open_client(args, long_lived=True) as client:
        server = api_server(
            client,
            args.host,
            args.port,
            token=args.api_token or None,
            queue_unserved=args.queue_unserved,
        )
        # Our own handlers: uvicorn's re-raise the signal after a graceful stop, so
        # the process would die of SIGTERM instead of exiting 0.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        print(f"jetlane api: http://{args.host}:{args.port} (OpenAPI at /openapi.json)", flush=True)
        try:
            await server.serve()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    return 0


async def cmd_runs(args: argparse.Namespace, open_client: OpenClient, json_lines: bool) -> int:
    if getattr(args, "status", None) is not None:
        check_status_filter(args.status)  # a usage error (exit 2) before any connection
    async with open_client(args, long_lived=False) as client:
        if args.runs_command == "waiting":
            marks = await client.waiting_runs()
            return _print_waiting(marks, json_lines)
        if args.runs_command == "pin":
            return await _pin(client, args, json_lines)
        if args.runs_command == "rebuild-index":
            count = await client.rebuild_index()
            print(
                msgspec.json.encode({"indexed": count}).decode()
                if json_lines
                else f"indexed {count} runs"
            )
            return 0
        runs, cursor = await client.list_runs(
            job=args.job, status=args.status, limit=args.limit, cursor=args.cursor, build=args.build
        )
    for line in _lines(runs, json_lines):
        print(line)
    if cursor is not None:
        print(
            msgspec.json.encode({"cursor": cursor}).decode()
            if json_lines
            else f"more: --cursor {cursor}"
        )
    return 0


async def _pin(client: Client, args: argparse.Namespace, json_lines: bool) -> int:
    if not args.run_ids and not args.from_build:
        raise ConfigError("runs pin needs RUN ids or --from-build OLD")
    moved = []
    for run_id in args.run_ids:
        if await client.pin(run_id, args.build, args.reason):
            moved.append(run_id)
        elif not json_lines:
            print(f"{run_id}: already ended; nothing sent")
    if args.from_build:
        moved += await client.pin_build(args.from_build, args.build, args.reason)
    for run_id in moved:
        print(
            msgspec.json.encode({"run_id": run_id, "build": args.build}).decode()
            if json_lines
            else f"{run_id}: pinned to build {args.build}"
        )
    return 0


def _print_waiting(marks: list[tuple[str, str, str]], json_lines: bool) -> int:
    if json_lines:
        for run_id, job, why in marks:
            print(msgspec.json.encode({"run_id": run_id, "job": job, "why": why}).decode())
    else:
        waits = {"unserved": "a runner of its job", "blocked": "code that fits its history"}
        rows: list[tuple[str, ...]] = [("RUN", "JOB", "WAITS FOR")]
        rows += [
            (r, j, f"a runner of build {w[6:]}" if w.startswith("build:") else waits.get(w, w))
            for r, j, w in marks
        ]
        for line in _table(rows):
            print(line)
    return 0


def _paused(run: Any) -> str:
    if not run.paused or run.done:
        return "-"
    return f"yes (by {run.paused_by})" if run.paused_by else "yes"


def _lines(runs: list[Any], json_lines: bool) -> list[str]:
    if json_lines:
        return [msgspec.json.encode(r).decode() for r in runs]
    rows: list[tuple[str, ...]] = [("RUN", "JOB", "STATUS", "PAUSED", "STEP", "CREATED")]
    rows += [(r.run_id, r.job, r.status, _paused(r), r.step or "-", r.created_at) for r in runs]
    if any(r.build for r in runs):  # pinned runs (rolling upgrades): show their build
        builds = ["BUILD", *(r.build or "-" for r in runs)]
        rows = [(*row, build) for row, build in zip(rows, builds, strict=True)]
    return _table(rows)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
