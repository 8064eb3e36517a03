"""A batch pipeline: extract from a flaky, rate-limited upstream, load, cool down, repeat.

Far past a 30 s function: each batch is checkpointed, a rate-limited call is
retried with exponential backoff on a durable timer, and the cool-down
between batches parks the run. A crash loses at most the step in flight.
"""

from __future__ import annotations

import random
import time
from typing import Any

import msgspec

from jetlane import Context, RetryPolicy, job, step


class EtlInput(msgspec.Struct):
    source: str
    batches: int = 3
    batch_size: int = 100
    cool_down: str = "30s"
    retry_delay: str = "2s"


class EtlResult(msgspec.Struct):
    source: str
    batches: int
    rows: int


@job("batch-etl")
async def batch_etl(ctx: Context, input: EtlInput) -> EtlResult:
    upstream, warehouse = ctx.plugins.upstream, ctx.plugins.warehouse
    retries = RetryPolicy(limit=8, delay=input.retry_delay, backoff="exponential", max_delay="5m")
    rows = 0
    for n in range(input.batches):
        batch = await step.do(
            f"extract:{n}",
            lambda n=n: upstream.fetch(
                input.source, offset=n * input.batch_size, limit=input.batch_size
            ),
            retries=retries,
        )
        rows += await step.do(
            f"load:{n}", lambda batch=batch: warehouse.load(batch, key=ctx.step_key)
        )
        if n + 1 < input.batches:
            await step.sleep("cool-down", input.cool_down)
    return EtlResult(source=input.source, batches=input.batches, rows=rows)


class RateLimited(RuntimeError):
    """The upstream refused: too many requests."""


class FlakyUpstream:
    """An upstream API that allows ``rate`` calls a second and fails ``flakiness`` of the rest."""

    def __init__(self, *, rate: float = 5.0, flakiness: float = 0.3, seed: int | None = None):
        self.rate = rate
        self.flakiness = flakiness
        self.rng = random.Random(seed)
        self.last_call = 0.0

    async def fetch(self, source: str, *, offset: int, limit: int) -> list[dict[str, Any]]:
        now = time.monotonic()
        too_soon = now - self.last_call < 1.0 / self.rate
        self.last_call = now
        if too_soon:
            raise RateLimited(f"{source}: 429 Too Many Requests")
        if self.rng.random() < self.flakiness:
            raise ConnectionError(f"{source}: connection reset (simulated)")
        return [{"id": offset + i, "source": source} for i in range(limit)]


class Warehouse:
    """Loads are keyed by ``ctx.step_key``: a re-executed step does not load twice."""

    def __init__(self) -> None:
        self.loaded: dict[str, int] = {}

    def load(self, rows: list[dict[str, Any]], *, key: str) -> int:
        self.loaded[key] = len(rows)
        return len(rows)


def plugins() -> dict[str, Any]:
    return {"upstream": FlakyUpstream(), "warehouse": Warehouse()}
