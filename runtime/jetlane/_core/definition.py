"""Jobs: ``@job``, ``define_job``, the registry, input types and retry policies."""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from .durations import Duration, to_seconds
from .errors import ConfigError, InputError
from .history import check_job_name

Backoff = Literal["constant", "linear", "exponential"]
Handler = Callable[..., Awaitable[Any]]
DEFAULT_FUNCTION_TIMEOUT = 30.0
# Steps of one run that execute at once (parallel branches); more wait their turn.
DEFAULT_MAX_PARALLEL = 100


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed ``step.do`` attempt is retried.

    ``limit`` counts retries after the first attempt (``limit=0``: one attempt).
    The n-th retry waits ``delay`` (constant), ``delay * n`` (linear) or
    ``delay * 2**(n-1)`` (exponential), capped at ``max_delay``.
    """

    limit: int = 5
    delay: Duration = "10s"
    backoff: Backoff = "exponential"
    max_delay: Duration | None = "1h"

    def __post_init__(self) -> None:
        if not isinstance(self.limit, int) or isinstance(self.limit, bool) or self.limit < 0:
            raise ConfigError(f"RetryPolicy.limit must be an int >= 0, not {self.limit!r}")
        if self.backoff not in ("constant", "linear", "exponential"):
            raise ConfigError(
                f"RetryPolicy.backoff {self.backoff!r} is not constant, linear or exponential"
            )
        to_seconds(self.delay, what="RetryPolicy.delay")
        if self.max_delay is not None:
            to_seconds(self.max_delay, what="RetryPolicy.max_delay")

    def delay_after(self, attempt: int) -> float | None:
        """Seconds to wait after failed ``attempt`` (1-based), or None when none is left."""
        if attempt > self.limit:
            return None
        base = to_seconds(self.delay)
        if self.backoff == "constant":
            seconds = base
        elif self.backoff == "linear":
            seconds = base * attempt
        else:
            seconds = base * 2.0 ** min(attempt - 1, 62)
        if self.max_delay is not None:
            seconds = min(seconds, to_seconds(self.max_delay))
        return seconds


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class Job:
    """A registered job: its name, handler and the types read off the handler."""

    name: str
    handler: Handler
    timeout: float = DEFAULT_FUNCTION_TIMEOUT
    input_type: Any = Any
    takes_input: bool = True
    # exception types that, raised by handler code outside the atoms, fail the run
    # (besides jetlane.Failure and the atoms' errors); any other exception blocks it
    fail_on: tuple[type[BaseException], ...] = ()
    # how many of the run's steps may execute at once (asyncio.gather/TaskGroup branches)
    max_parallel: int = DEFAULT_MAX_PARALLEL

    def convert_input(self, raw: Any) -> Any:
        """``raw`` (JSON-shaped) as the handler's input type, or an ``InputError``."""
        if self.input_type is Any:
            return raw
        try:
            return msgspec.convert(raw, self.input_type, strict=False)
        except msgspec.ValidationError as exc:
            raise InputError(f"input for job {self.name!r} does not fit: {exc}") from None

    def validate_input(self, raw: Any) -> None:
        self.convert_input(raw)


_registry: dict[str, Job] = {}


def define_job(
    *,
    name: str,
    handler: Handler,
    timeout: Duration | None = None,
    fail_on: type[BaseException] | Iterable[type[BaseException]] = (),
    max_parallel: int = DEFAULT_MAX_PARALLEL,
    register: bool = True,
) -> Job:
    """Make (and by default register) a job from a handler ``async def (ctx, input)``."""
    check_job_name(name)
    failing = tuple(fail_on) if not isinstance(fail_on, type) else (fail_on,)
    for kind in failing:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise ConfigError(f"job {name!r}: fail_on takes exception classes, not {kind!r}")
    if not isinstance(max_parallel, int) or isinstance(max_parallel, bool) or max_parallel < 1:
        raise ConfigError(f"job {name!r}: max_parallel must be an int >= 1, not {max_parallel!r}")
    if not inspect.iscoroutinefunction(handler):
        raise ConfigError(f"job {name!r}: the handler must be an async def")
    params = list(inspect.signature(handler).parameters.values())
    if not 1 <= len(params) <= 2:
        raise ConfigError(f"job {name!r}: the handler must take (ctx) or (ctx, input)")
    try:
        hints = typing.get_type_hints(handler)
    except Exception as exc:  # any failure to resolve them is a definition error
        raise ConfigError(f"job {name!r}: cannot resolve the handler's annotations: {exc}") from exc
    input_type: Any = Any
    if len(params) == 2:
        input_type = hints.get(params[1].name, Any)
    job = Job(
        name=name,
        handler=handler,
        timeout=DEFAULT_FUNCTION_TIMEOUT
        if timeout is None
        else to_seconds(timeout, what="job timeout"),
        input_type=input_type,
        takes_input=len(params) == 2,
        fail_on=failing,
        max_parallel=max_parallel,
    )
    if register:
        existing = _registry.get(name)
        if existing is not None and existing.handler is not handler:
            same = getattr(existing.handler, "__qualname__", None) == getattr(
                handler, "__qualname__", None
            ) and getattr(existing.handler, "__module__", None) == getattr(
                handler, "__module__", None
            )
            if not same:
                raise ConfigError(f"job {name!r} is defined twice")
        _registry[name] = job
    return job


def job(
    name: str,
    *,
    timeout: Duration | None = None,
    fail_on: type[BaseException] | Iterable[type[BaseException]] = (),
    max_parallel: int = DEFAULT_MAX_PARALLEL,
) -> Callable[[Handler], Handler]:
    """Register the decorated ``async def handler(ctx, input)`` as job ``name``.

    ``timeout`` is the function-lane wall-time limit: how long the handler may
    run before it calls its first step atom (30 s by default).

    ``fail_on``: exception types that fail the run when handler code raises them
    outside the atoms. By default only deliberate failures do (``jetlane.Failure``,
    ``NonRetryableError``, and ``StepFailed``/``EventTimeout`` let through); any other
    exception is taken for a bug and blocks the run until fixed code replays it.
    ``fail_on=(Exception,)`` fails the run on every exception instead.

    ``max_parallel``: how many of a run's steps may execute at once when its handler
    runs branches in parallel (``asyncio.gather``, ``asyncio.TaskGroup``); the others
    wait for a slot (100 by default).
    """

    def register(handler: Handler) -> Handler:
        define_job(
            name=name,
            handler=handler,
            timeout=timeout,
            fail_on=fail_on,
            max_parallel=max_parallel,
        )
        return handler

    return register


def registry() -> dict[str, Job]:
    """The jobs registered in this process, by name (a copy)."""
    return dict(_registry)


def get_job(name: str) -> Job | None:
    return _registry.get(name)


def describe_job(job: Job) -> dict[str, Any]:
    """What a runner tells about a job it serves: its name, whether it takes an input
    and that input's JSON Schema (msgspec's), and its function-lane timeout."""
    schema: Any = None
    if job.takes_input:
        try:
            schema = msgspec.json.schema(job.input_type)
        except (TypeError, ValueError):
            schema = {}  # a type msgspec cannot describe: any JSON is tried
    return {
        "name": job.name,
        "takes_input": job.takes_input,
        "input_schema": schema,
        "timeout": job.timeout,
        "fail_on": [kind.__name__ for kind in job.fail_on],
        "max_parallel": job.max_parallel,
    }


def did_you_mean(name: str, known: typing.Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the names close to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=3)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
