"""Every error jetlane raises.

The tree, split by what the caller does next::

    JetlaneError                      root of everything jetlane raises
    ├── ConfigError                   bad argument, duration, name or setting: fix the call
    ├── DecodeError                   a wire message that does not decode: dead-lettered
    ├── InputError                    a start whose input does not fit the job's input type
    ├── PayloadTooLarge               a value over the size limit: never retried
    ├── RunAlreadyExists              a second start with an id that is taken
    ├── RunNotFound                   an event, cancel or read for a run that does not exist
    ├── ConnectError                  the NATS server cannot be reached
    ├── Unavailable                   NATS or JetStream failed a call (retry later)
    │   ├── NoResponders              nobody listens on the subject (no runner serves it)
    │   └── NatsTimeout               NATS did not answer in time (also a TimeoutError)
    ├── StreamMismatch                the stream exists with settings jetlane cannot use
    ├── FenceLost                     another writer appended to the run's log first
    ├── NonDeterminismError           the code issues other atoms than the history records
    ├── StepTimeout                   a step attempt ran past its timeout (recorded, retried)
    ├── RunFailedError                result() of a run that failed or was cancelled
    ├── Failure                       raise in handler code: fail the run on purpose
    └── StepError                     raised *inside* a handler
        ├── StepFailed                a step.do whose attempts are exhausted
        ├── EventTimeout              a wait_for_event whose timeout passed first
        ├── ChildFailed               a step.invoke whose child run failed or was cancelled
        └── ChildTimeout              a step.invoke whose timeout passed first

    NonRetryableError                 raised by user code in step.do: fail now, no retry
    ├── Failure                       (also a JetlaneError)
    └── OrchestratorOnly              ctx.now()/uuid()/random() called inside a step
                                      (also a ConfigError)

Which exceptions end a run: see ``deliberate``. Any other exception raised by
handler code outside the atoms is a bug; the run blocks until fixed code runs it.

Engine control flow (a run suspending, a replay that must stop) uses private
``BaseException`` subclasses so that a handler's ``except Exception`` cannot
swallow it.
"""

from __future__ import annotations

from typing import Any


class JetlaneError(Exception):
    """Root of every error jetlane raises."""


class ConfigError(JetlaneError, ValueError):
    """A bad argument, duration, name or setting."""


class DecodeError(JetlaneError, ValueError):
    """A wire message that does not decode into any known kind."""


class InputError(JetlaneError, ValueError):
    """A start input that does not convert to the job's input type."""


class PayloadTooLarge(JetlaneError, ValueError):
    """A step result, input, output or event payload over the size limit."""


class RunAlreadyExists(JetlaneError):
    """A start for a run id that already has a run."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} already exists")
        self.run_id = run_id


class RunNotFound(JetlaneError, LookupError):
    """An operation on a run id that has no run."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} does not exist")
        self.run_id = run_id


class RunEnded(JetlaneError):
    """An event for a run that has already ended: refused unless forced."""

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(
            f"run {run_id!r} has already ended ({status}); the event was not sent "
            "(force it to store it anyway: nothing acts on it)"
        )
        self.run_id = run_id
        self.status = status


class ConnectError(JetlaneError, ConnectionError):
    """The NATS server cannot be reached or refused the connection."""


class FenceLost(JetlaneError):
    """Another writer appended to the run's log first (the fence refused ours)."""


class Unavailable(JetlaneError):
    """NATS or JetStream failed a call (connection lost, no leader, refused): retry later."""


class NoResponders(Unavailable):
    """Nobody listens on the subject asked (no runner serves the job)."""


class NatsTimeout(Unavailable, TimeoutError):
    """NATS did not answer in time."""


class StreamMismatch(JetlaneError):
    """The jetlane stream exists with settings jetlane cannot work with."""


class NonDeterminismError(JetlaneError):
    """The handler issued other atoms than the run's history records."""


class StepTimeout(JetlaneError, TimeoutError):
    """A step attempt ran past its ``timeout``: recorded as a failed attempt and retried."""


