"""Runner metrics and the ops endpoints (/metrics, /healthz, /readyz) over real HTTP."""

from __future__ import annotations

import asyncio

from jetlane import Client, Context, RetryPolicy, define_job, step
from jetlane._metrics import serve_ops
from jetlane.embedded import free_port

from .helpers import StartRunner, eventually


async def get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_metrics_and_readiness(client: Client, start_runner: StartRunner) -> None:
    calls: list[int] = []

    async def once_flaky(ctx: Context) -> int:
        def attempt() -> int:
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError("blip")
            return 7

        value = await step.do("fetch", attempt, retries=RetryPolicy(limit=2, delay=0.01))
        return await step.do("double", lambda: value * 2)

    runner = await start_runner([define_job(name="metered", handler=once_flaky, register=False)])
    port = free_port()
    server = await serve_ops("127.0.0.1", port, metrics=runner.metrics, ready=runner.ready.is_set)
    try:
        assert await get(port, "/readyz") == (200, "ready\n")
        assert (await get(port, "/healthz"))[0] == 200
        assert (await get(port, "/nope"))[0] == 404
        await client.start("metered", run_id="m1")
        assert await client.result("m1", timeout=10) == 14
        ended = 'jetlane_runs_ended_total{job="metered",status="completed"} 1.0'

        async def counted() -> bool:  # the runner counts just after the client sees the end
            return ended in (await get(port, "/metrics"))[1].splitlines()

        await eventually(counted, what="the run's end to be counted")
        status, text = await get(port, "/metrics")
        assert status == 200
        lines = set(text.splitlines())
        assert 'jetlane_steps_started_total{job="metered"} 3.0' in lines
        assert 'jetlane_steps_failed_total{job="metered"} 1.0' in lines
        assert 'jetlane_step_retries_total{job="metered"} 1.0' in lines
        assert 'jetlane_runs_ended_total{job="metered",status="completed"} 1.0' in lines
        assert 'jetlane_step_duration_seconds_count{job="metered"} 3.0' in lines
        assert "jetlane_replay_duration_seconds_count 1.0" in lines
        runner.stop()

        async def not_ready() -> bool:
            return not runner.ready.is_set()

        await eventually(not_ready, what="runner to stop being ready")
        assert (await get(port, "/readyz"))[0] == 503
    finally:
        server.close()
        await server.wait_closed()
