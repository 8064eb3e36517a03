"""Helpers the tests share (fixtures live in conftest; tests import helpers from here)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from jetlane import Runner

StartRunner = Callable[..., Awaitable[Runner]]
"""The ``start_runner`` fixture: ``await start_runner([job, ...], **RunnerConfig)``."""


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait for ``check()`` to hold, polling, up to ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await check():
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
