"""Bounds on what the journal records: every entry stays small enough to append.

An exception's text and traceback are not bounded by anything the user
controls: a 2 MB message would make the append itself fail, and the step
would run again and again with nothing recorded. So messages and reasons are
cut, tracebacks keep their innermost frames, and values are chunked.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

from . import history as h
from .errors import describe

MAX_ERROR_CHARS = 8 * 1024
VALUES_PER_ENTRY = 1000  # ctx.now/uuid/random values are < 64 bytes each
MAX_FRAMES = 30  # a recorded traceback keeps the innermost frames (~10 kB at most)


def cancelled_entry(seq: int, cancel: h.Cancel) -> h.RunCancelled:
    """The entry a cancel ends a run with (its reason cut like an error message)."""
    reason = cancel.reason
    if reason is not None and len(reason) > MAX_ERROR_CHARS:
        reason = reason[:MAX_ERROR_CHARS] + "... [cut]"
    return h.RunCancelled(reason=reason, input_seq=seq)


def error_info(exc: BaseException) -> h.ErrorInfo:
    """An exception as the journal records it: type, bounded message and frames."""
    type_, message = describe(exc)
    return bounded_error(type_, message, frames(exc))


_ENGINE = str(Path(__file__).resolve().parent.parent) + os.sep


def frames(exc: BaseException) -> list[h.Frame] | None:
    """Where ``exc`` was raised: the innermost ``MAX_FRAMES`` frames, names cut short."""
    if exc.__traceback__ is None:
        return None
    summary = list(traceback.extract_tb(exc.__traceback__))
    while len(summary) > 1 and summary[0].filename.startswith(_ENGINE):
        summary.pop(0)  # where jetlane called the user's code: noise to its reader
    return [
        h.Frame(file=f.filename[-200:], line=f.lineno or 0, function=f.name[:100])
        for f in summary[-MAX_FRAMES:]
    ]


def bounded_error(type_: str, message: str, trace: list[h.Frame] | None = None) -> h.ErrorInfo:
    """An error as the journal records it: the message cut to ``MAX_ERROR_CHARS``, the
    traceback to ``MAX_FRAMES`` frames (so an entry's size stays bounded)."""
    if len(message) > MAX_ERROR_CHARS:
        cut = len(message) - MAX_ERROR_CHARS
        message = f"{message[:MAX_ERROR_CHARS]}... [{cut} more characters cut]"
    return h.ErrorInfo(type=type_[:256], message=message, traceback=trace or None)


def where(info: h.ErrorInfo) -> list[str]:
    """A recorded traceback as log lines, ``file:line function``, outermost first."""
    return [f"{f.file}:{f.line} {f.function}" for f in info.traceback or []]
