"""A 3-node JetStream cluster on loopback loses the node that leads the stream mid-workload.

The stream (and the lease stream) are R3; the runners and the client are given
all three URLs. A probe publishes to the stream back to back so that the
append stall caused by the leader election can be measured and printed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from jetlane import (
    Client,
    ConnectOptions,
    JetlaneError,
    Log,
    Names,
    Runner,
    RunnerConfig,
    RunStatus,
    registry,
)
from jetlane import wire as h
from jetlane.embedded import EmbeddedNats, free_port

from .chaos import jobs as chaos_jobs
from .chaos.harness import final_outcomes
from .helpers import eventually

pytestmark = pytest.mark.slow

NODES = 3
RUNS = 30
STEPS = 6


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[EmbeddedNats]]:
    client_ports = [free_port() for _ in range(NODES)]
    route_ports = [free_port() for _ in range(NODES)]
    nodes = []
    for i in range(NODES):
        routes = ", ".join(
            f'"nats-route://127.0.0.1:{p}"' for j, p in enumerate(route_ports) if j != i
        )
        config = (
            f'cluster {{\n  name: "jl"\n  listen: "127.0.0.1:{route_ports[i]}"\n'
            f"  routes: [{routes}]\n}}\n"
        )
        nodes.append(
            EmbeddedNats(
                tmp_path / f"n{i}", port=client_ports[i], config=config, server_name=f"n{i}"
            )
        )
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.cleanup()


async def open_r3(options: ConnectOptions, names: Names, timeout: float = 30.0) -> Log:
    """Open (and create at R3) once the cluster has elected a meta leader."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await Log.open(options, names, replicas=3, lease_ttl=2.0)
        except Exception:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.25)


@pytest.fixture
async def runners(
    cluster: list[EmbeddedNats], names: Names
) -> AsyncIterator[tuple[Log, list[Runner]]]:
    options = ConnectOptions(url=",".join(node.url for node in cluster))
    log = await open_r3(options, names)
    steady = registry()[chaos_jobs.steady.__name__]
    started: list[tuple[Runner, asyncio.Task[None], Log]] = []
    try:
        for _ in range(2):
            runner_log = await open_r3(options, names)
            runner = Runner(
                runner_log,
                {"steady": steady},
                config=RunnerConfig(ack_wait=2.0, drain_timeout=5.0),
            )
            task = asyncio.create_task(runner.run())
            started.append((runner, task, runner_log))
            await asyncio.wait_for(runner.ready.wait(), 20)
        yield log, [r for r, _, _ in started]
    finally:
        for runner, _, _ in started:
            runner.stop()
        for _, task, runner_log in started:
            await asyncio.wait_for(task, 30)
            await runner_log.close()
        await log.close()


@pytest.mark.timeout(180)
async def test_stream_leader_killed_mid_workload(
    cluster: list[EmbeddedNats],
    runners: tuple[Log, list[Runner]],
    names: Names,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log, _ = runners
    client = Client(log)
    info = await log.js.stream_info(names.stream)
    assert info.config.num_replicas == 3
    assert info.cluster is not None
    leader_name = info.cluster.leader
    leader = next(node for node in cluster if node.server_name == leader_name)

    acks: list[float] = []
    probing = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def probe() -> None:
        subject = f"{names.prefix}.dlq.probe"  # a subject of the runs stream
        while not probing.is_set():
            try:
                reply = await log.nc.request(subject, b"tick", timeout=0.5)
                if b'"error"' not in reply.data:
                    acks.append(loop.time())
                    continue
            except Exception:
                pass
            await asyncio.sleep(0.01)

    ids = [f"r{i}" for i in range(RUNS)]
    for run_id in ids:
        await client.start("steady", {"n": STEPS}, run_id=run_id)

    async def some_steps_done() -> bool:
        histories = await asyncio.gather(*(log.read(r) for r in ids))
        done = sum(isinstance(m.body, h.StepCompleted) for hist in histories for m in hist)
        return done >= RUNS

    await eventually(some_steps_done, timeout=60, what="a third of the steps")
    prober = asyncio.create_task(probe())
    await eventually(_has(acks), what="the probe's first ack")
    killed_at = loop.time()
    leader.kill()
    try:
        await eventually(_acked_after(acks, killed_at), timeout=30, what="appends to resume")
        statuses = await _final_statuses(client, ids, timeout=60)
    finally:
        probing.set()
        await prober
    expected = sum(range(STEPS))
    unfinished = {r: s.status for r, s in statuses.items() if s.status != "completed"}
    assert unfinished == {}, f"{len(unfinished)} runs did not finish: {unfinished}"
    assert [statuses[r].output for r in ids] == [expected] * RUNS
    for run_id in ids:
        counts = final_outcomes(await log.read(run_id))
        assert set(counts.values()) == {1} and len(counts) == STEPS + 1, (run_id, counts)
    after = [t for t in acks if t > killed_at]
    before = max(t for t in acks if t <= killed_at)
    gaps = [b - a for a, b in zip([before, *after], after, strict=False)]
    stall = max(gaps)
    new_info = await log.js.stream_info(names.stream)
    assert new_info.cluster is not None
    new_leader = new_info.cluster.leader
    assert new_leader != leader_name
    with capsys.disabled():
        print(
            f"\ncluster: killed stream leader {leader_name} (new leader {new_leader}); "
            f"appends stalled {stall:.2f}s; runs={RUNS} lost=0"
        )


async def _final_statuses(client: Client, ids: list[str], timeout: float) -> dict[str, RunStatus]:
    """Each run's status once every run is done, or at the deadline.

    Reads that fail while the cluster elects a leader are retried: this test
    is about the runners, not the client's reads.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    statuses: dict[str, RunStatus] = {}
    while True:
        for run_id in ids:
            if run_id in statuses and statuses[run_id].done:
                continue
            with contextlib.suppress(JetlaneError, TimeoutError):
                statuses[run_id] = await client.status(run_id)
        if all(r in statuses and statuses[r].done for r in ids) or loop.time() > deadline:
            return statuses
        await asyncio.sleep(0.25)


def _has(acks: list[float]) -> Any:
    async def check() -> bool:
        return bool(acks)

    return check


def _acked_after(acks: list[float], when: float) -> Any:
    async def check() -> bool:
        return any(t > when for t in acks)

    return check


async def test_history_read_with_no_responder_raises(log: Log, client: Client) -> None:
    await client.start("steady", {"n": 1}, run_id="exists")
    assert len(await log.read("exists")) == 1
    # The same run, read through a stream name nobody answers for: what a reader
    # sees while a cluster elects the stream's leader (503 no responders).
    unanswered = Log(log.nc, Names(log.names.prefix, f"{log.names.stream}_GONE"))
    with pytest.raises(JetlaneError):
        await unanswered.read("exists")
