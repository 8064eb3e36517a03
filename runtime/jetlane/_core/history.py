"""The wire protocol (v1): every message a run's log holds, as frozen msgspec Structs.

The kind travels in the ``Jetlane-Kind`` header, not in the body, so that
outside publishers send plain JSON bodies. Inputs arrive on
``jetlane.run.<id>.in``; journal entries are written by runners on
``jetlane.run.<id>.out``. New fields always get defaults so that old
histories keep decoding; fields are never renamed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from .errors import ConfigError, DecodeError

VERSION: Final = "1"
KIND_HEADER: Final = "Jetlane-Kind"
VERSION_HEADER: Final = "Jetlane-Version"
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
JOB_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# A runner's build (rolling upgrades): one subject token, so no dots.
BUILD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _Wire(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    pass


class Frame(_Wire, frozen=True):
    """One frame of a recorded traceback."""

    file: str
    line: int
    function: str


class ErrorInfo(_Wire, frozen=True, omit_defaults=True):
    type: str
    message: str
    traceback: list[Frame] | None = None  # innermost last, at most 30 frames (jetlane 0.2)


# -- inputs (.in) -------------------------------------------------------------


class Parent(_Wire, frozen=True, omit_defaults=True):
    """On a child run's ``start``: the run and step that started it (jetlane 0.3).

    ``detached`` marks a ``step.start_run`` child: it does not report its end."""

    run_id: str
    step: str
    detached: bool = False


class Start(_Wire, frozen=True, omit_defaults=True):
    job: str
    input: Any = None
    parent: Parent | None = None  # a child run: who started it (added in v1.2)


class Event(_Wire, frozen=True):
    type: str
    payload: Any = None


class Cancel(_Wire, frozen=True):
    reason: str | None = None


class Pause(_Wire, frozen=True):
    """Hold the run: no step starts until a ``resume`` (inputs still accumulate)."""

    reason: str | None = None
    by: str | None = None  # who paused it, as the sender says (jetlane 0.3)


class Resume(_Wire, frozen=True):
    pass


class Pin(_Wire, frozen=True):
    """Move the run to the runners of ``build`` (an operator's re-pin, or an adoption)."""

    build: str
    reason: str | None = None


class Timer(_Wire, frozen=True):
    """A fired message schedule (written by the server on a runner's behalf)."""

    timer: str
    step: str = ""
    purpose: str = ""


class ChildEnded(_Wire, frozen=True, omit_defaults=True):
    """On a parent's inbox: a child run it waits on ended (written by the child's runner).

    ``status`` is ``completed`` (with ``output``), ``failed`` or ``cancelled`` (with
    ``error``)."""

    run_id: str
    status: str
    output: Any = None
    error: ErrorInfo | None = None


CHILD_STATUSES: Final = ("completed", "failed", "cancelled")

Input = Start | Event | Cancel | Pause | Resume | Timer | Pin | ChildEnded

# -- journal (.out) -----------------------------------------------------------


class RunStarted(_Wire, frozen=True):
    """Written first, by a runner with a build id: the build the run is pinned to."""

    build: str | None = None


class StepCompleted(_Wire, frozen=True):
    step: str
    attempt: int
    result: Any
    started_at: str
    duration_ms: float


class StepFailed(_Wire, frozen=True):
    step: str
    attempt: int
    error: ErrorInfo
    retry_at: str | None = None


class TimerSet(_Wire, frozen=True):
    step: str
    timer: str
    fire_at: str
    purpose: str


class SleepCompleted(_Wire, frozen=True):
    step: str
    input_seq: int | None = None


# ``types`` (added in v1.1, absent otherwise) marks a step.wait_for_any: the types it
# waits for. ``type`` stays: the first of them in wait_started and wait_timed_out, the
# type of the event taken in event_received.


class WaitStarted(_Wire, frozen=True, omit_defaults=True):
    step: str
    type: str
    timeout_at: str
    types: list[str] | None = None


class EventReceived(_Wire, frozen=True, omit_defaults=True):
    step: str
    type: str
    input_seq: int
    types: list[str] | None = None


class WaitTimedOut(_Wire, frozen=True, omit_defaults=True):
    step: str
    type: str
    input_seq: int | None = None
    types: list[str] | None = None


# Child runs (added in v1.2). ``child_started`` is written once the child's start is
# stored (create-once, so writing it twice is harmless); ``error`` when the start was
# refused (the run id is another run's). ``detached`` marks a step.start_run.


class ChildStarted(_Wire, frozen=True, omit_defaults=True):
    step: str
    run_id: str
    job: str
    timeout_at: str | None = None
    detached: bool = False
    error: ErrorInfo | None = None


class ChildResult(_Wire, frozen=True):
    """A step.invoke took its child's end: the ``child_ended`` input at ``input_seq``."""

    step: str
    run_id: str
    status: str
    input_seq: int


class ChildTimedOut(_Wire, frozen=True):
    """A step.invoke's timeout passed before its child ended (the child is cancelled)."""

    step: str
    run_id: str


class ValuesRecorded(_Wire, frozen=True):
    values: list[Any]


class RunBlocked(_Wire, frozen=True):
    step: str
    error: ErrorInfo


class RunCompleted(_Wire, frozen=True):
    output: Any = None


class RunFailed(_Wire, frozen=True):
    error: ErrorInfo


class RunCancelled(_Wire, frozen=True):
    reason: str | None = None
    input_seq: int | None = None


Journal = (
    RunStarted
    | StepCompleted
    | StepFailed
    | TimerSet
    | SleepCompleted
    | WaitStarted
    | EventReceived
    | WaitTimedOut
    | ChildStarted
    | ChildResult
    | ChildTimedOut
    | ValuesRecorded
    | RunBlocked
    | RunCompleted
    | RunFailed
    | RunCancelled
)
Body = Input | Journal

INPUT_KINDS: Final[dict[str, type[Any]]] = {
    "start": Start,
    "event": Event,
    "cancel": Cancel,
    "pause": Pause,
    "resume": Resume,
    "timer": Timer,
    "pin": Pin,
    "child_ended": ChildEnded,
}
JOURNAL_KINDS: Final[dict[str, type[Any]]] = {
    "run_started": RunStarted,
    "step_completed": StepCompleted,
    "step_failed": StepFailed,
    "timer_set": TimerSet,
    "sleep_completed": SleepCompleted,
    "wait_started": WaitStarted,
    "event_received": EventReceived,
    "wait_timed_out": WaitTimedOut,
    "child_started": ChildStarted,
    "child_result": ChildResult,
    "child_timed_out": ChildTimedOut,
    "values_recorded": ValuesRecorded,
    "run_blocked": RunBlocked,
    "run_completed": RunCompleted,
    "run_failed": RunFailed,
    "run_cancelled": RunCancelled,
}
TERMINAL: Final = (RunCompleted, RunFailed, RunCancelled)


def ended_as(terminal: RunCompleted | RunFailed | RunCancelled) -> str:
    """The status a terminal entry ends a run with: completed, failed or cancelled."""
    if isinstance(terminal, RunCompleted):
        return "completed"
    return "failed" if isinstance(terminal, RunFailed) else "cancelled"


KIND_OF: Final[dict[type[Any], str]] = {
    t: k for kinds in (INPUT_KINDS, JOURNAL_KINDS) for k, t in kinds.items()
}
_DECODERS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    k: msgspec.json.Decoder(t) for kinds in (INPUT_KINDS, JOURNAL_KINDS) for k, t in kinds.items()
}
_encoder = msgspec.json.Encoder()


