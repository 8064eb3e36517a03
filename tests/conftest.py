"""Fixtures: a real nats-server from the wheel, isolated streams, in-process runners."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from jetlane import Client, ConnectOptions, Job, Log, Names, Runner, RunnerConfig
from jetlane.embedded import EmbeddedNats

from .helpers import StartRunner

_ids = itertools.count()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.cleanup()


@pytest.fixture
def names() -> Names:
    """A stream and subject tree of this test's own."""
    n = next(_ids)
    return Names(prefix=f"t{os.getpid()}x{n}", stream=f"T{os.getpid()}X{n}")


@pytest.fixture
def options(nats_server: EmbeddedNats) -> ConnectOptions:
    return ConnectOptions(url=nats_server.url)


@pytest.fixture
async def log(options: ConnectOptions, names: Names) -> AsyncIterator[Log]:
    log = await Log.open(options, names, lease_ttl=5.0)
    yield log
    await log.close()


@pytest.fixture
async def client(log: Log) -> Client:
    return Client(log)


@pytest.fixture
async def start_runner(options: ConnectOptions, names: Names) -> AsyncIterator[StartRunner]:
    """Start in-process runners (each on its own connection); all are stopped at teardown."""
    started: list[tuple[Runner, asyncio.Task[None], Log]] = []

    async def start(
        jobs: list[Job], *, plugins: dict[str, Any] | None = None, **config: Any
    ) -> Runner:
        log = await Log.open(options, names, lease_ttl=5.0)
        runner = Runner(
            log,
            {j.name: j for j in jobs},
            plugins=plugins,
            config=RunnerConfig(**{"ack_wait": 5.0, "drain_timeout": 5.0, **config}),
        )
        task = asyncio.create_task(runner.run())
        await asyncio.wait_for(runner.ready.wait(), 10)
        started.append((runner, task, log))
        return runner

    yield start
    for runner, _, _ in started:
        runner.stop()
    for _, task, runner_log in started:
        await asyncio.wait_for(task, 15)
        await runner_log.close()


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A seeded random source; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("JETLANE_TEST_SEED", random.randrange(2**32)))
    print(f"random seed: JETLANE_TEST_SEED={seed}")
    return random.Random(seed)
