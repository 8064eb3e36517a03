"""How the CLI shows runs: a readable live timeline in a terminal, JSON lines otherwise.

Design note. Every line is printed as soon as its message arrives, so the
timeline is live without a full-screen view (which would break scrollback and
copying). In a terminal a one-line spinner below the timeline says what the
run is doing now; it is transient and never reaches a pipe.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec
from rich.console import Console
from rich.status import Status as Spinner
from rich.text import Text

from .._core import history as h
from .._core.status import RunStatus, summarize

STYLES = {
    "start": "bold cyan",
    "event": "cyan",
    "cancel": "bold yellow",
    "timer": "cyan",
    "step_completed": "green",
    "sleep_completed": "green",
    "event_received": "green",
    "run_completed": "bold green",
    "step_failed": "red",
    "wait_timed_out": "red",
    "run_failed": "bold red",
    "run_cancelled": "bold yellow",
    "run_blocked": "bold magenta",
    "timer_set": "yellow",
    "wait_started": "yellow",
    "values_recorded": "dim",
    "invalid": "bold red",
}
STATUS_STYLES = {
    "completed": "bold green",
    "failed": "bold red",
    "cancelled": "bold yellow",
    "blocked": "bold magenta",
    "retrying": "yellow",
}


def want_json(flag: bool, stream: TextIO = sys.stdout) -> bool:
    """JSON lines with ``--json``, when ``JETLANE_OUTPUT=json``, or when not a terminal."""
    forced = os.environ.get("JETLANE_OUTPUT", "auto").lower()
    if flag or forced == "json":
        return True
    if forced == "text":
        return False
    return not stream.isatty()


def short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clock(stamp: str) -> str:
    """``HH:MM:SS.mmm`` of an RFC 3339 time (UTC), or the text as is."""
    if len(stamp) >= 19 and stamp[10] == "T":
        return (stamp[11:23] if stamp[19:20] == "." else stamp[11:19] + ".000").ljust(12)
    return stamp.ljust(12)


TRACE_LINES = 8  # innermost frames shown by `jetlane status` (--json has them all)


def describe(msg: h.Message) -> tuple[str, str, str]:
    """(step, attempt, detail) of a history message, for the human timeline."""
    fields = msgspec.to_builtins(msg.body)
    if not isinstance(fields, dict):
        return "", "", short(fields)
    step = str(fields.pop("step", "") or "")
    attempt = fields.pop("attempt", None)
    parts: list[str] = []
    error = fields.pop("error", None)
    if isinstance(error, dict):
        parts.append(f"{error.get('type')}: {error.get('message')}")
    if "duration_ms" in fields:
        parts.append(f"{float(fields.pop('duration_ms')):.0f} ms")
        fields.pop("started_at", None)
    if "retry_at" in fields:
        retry_at = fields.pop("retry_at")
        parts.append(f"retry at {clock(retry_at).strip()}" if retry_at else "no attempt left")
    for key in ("fire_at", "timeout_at"):
        if key in fields:
            parts.append(f"{key.split('_')[0]} at {clock(str(fields.pop(key))).strip()}")
    fields.pop("input_seq", None)
    fields.pop("timer", None)
    for key, value in fields.items():
        if value is not None:
            parts.append(f"{key}={value}" if isinstance(value, str) else f"{key}={short(value)}")
    return step, f"#{attempt}" if attempt is not None else "", "  ".join(parts)


def timeline_line(msg: h.Message, *, show_run: bool = False, after_end: bool = False) -> Text:
    step, attempt, detail = describe(msg)
    if after_end:
        detail = f"{detail}  (after the end: nothing acts on it)".lstrip()
    arrow = "→" if msg.direction == "in" else "←"
    line = Text(clock(msg.time), style="dim")
    if show_run:
        line.append(f" {msg.run_id[:24]:<24}", style="blue")
    line.append(f" {arrow} ")
    line.append(f"{msg.kind:<16}", style=STYLES.get(msg.kind, ""))
    line.append(f" {step:<20} {attempt:<3} ")
    line.append(detail, style="red" if msg.kind in ("step_failed", "run_failed") else "")
    return line


def status_text(status: RunStatus, now: datetime | None = None) -> Text:
    """One line: the status, the step, what it waits for and until when, and a pause.
    A wait whose time has passed shows as due, never as pending."""
    text = Text(f"run {status.run_id} ({status.job}): ")
    text.append(status.status, style=STATUS_STYLES.get(status.status, "bold"))
    if status.paused and not status.done:
        text.append(", paused", style="bold yellow")
    if status.step:
        text.append(f" at step {status.step}")
        if status.attempt:
            text.append(f" (attempt {status.attempt})")
    if status.waiting_for:
        what = (
            "a timer"
            if status.waiting_for == "timer"
            else f"child {status.waiting_for}"  # "run <id>": a step.invoke
            if status.waiting_for.startswith("run ")
            else f"event {status.waiting_for!r}"
        )
        text.append(f", waiting for {what}")
        due = status.due_since(now or datetime.now(UTC))
        if due is not None:
            kind = "timeout" if status.status == "waiting" else "timer"
            after = "acts when resumed" if status.paused else "overdue"
            text.append(f"; {kind} due since {due} ({after})", style="yellow")
        elif status.until:
            text.append(f" until {status.until}")
    if status.paused and not status.done:
        who = f" by {status.paused_by}" if status.paused_by else ""
        since = f" since {status.paused_at}" if status.paused_at else ""
        why = f": {status.paused_reason}" if status.paused_reason else ""
        text.append(f"; paused{who}{since}{why}", style="yellow")
    return text


class _Console(Console):
    """rich's console, but a reader that went away (``| head``) raises ``BrokenPipeError``
    for the CLI to exit 141 quietly, as in JSON mode; rich's own way exits 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