class RunFailedError(JetlaneError):
    """The run ended failed or cancelled; ``type`` and ``message`` come from its log."""

    def __init__(self, run_id: str, status: str, type: str, message: str) -> None:
        super().__init__(f"run {run_id!r} {status}: {type}: {message}")
        self.run_id = run_id
        self.status = status
        self.type = type
        self.message = message


class StepError(JetlaneError):
    """Raised inside a handler by an atom."""


class StepFailed(StepError):
    """A ``step.do`` whose attempts are exhausted (or that failed non-retryably)."""

    def __init__(self, step: str, attempts: int, type: str, message: str) -> None:
        super().__init__(f"step {step!r} failed after {attempts} attempt(s): {type}: {message}")
        self.step = step
        self.attempts = attempts
        self.type = type
        self.message = message


class EventTimeout(StepError, TimeoutError):
    """A ``step.wait_for_event`` (or ``wait_for_any``) whose timeout passed first."""

    def __init__(self, step: str, type: str, types: tuple[str, ...] | None = None) -> None:
        what = " or ".join(repr(t) for t in types) if types else repr(type)
        super().__init__(f"step {step!r} timed out waiting for an event of type {what}")
        self.step = step
        self.type = type
        self.types = types or (type,)  # every type waited for (step.wait_for_any)


class ChildFailed(StepError):
    """A ``step.invoke`` whose child run failed or was cancelled (``status``), or a
    child that could not be started (``status`` ``rejected``: its run id is taken)."""

    def __init__(self, step: str, run_id: str, status: str, type: str, message: str) -> None:
        super().__init__(f"child run {run_id!r} of step {step!r} {status}: {type}: {message}")
        self.step = step
        self.run_id = run_id
        self.status = status
        self.type = type
        self.message = message


class ChildTimeout(StepError, TimeoutError):
    """A ``step.invoke`` whose ``timeout`` passed before its child run ended (the child
    is cancelled)."""

    def __init__(self, step: str, run_id: str) -> None:
        super().__init__(f"child run {run_id!r} of step {step!r} did not end in time")
        self.step = step
        self.run_id = run_id


class NonRetryableError(Exception):
    """Raise from a step function to fail the step at once, without retries."""

    def __init__(self, message: str = "", *args: Any) -> None:
        super().__init__(message, *args)


class Failure(JetlaneError, NonRetryableError):
    """Raise to fail the run on purpose (from handler code), or a step at once (from a
    step function: no retries, and the handler sees ``StepFailed``).

    Handler code that raises anything that is not a deliberate failure (see
    ``deliberate``) blocks the run instead: it is a bug, and the run waits for a fix.
    Subclass it to give the failure a type name of your own.
    """


def deliberate(exc: BaseException, fail_on: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether ``exc``, raised by handler code outside the atoms, fails the run.

    Deliberate: ``Failure`` and ``NonRetryableError``, what the atoms raise and the handler
    lets through (``StepFailed``, ``EventTimeout``), the job's ``fail_on`` types, what
    is not an ``Exception`` at all (``SystemExit``, ``KeyboardInterrupt``), and an
    exception group (``asyncio.TaskGroup``) all of whose members are deliberate. Anything else
    (``KeyError``, ``TypeError``, a ``ConfigError`` from a bad atom call, ...) is a bug in
    the handler: the run blocks, keeps its place, and resumes when fixed code replays it.
    """
    if not isinstance(exc, Exception):
        return True
    if isinstance(exc, BaseExceptionGroup):
        # asyncio.TaskGroup wraps what its tasks raised: deliberate when each of them is
        return all(deliberate(inner, fail_on) for inner in exc.exceptions)
    return isinstance(exc, (Failure, NonRetryableError, StepError, PayloadTooLarge, *fail_on))


def describe(exc: BaseException) -> tuple[str, str]:
    """The (type, message) pair a journal entry records for an exception."""
    return type(exc).__name__, str(exc) or repr(exc)


class OrchestratorOnly(ConfigError, NonRetryableError):
    """``ctx.now()/uuid()/random()`` called inside a step function: fails the step at once.

    Their values are recorded in the journal for the handler's replays; a step
    function is not replayed, so a value made there would never be reproduced.
    """
