"""Run the suite: ``python -m bench [--quick] [--only W1,W3] [--rounds N] [--sync-always]``.

Also ``--full`` (W5 at 100,000 runs) and ``--profile`` (pyinstrument trees and
function-level summaries of each workload, written next to the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog

from jetlane.embedded import EmbeddedNats

from . import (
    _profile,
    _report,
    floor,
    w1_latency,
    w2_throughput,
    w3_timers,
    w4_long,
    w5_parked,
    w6_read,
    w7_sporadic,
    w8_fanout,
    w9_children,
)
from ._harness import Bench, Settings

WORKLOADS: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "W1": w1_latency.run,
    "W2": w2_throughput.run,
    "W3": w3_timers.run,
    "W4": w4_long.run,
    "W5": w5_parked.run,
    "W6": w6_read.run,
    "W7": w7_sporadic.run,
    "W8": w8_fanout.run,
    "W9": w9_children.run,
}


def parse(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: well under a minute")
    parser.add_argument("--full", action="store_true", help="full sizes (W5: 100,000 runs)")
    parser.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W3")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per figure")
    parser.add_argument("--sync-always", action="store_true", help="fsync before every ack")
    parser.add_argument(
        "--profile", action="store_true", help="pyinstrument each workload; trees to results/"
    )
    parser.add_argument("--results", type=Path, default=None, help="where the JSON goes")
    args = parser.parse_args(argv)
    only = frozenset(w.strip().upper() for w in args.only.split(",") if w.strip())
    unknown = only - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    settings = Settings(
        quick=args.quick,
        full=args.full,
        rounds=args.rounds or (2 if args.quick else 5),
        sync_always=args.sync_always,
        only=only,
        profile=args.profile,
    )
    if args.results is not None:
        settings = Settings(**{**settings.__dict__, "results": args.results})
    return settings


async def suite(settings: Settings, url: str) -> Bench:
    bench = Bench(url=url, settings=settings)
    chosen = [w for w in WORKLOADS if not settings.only or w in settings.only]
    for name, run in [("floor", floor.run), *((w, WORKLOADS[w]) for w in chosen)]:
        t0 = time.perf_counter()
        print(f"{name} ...", flush=True)
        try:
            await run(bench)
        except Exception as exc:  # report what was measured; say what failed
            bench.note(f"{name} failed: {type(exc).__name__}: {exc}")
        print(f"{name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    return bench


def main(argv: list[str] | None = None) -> int:
    settings = parse(argv)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    load = {"before": list(os.getloadavg())}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jetlane-bench-") as tmp:
        server = EmbeddedNats(tmp, sync_always=settings.sync_always).start()
        try:
            bench = asyncio.run(suite(settings, server.url))
        finally:
            server.cleanup()
    load["after"] = list(os.getloadavg())
    elapsed = time.perf_counter() - began
    settings.results.mkdir(parents=True, exist_ok=True)
    meta = {
        "timestamp": stamp,
        "command": "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
        "elapsed_s": round(elapsed, 1),
        "settings": {**settings.__dict__, "only": sorted(settings.only), "results": None},
        "machine": _report.machine(load),
    }
    profiles = {}
    for label, profiler in (bench.profiles or {}).items():
        tree = settings.results / f"{stamp}-profile-{label}.txt"
        _profile.write(profiler, tree)
        summary = _profile.summarize(profiler)
        profiles[label] = {"tree": tree.name, **summary}
        print(_profile.render(label, summary))
    for label, collapsed in bench.spy.items():
        kept = settings.results / f"{stamp}-pyspy-{label}.txt"
        if collapsed.exists():
            kept.write_text(collapsed.read_text())
        summary = _profile.summarize_collapsed(kept)
        profiles[f"pyspy-{label}"] = {"tree": kept.name, **summary}
        print(_profile.render(f"py-spy {label} (runner process)", summary))
    data = _report.record(bench, {**meta, "profiles": profiles})
    path = settings.results / f"{stamp}.json"
    path.write_text(_report.dump(data))
    fsync = "fsync on every write" if settings.sync_always else "default fsync (not per write)"
    print()
    print(f"{meta['command']}  ({elapsed:.0f} s; {fsync}; {os.cpu_count()} cpus; load", end=" ")
    print(f"{' '.join(f'{x:.2f}' for x in load['before'])} before, ", end="")
    print(f"{' '.join(f'{x:.2f}' for x in load['after'])} after)")
    print(_report.table(bench))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
