"""The step atoms. Thin: each call goes to the replay core of the current run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar, overload

import msgspec

from .definition import Job, RetryPolicy
from .durations import Duration, to_seconds, utc
from .errors import ConfigError, PayloadTooLarge
from .history import check_job_name, check_run_id
from .received import Event
from .replay import Replay, current

T = TypeVar("T")


def _replay(atom: str) -> Replay:
    try:
        return current.get()
    except LookupError:
        raise ConfigError(
            f"step.{atom} was called outside a job handler; atoms only work while "
            "jetlane runs a handler (and not inside a step.do function)"
        ) from None


def _child(atom: str, job: Any, input: Any, run_id: str | None) -> tuple[str, Any]:
    """The job name and the JSON-shaped input of a child run, checked before the atom
    counts (so that a bad call raises at the same place on every replay)."""
    name = job.name if isinstance(job, Job) else job
    if not isinstance(name, str):
        raise ConfigError(f"step.{atom} job= takes a job name or a Job, not {job!r}")
    check_job_name(name)
    if run_id is not None:
        check_run_id(run_id)
    replay = _replay(atom)
    try:
        raw = msgspec.json.encode(input)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"step.{atom} input= must be JSON-shaped data: {exc}") from None
    if len(raw) > replay.max_payload:
        raise PayloadTooLarge(
            f"step.{atom} input is {len(raw)} bytes; the limit is {replay.max_payload} bytes"
        )
    return name, msgspec.json.decode(raw)


class _Steps:
    """``step.do``, ``step.sleep``, ``step.sleep_until``, ``step.wait_for_event``,
    ``step.wait_for_any``, ``step.invoke``, ``step.start_run``."""

    @overload
    async def do(
        self,
        name: str,
        fn: Callable[[], Awaitable[T]],
        *,
        retries: RetryPolicy | None = None,
        timeout: Duration | None = None,
    ) -> T: ...

    @overload
    async def do(
        self,
        name: str,
        fn: Callable[[], T],
        *,
        retries: RetryPolicy | None = None,
        timeout: Duration | None = None,
    ) -> T: ...

    async def do(
        self,
        name: str,
        fn: Callable[[], Any],
        *,
        retries: RetryPolicy | None = None,
        timeout: Duration | None = None,
    ) -> Any:
        """Run ``fn`` once and record its result; replays return the record.

        A failed attempt is retried per ``retries`` (default: 5 retries, 10 s
        exponential backoff); ``NonRetryableError`` fails at once. When no
        attempt is left, ``StepFailed`` is raised here, in the handler.
        ``timeout`` bounds each attempt.
        """
        replay = _replay("do")
        if not callable(fn):
            raise ConfigError(f"step.do({name!r}, fn): fn must be callable")
        if retries is not None and not isinstance(retries, RetryPolicy):
            raise ConfigError("step.do retries= takes a RetryPolicy")
        seconds = None if timeout is None else to_seconds(timeout, what="step timeout")
        return await replay.do(name, fn, retries, seconds)

    async def sleep(self, name: str, duration: Duration) -> None:
        """Park the run for ``duration``; no process waits for it."""
        replay = _replay("sleep")
        await replay.sleep(name, to_seconds(duration, what="sleep duration"), None)

    async def sleep_until(self, name: str, when: datetime) -> None:
        """Park the run until ``when`` (an aware datetime)."""
        replay = _replay("sleep_until")
        if not isinstance(when, datetime):
            raise ConfigError("step.sleep_until takes an aware datetime")
        await replay.sleep(name, None, utc(when))

    async def wait_for_event(self, name: str, *, type: str, timeout: Duration = "24h") -> Any:
        """Park until an event of ``type`` is sent to the run; return its payload.

        An event sent before the wait began is returned at once. Raises
        ``EventTimeout`` when ``timeout`` passes first.
        """
        replay = _replay("wait_for_event")
        if not isinstance(type, str) or not type:
            raise ConfigError("step.wait_for_event needs a non-empty type=")
        return await replay.wait(name, type, to_seconds(timeout, what="wait timeout"))

    async def wait_for_any(
        self, name: str, *, types: Sequence[str], timeout: Duration = "24h"
    ) -> Event:
        """Park until an event of any of ``types`` is sent to the run; return it as an
        ``Event`` (``.type``, ``.payload``, ``.seq``).

        Events sent before the wait count, the earliest first. Only the event returned
        is taken: events of the other types stay for later waits. Raises
        ``EventTimeout`` when ``timeout`` passes first.
        """
        replay = _replay("wait_for_any")
        if isinstance(types, str) or not types:
            raise ConfigError("step.wait_for_any needs types=[...], a non-empty list of types")
        wanted = tuple(types)
        if not all(isinstance(t, str) and t for t in wanted) or len(set(wanted)) != len(wanted):
            raise ConfigError(
                f"step.wait_for_any types= must be distinct non-empty strings: {types!r}"
            )
        return await replay.wait_any(name, wanted, to_seconds(timeout, what="wait timeout"))

    async def invoke(
        self,
        name: str,
        *,
        job: str | Job,
        input: Any = None,
        run_id: str | None = None,
        timeout: Duration | None = None,
    ) -> Any:
        """Start a child run of ``job`` and park until it ends; return its output.

        The child's id is ``run_id``, or derived from this run's id and the step
        (the same on every replay); starting it is create-once. A child that fails
        or is cancelled raises ``ChildFailed`` (``.run_id``, ``.status``, ``.type``,
        ``.message``), as does a ``run_id`` another run already has. ``timeout``
        passing first raises ``ChildTimeout`` and cancels the child. Cancelling
        this run cancels the child it waits on.
        """
        name_, value = _child("invoke", job, input, run_id)
        replay = _replay("invoke")
        seconds = None if timeout is None else to_seconds(timeout, what="invoke timeout")
        return await replay.invoke(name, name_, value, run_id, seconds)

    async def start_run(
        self,
        name: str,
        *,
        job: str | Job,
        input: Any = None,
        run_id: str | None = None,
    ) -> str:
        """Start a child run of ``job`` and return its run id at once (create-once, the id
        as for ``invoke``). The child is detached: it runs on its own, is not cancelled
        with this run, and reports its end to no one (read it with the client)."""
        name_, value = _child("start_run", job, input, run_id)
        replay = _replay("start_run")
        run = await replay.invoke(name, name_, value, run_id, None, detached=True)
        return str(run)


step = _Steps()
