"""The table and the JSON record of one run of the suite."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from typing import Any

from jetlane.embedded import server_binary

from ._harness import ROOT, Bench
from ._stats import Figure


def ratio(bench: Bench, fig: Figure) -> float | None:
    base = bench.floor_value(fig.floor) if fig.floor else None
    if base is None or not fig.samples or base == 0:
        return None
    return fig.median / base


def _num(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def table(bench: Bench) -> str:
    header = ("figure", "median", "min-max", "unit", "vs floor", "goal", "met")
    rows = [header]
    for fig in bench.figures:
        r = ratio(bench, fig)
        met = fig.goal.met(fig.median, r) if fig.goal and fig.samples else None
        rows.append(
            (
                fig.key,
                _num(fig.median),
                f"{_num(fig.low)}-{_num(fig.high)}",
                fig.unit,
                f"{r:.2f}x" if r is not None else "",
                fig.goal.describe(fig.unit) if fig.goal else "",
                {True: "yes", False: "NO", None: ""}[met],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    out = []
    for i, row in enumerate(rows):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def machine(load: dict[str, list[float]]) -> dict[str, Any]:
    try:
        version = subprocess.run(
            [server_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception as exc:
        version = f"unknown ({exc})"
    model = ""
    try:
        with open("/proc/cpuinfo") as info:
            model = next((ln.split(":", 1)[1].strip() for ln in info if "model name" in ln), "")
    except OSError:
        pass

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], capture_output=True, text=True, timeout=10, cwd=ROOT
            ).stdout.strip()
        except Exception:
            return ""

    return {
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "runtime_uncommitted": git("status", "--porcelain", "runtime").splitlines(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "nats_server": version,
        "loadavg": load,
    }


def record(bench: Bench, meta: dict[str, Any]) -> dict[str, Any]:
    figures = []
    for fig in bench.figures:
        r = ratio(bench, fig)
        figures.append(
            {
                "key": fig.key,
                "unit": fig.unit,
                "median": fig.median if fig.samples else None,
                "min": fig.low if fig.samples else None,
                "max": fig.high if fig.samples else None,
                "samples": fig.samples,
                "floor": fig.floor,
                "ratio_to_floor": r,
                "goal": fig.goal.describe(fig.unit) if fig.goal else None,
                "met": fig.goal.met(fig.median, r) if fig.goal and fig.samples else None,
                "note": fig.note,
            }
        )
    return {**meta, "figures": figures, "notes": bench.notes}


def dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, default=str)
