"""``Context``: what a handler gets besides its input."""

from __future__ import annotations

import contextvars
import random as _random
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .durations import format_time, parse_time

if TYPE_CHECKING:
    import structlog

    from .replay import Replay

# The step whose function runs in this context (set by the executor around each attempt):
# with parallel branches several run at once, so "the current step" is per context.
running_step: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "jetlane_running_step", default=None
)


class Plugins:
    """Objects registered on the runner (a deploy client, an HTTP session, ...).

    Read them as attributes (``ctx.plugins.deployer``) or items (``ctx.plugins["deployer"]``).
    """

    def __init__(self, objects: dict[str, Any] | None = None) -> None:
        self._objects = dict(objects or {})

    def __getattr__(self, name: str) -> Any:
        try:
            return self._objects[name]
        except KeyError:
            known = ", ".join(sorted(self._objects)) or "none"
            raise AttributeError(
                f"no plugin named {name!r} is registered on this runner (registered: {known}); "
                "pass it with Runner(plugins={...}) or a plugins() factory in a jobs module"
            ) from None

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)

    def __contains__(self, name: object) -> bool:
        return name in self._objects


class Context:
    """The handler's view of its run.

    Orchestrator code (everything outside ``step.do``) is re-run on every
    replay, so it must be deterministic: take times, ids and random numbers
    from ``now()``, ``uuid()`` and ``random()``, which are recorded once.
    """

    def __init__(self, replay: Replay, plugins: Any) -> None:
        self._replay = replay
        self.plugins: Any = plugins if plugins is not None else Plugins()

    @property
    def run_id(self) -> str:
        return self._replay.run_id

    @property
    def job(self) -> str:
        return self._replay.job.name

    @property
    def step_key(self) -> str:
        """A stable idempotency key for the current step: ``<run_id>/<step id>``.

        The same on every attempt and every runner: pass it to the APIs a step
        calls so that an at-least-once re-execution does not act twice.
        """
        step = running_step.get(None) or self._replay.current_step
        return f"{self.run_id}/{step}" if step is not None else self.run_id

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        log = self._replay.log
        step = running_step.get(None) or self._replay.current_step
        return log.bind(step=step) if step is not None else log  # type: ignore[no-any-return]

    def now(self) -> datetime:
        """The current UTC time, recorded on first call and replayed after."""
        return self._replay.value(  # type: ignore[no-any-return]
            lambda: format_time(self._replay.now()), _parse_now, "ctx.now()"
        )

    def uuid(self) -> uuid.UUID:
        """A random UUID4, recorded on first call and replayed after."""
        return self._replay.value(  # type: ignore[no-any-return]
            lambda: _uuid4(self._replay.entropy), _parse_uuid, "ctx.uuid()"
        )

    def random(self) -> float:
        """A float in [0, 1), recorded on first call and replayed after."""
        return self._replay.value(  # type: ignore[no-any-return]
            lambda: _random.Random(self._replay.entropy(16)).random(), _parse_random, "ctx.random()"
        )


def _parse_now(value: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError("not a time")
    return parse_time(value)


def _parse_uuid(value: Any) -> uuid.UUID:
    if not isinstance(value, str):
        raise TypeError("not a uuid")
    return uuid.UUID(value)


def _parse_random(value: Any) -> float:
    if not isinstance(value, float):
        raise TypeError("not a float")
    return value


def _uuid4(entropy: Any) -> str:
    return str(uuid.UUID(bytes=entropy(16), version=4))
