"""Running step attempts: coroutine functions on the loop, everything else in threads.

Design note. A sync step function (a blocking HTTP client, a database driver)
must not run on the event loop: it would stall every other run of the
runner, the heartbeats that keep its leases, and its own timeout. So any
step function that is not a coroutine function runs in a worker thread; if
it returns an awaitable (``lambda: client.deploy(env)`` of an async method),
that is awaited on the loop. A thread cannot be stopped: a sync attempt past
its ``timeout`` is recorded as timed out while its thread runs on, and once
half the pool is held by such threads new calls go to a fresh pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from ._core.context import running_step
from ._core.decisions import Execute, Outcome
from ._core.errors import NonRetryableError, StepTimeout


class StepExecutor:
    """Runs ``Execute`` decisions; ``size`` threads for sync step functions."""

    def __init__(self, size: int, *, clock: Callable[[], datetime] | None = None) -> None:
        self.size = size
        self.clock = clock or (lambda: datetime.now(UTC))
        self._threads = self._new_pool()
        self._stuck = 0  # threads still running a step whose attempt timed out

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def run(self, ex: Execute) -> Outcome:
        """One attempt: its result, or the error it failed with (never raised)."""
        started = self.clock()
        t0 = time.perf_counter()
        stuck = None if _is_async(ex.fn) else self._abandoned_thread
        result, error = await attempt(ex, self._call, on_timeout=stuck)
        duration = (time.perf_counter() - t0) * 1000
        return Outcome(
            started_at=started, duration_ms=duration, result=result, error=error, step=ex.step
        )

    async def _call(self, fn: Any) -> Any:
        if _is_async(fn):
            return await fn()
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._threads, contextvars.copy_context().run, fn)
        except RuntimeError as exc:
            if "event loop" not in str(exc):
                raise
            raise NonRetryableError(
                f"a step function that is not an async def runs in a worker thread, where "
                f"there is no event loop ({exc}); put asyncio.gather/ensure_future/create_task "
                "inside an async def and pass that to step.do"
            ) from exc
        if inspect.isawaitable(result):
            result = await result
        return result

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="jetlane-step")

    def _abandoned_thread(self) -> None:
        self._stuck += 1
        if self._stuck >= self.size // 2:
            old, self._threads, self._stuck = self._threads, self._new_pool(), 0
            old.shutdown(wait=False)


async def attempt(
    ex: Execute,
    call: Callable[[Any], Awaitable[Any]],
    *,
    on_timeout: Callable[[], None] | None = None,
) -> tuple[Any, BaseException | None]:
    """Run ``call(ex.fn)`` under the step's timeout: (result, None) or (None, the error
    the attempt failed with), classified as the journal records it."""
    scope: asyncio.Timeout | None = None
    running = running_step.set(ex.step)  # ctx.step_key and ctx.log in the step function
    try:
        async with asyncio.timeout(ex.timeout) as scope:
            return await call(ex.fn), None
    except TimeoutError as exc:
        if scope is None or not scope.expired():
            return None, exc  # raised by the step function itself
        if on_timeout is not None:
            on_timeout()
        return None, StepTimeout(
            f"step {ex.step!r} attempt {ex.attempt} timed out after {ex.timeout:g}s"
        )
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the driver is stopping: the step is handed back, not failed
        return None, exc  # raised by the step function itself: a failed attempt
    except Exception as exc:  # the step function's own error: a failed attempt
        return None, exc
    except BaseException as exc:  # SystemExit & co. raised by the step's code
        return None, exc
    finally:
        running_step.reset(running)


async def call_on_loop(fn: Any) -> Any:
    """Call a step function on the event loop; await what it returns if awaitable."""
    result = fn()
    if inspect.isawaitable(result):
        result = await result
    return result


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an async __call__
    )
