"""What the replay core says: decisions for the driver, effects to write, timer tokens.

The vocabulary of "inputs in, decisions out": the core (``_replay``) returns a
``Decision`` and leaves ``Effect``s in its outbox; a driver (the runner, or a
test) acts on them and answers ``Execute`` with an ``Outcome``.
"""

from __future__ import annotations

import hashlib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from . import history as h


def timer_token(step: str, purpose: str, attempt: int) -> str:
    """A subject-safe token for a step's timer: the same on every runner and replay."""
    digest = hashlib.blake2b(step.encode(), digest_size=8).hexdigest()
    return f"{purpose}-{attempt}-{digest}"


# -- decisions ------------------------------------------------------------------


@dataclass(frozen=True)
class Execute:
    """Run attempt ``attempt`` of step ``step`` and reply with an ``Outcome``."""

    step: str
    attempt: int
    fn: Callable[[], Any]
    timeout: float | None


@dataclass(frozen=True)
class TimerSpec:
    token: str
    fire_at: datetime
    body: h.Timer
    rearm: bool = False


@dataclass(frozen=True)
class Park:
    """Nothing to do until an input arrives; ``timers`` are what the run waits on."""

    step: str
    timers: tuple[TimerSpec, ...] = ()


@dataclass(frozen=True)
class Finished:
    """The run reached a terminal entry (already in the outbox)."""

    entry: h.RunCompleted | h.RunFailed | h.RunCancelled


@dataclass(frozen=True)
class Blocked:
    """The code does not match the history; retry once other code is deployed."""

    step: str
    error: h.ErrorInfo


@dataclass(frozen=True)
class Checkpoint:
    """A step's outcome is in the outbox: write it, then reply (``None``) to go on.

    The handler waits here until the driver has appended the outcome, so a
    cancel or pause that the fenced append brings in is known before the
    handler decides anything after the step (take an event, arm a sleep, start
    the next step). A paused driver parks the run here instead of replying.
    """


@dataclass(frozen=True)
class Waiting:
    """Steps are executing and the handler has nothing else to ask: reply with the
    ``Outcome`` of whichever finishes first (or ``None`` when ``Replay.changed()``
    fires first)."""


Decision = Execute | Checkpoint | Waiting | Park | Finished | Blocked


@dataclass(frozen=True)
class Outcome:
    """The driver's reply to ``Execute``."""

    started_at: datetime
    duration_ms: float
    result: Any = None
    error: BaseException | None = None
    step: str = ""  # the step id of the Execute this answers (several may be in flight)


# -- outbox ---------------------------------------------------------------------


@dataclass(frozen=True)
class Append:
    body: h.Journal


@dataclass(frozen=True)
class Schedule:
    token: str
    fire_at: datetime
    body: h.Timer


@dataclass(frozen=True)
class Unschedule:
    token: str  # "*" means every timer of the run


@dataclass(frozen=True)
class StartChild:
    """Store the child run's ``start`` (create-once), then append ``entry`` (its
    ``child_started``; with ``error`` when the run id is another run's)."""

    start: h.Start
    entry: h.ChildStarted


@dataclass(frozen=True)
class CancelChild:
    """Publish a ``cancel`` to a child run (idempotent: a message id per child)."""

    run_id: str
    reason: str


@dataclass(frozen=True)
class NotifyParent:
    """Publish the run's end (its terminal entry as written) to its parent's inbox."""

    parent: str


Effect = Append | Schedule | Unschedule | StartChild | CancelChild | NotifyParent


_hint_cache: dict[Any, Any] = {}


def typed_result(value: Any, fn: Callable[[], Any]) -> Any:
    """A recorded result, shaped as ``fn``'s annotated return type when it has one."""
    if isinstance(value, msgspec.Raw):
        value = msgspec.json.decode(value)
    code = getattr(fn, "__code__", None)
    if code is None or "return" not in getattr(fn, "__annotations__", {}):
        return value
    target = _hint_cache.get(code)
    if target is None:
        try:
            target = typing.get_type_hints(fn).get("return", Any)
        except Exception:  # annotations that do not resolve: return the value untyped
            target = Any
        target = _unwrap_awaitable(target)
        _hint_cache[code] = target
    if target is Any:
        return value
    try:
        return msgspec.convert(value, target, strict=False)
    except (msgspec.ValidationError, TypeError):
        return value


def _unwrap_awaitable(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is not None and getattr(origin, "__name__", "") in ("Coroutine", "Awaitable"):
        args = typing.get_args(tp)
        return args[-1] if args else Any
    return tp
