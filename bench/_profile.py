"""Function-level summaries of pyinstrument profiles: where a workload's time goes."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

# Frames whose time we want to see as a share of the whole, by (module suffix, function).
WATCH = (
    "_runner.py:_session",
    "_runner.py:_advance",
    "_runner.py:_drive",
    "_runner.py:_flush",
    "_runner.py:_execute",
    "_runner.py:_catch_up",
    "_runner.py:_ingest_tail",
    "_runner.py:_settle",
    "_runner.py:_dispatch",
    "_runner.py:_arm",
    "_runner.py:run",
    "_log.py:append",
    "_log.py:acquire",
    "_log.py:release",
    "_log.py:read",
    "_log.py:decode",
    "_log.py:schedule",
    "_log.py:_publish",
    "_log.py:tail",
    "_log.py:publish_input",
    "_log.py:_on_read",
    "_replay.py:next",
    "_replay.py:ingest",
    "_replay.py:do",
    "_client.py:start",
    "_client.py:result",
    "_history.py:decode",
    "_history.py:encode",
    "client.py:_process_msg",
    "client.py:request",
    "client.py:publish",
    "client.py:subscribe",
    "client.py:_read_loop",
    "msg.py:ack",
    "msg.py:nak",
    "selector_events.py:_read_ready",
    "selector_events.py:_write_send",
    "base_events.py:_run_once",
    "selectors.py:select",
)


def _label(frame: Any) -> str:
    return f"{Path(frame.file_path or '').name}:{frame.function}"


def summarize(profiler: Any, top: int = 15) -> dict[str, Any]:
    """Self time by function (top ``top``), and the inclusive share of the ``WATCH`` frames."""
    session = profiler.last_session
    root = session.root_frame(trim_stem=False) if session is not None else None
    if root is None:
        return {"total_s": 0.0, "self": [], "inclusive": []}
    total = float(root.time) or 1e-9
    self_time: dict[str, float] = defaultdict(float)
    inclusive: dict[str, float] = defaultdict(float)

    def walk(frame: Any, open_labels: frozenset[str]) -> None:
        label = _label(frame)
        if not frame.is_synthetic:  # synthetic "[self]" leaves are counted in total_self_time
            self_time[label] += float(frame.total_self_time)
        if label in WATCH and label not in open_labels:
            inclusive[label] += float(frame.time)  # outermost occurrence only
            open_labels = open_labels | {label}
        for child in frame.children:
            walk(child, open_labels)

    walk(root, frozenset())
    by_self = sorted(self_time.items(), key=lambda kv: -kv[1])[:top]
    return {
        "total_s": round(total, 3),
        "self": [(name, round(100 * t / total, 1)) for name, t in by_self],
        "inclusive": [
            (name, round(100 * inclusive[name] / total, 1)) for name in WATCH if name in inclusive
        ],
    }


def write(profiler: Any, path: Path) -> None:
    """pyinstrument's call tree as text."""
    path.write_text(profiler.output_text(unicode=False, color=False, show_all=False))


def render(label: str, summary: dict[str, Any]) -> str:
    lines = [f"profile {label}: {summary['total_s']} s sampled"]
    lines.append("  inclusive %: " + ", ".join(f"{n} {p}" for n, p in summary["inclusive"]))
    lines.append("  self %:      " + ", ".join(f"{n} {p}" for n, p in summary["self"]))
    return "\n".join(lines)


def summarize_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """The same summary from py-spy's collapsed stacks (``frame;frame;... count`` lines)."""
    self_time: dict[str, float] = defaultdict(float)
    inclusive: dict[str, float] = defaultdict(float)
    total = 0
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        labels = []
        for frame in stack.split(";"):
            # "function (path/file.py:123)"
            function, _, where = frame.partition(" (")
            method = function.removesuffix(".<locals>.<genexpr>").rsplit(".", 1)[-1]
            labels.append(f"{Path(where.split(':')[0]).name}:{method}")
        self_time[labels[-1]] += count
        for label in set(labels):
            if label in WATCH:
                inclusive[label] += count
    total_f = float(total) or 1e-9
    by_self = sorted(self_time.items(), key=lambda kv: -kv[1])[:top]
    return {
        "samples": total,
        "total_s": round(total / 250, 3),
        "self": [(name, round(100 * t / total_f, 1)) for name, t in by_self],
        "inclusive": [
            (name, round(100 * inclusive[name] / total_f, 1)) for name in WATCH if name in inclusive
        ],
    }