class Invalid(msgspec.Struct, frozen=True):
    """Stands in for a stored message that does not decode (the engine skips it)."""

    reason: str


class Message(msgspec.Struct, frozen=True):
    """One message of a run's history, as read back from the stream."""

    seq: int
    run_id: str
    direction: str  # "in" or "out"
    kind: str
    body: Any
    time: str = ""

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON-ready dict (what ``history --json`` prints)."""
        return {
            "seq": self.seq,
            "run_id": self.run_id,
            "direction": self.direction,
            "kind": self.kind,
            "time": self.time,
            # Through JSON, not to_builtins: bodies the core just wrote hold msgspec.Raw.
            "body": msgspec.json.decode(_encoder.encode(self.body)),
        }


def kind_of(body: Body) -> str:
    return KIND_OF[type(body)]


def encode(body: Body) -> bytes:
    return _encoder.encode(body)


def decode(kind: str | None, data: bytes, *, direction: str | None = None) -> Body:
    """Decode one body; any failure is a ``DecodeError`` that says why."""
    if kind is None:
        raise DecodeError("missing Jetlane-Kind header")
    table = {"in": INPUT_KINDS, "out": JOURNAL_KINDS}.get(direction or "")
    if table is not None and kind not in table:
        raise DecodeError(f"kind {kind!r} is not allowed on .{direction}")
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise DecodeError(f"unknown kind {kind!r}")
    try:
        body: Body = decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise DecodeError(f"bad {kind} body: {exc}") from None
    if isinstance(body, Event) and not body.type:
        raise DecodeError("event type is empty")
    if isinstance(body, Start | ChildStarted) and not JOB_NAME.fullmatch(body.job):
        raise DecodeError(f"{kind} names an invalid job {body.job[:64]!r}")
    child = (
        body.parent.run_id
        if isinstance(body, Start) and body.parent is not None
        else body.run_id
        if isinstance(body, ChildEnded | ChildStarted | ChildResult | ChildTimedOut)
        else None
    )
    if child is not None and not RUN_ID.fullmatch(child):
        raise DecodeError(f"{kind} names an invalid run id {child[:64]!r}")
    if isinstance(body, ChildEnded | ChildResult) and body.status not in CHILD_STATUSES:
        raise DecodeError(f"{kind} has an invalid status {body.status[:64]!r}")
    build = getattr(body, "build", None) if isinstance(body, Pin | RunStarted) else None
    if (build is not None or isinstance(body, Pin)) and not BUILD_ID.fullmatch(build or ""):
        raise DecodeError(f"{kind} names an invalid build {str(build)[:64]!r}")
    return body


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ConfigError(
            f"run id {str(run_id)[:64]!r} is invalid: use 1-128 characters of A-Z a-z 0-9 _ -"
        )
    return run_id


def check_build_id(build: str) -> str:
    if not isinstance(build, str) or not BUILD_ID.fullmatch(build):
        raise ConfigError(
            f"build id {str(build)[:64]!r} is invalid: use 1-64 characters of A-Z a-z 0-9 _ - "
            "(a git sha, or v1-4-2 for 1.4.2: it is a NATS subject token)"
        )
    return build


def pinned_build(messages: Iterable[Message]) -> str | None:
    """The build a run is pinned to: its latest ``pin`` input, else its ``run_started``
    entry, in stream order; None for a run no build owns (any runner serves it)."""
    build = None
    for msg in messages:
        if isinstance(msg.body, Pin | RunStarted):
            build = msg.body.build
    return build


def check_job_name(name: str) -> str:
    if not isinstance(name, str) or not JOB_NAME.fullmatch(name):
        raise ConfigError(
            f"job name {str(name)[:64]!r} is invalid: use 1-128 of A-Z a-z 0-9 _ . : -"
        )
    return name
