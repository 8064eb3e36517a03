"""A pytest plugin: the ``jetlane_env`` fixture (loaded by pytest when jetlane is installed).

::

    async def test_approval(jetlane_env) -> None:
        env = jetlane_env([approval], plugins={"approvals": FakeApprovals()})
        run = await env.start("approval", {"change": "CHG-1"})
        await run.send_event("approval", {"approved": True})
        assert (await run.result())["status"] == "applied"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .testing import Environment


@pytest.fixture
def jetlane_env() -> Callable[..., Environment]:
    """Make an ``Environment`` (in-memory log, virtual clock) for the jobs given."""

    def make(jobs: Any, **options: Any) -> Environment:
        return Environment(jobs, **options)

    return make
