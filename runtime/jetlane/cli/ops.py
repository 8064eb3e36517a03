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
        if args.runs_command == "rebuild-index":
            count = await client.rebuild_index()
            print(
                msgspec.json.encode({"indexed": count}).decode()
                if json_lines
                else f"indexed {count} runs"
            )
            return 0
        runs, cursor = await client.list_runs(
            job=args.job, status=args.status, limit=args.limit, cursor=args.cursor
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


def _paused(run: Any) -> str:
    if not run.paused or run.done:
        return "-"
    return f"yes (by {run.paused_by})" if run.paused_by else "yes"


def _lines(runs: list[Any], json_lines: bool) -> list[str]:
    if json_lines:
        return [msgspec.json.encode(r).decode() for r in runs]
    rows = [("RUN", "JOB", "STATUS", "PAUSED", "STEP", "CREATED")]
    rows += [(r.run_id, r.job, r.status, _paused(r), r.step or "-", r.created_at) for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