class Printer:
    """Prints history messages and statuses in the chosen format."""

    def __init__(self, *, json_lines: bool, show_run: bool = False, out: TextIO | None = None):
        self.json_lines = json_lines
        self.show_run = show_run
        self.out = out or sys.stdout
        self.console = _Console(file=self.out, highlight=False, soft_wrap=True)
        self._spinner: Spinner | None = None
        self._seen: list[h.Message] = []
        self._ended: set[str] = set()  # runs whose terminal entry was printed

    def emit(self, value: Any) -> None:
        """One JSON line (JSON mode only)."""
        self.out.write(msgspec.json.encode(value).decode() + "\n")
        self.out.flush()

    def say(self, text: str | Text, *, style: str = "") -> None:
        """A line for a person; nothing in JSON mode."""
        if not self.json_lines:
            self.console.print(text, style=style)

    def message(self, msg: h.Message) -> None:
        if self.json_lines:
            self.emit(msg.to_json())
            return
        after_end = msg.run_id in self._ended and msg.direction == "in"
        if isinstance(msg.body, h.TERMINAL):
            self._ended.add(msg.run_id)
        self.console.print(timeline_line(msg, show_run=self.show_run, after_end=after_end))
        if self._spinner is not None and msg.run_id:
            self._seen.append(msg)
            status = summarize(msg.run_id, self._seen)
            if status is not None:
                self._spinner.update(status_text(status))

    def status(self, status: RunStatus) -> None:
        if self.json_lines:
            self.emit(msgspec.to_builtins(status))
            return
        self.console.print(status_text(status))
        rows = [
            ("created", status.created_at),
            ("updated", status.updated_at),
            ("entries", str(status.history_length)),
        ]
        if status.error is not None:
            rows.append(("error", f"{status.error.type}: {status.error.message}"))
            for frame in (status.error.traceback or [])[-TRACE_LINES:]:
                rows.append(("", f"  at {frame.file}:{frame.line} in {frame.function}"))
        if status.status == "completed":
            rows.append(("output", short(status.output, 400)))
        if status.detail:
            rows.append(("detail", status.detail))
        if status.events_after_end:
            count = status.events_after_end
            rows.append(
                (
                    "late",
                    f"{count} event{'s' if count > 1 else ''} stored after the end (forced);"
                    " nothing acts on them",
                )
            )
        if status.parent is not None:
            rows.append(("parent", f"{status.parent.run_id} (step {status.parent.step})"))
        for child in status.children:
            # one line per child run its steps started
            rows.append(
                ("child", f"{child.run_id} ({child.job}, step {child.step}): {child.status}")
            )
        for key, value in rows:
            self.console.print(f"  {key:<8} {value}")

    @contextmanager
    def live(self, what: str) -> Iterator[None]:
        """A transient spinner line while following a run (terminal, text mode only)."""
        if self.json_lines or not self.console.is_terminal:
            yield
            return
        with self.console.status(what) as spinner:
            self._spinner = spinner
            try:
                yield
            finally:
                self._spinner = None
