"""Runner metrics (Prometheus) and the runner's small ops HTTP server.

The ops server answers ``/metrics``, ``/healthz`` (the process's event loop
is alive) and ``/readyz`` (connected and consuming; 503 while draining). It
is a few lines of asyncio rather than a framework: three fixed GET routes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ._nats.log import FIRE_AT_HEADER

_STEP_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)
_REPLAY_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)
_LENGTH_BUCKETS = (1, 10, 30, 100, 300, 1000, 3000, 10000, 30000)
_LATENESS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class JobMetrics(NamedTuple):
    """One job's children of the step metrics."""

    started: Any
    completed: Any
    failed: Any
    seconds: Any
    retries: Any


class RunnerMetrics:
    """The runner's counters, histograms and gauges, on a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._jobs: dict[str, JobMetrics] = {}
        r = self.registry
        self.steps_started = Counter(
            "jetlane_steps_started", "Step attempts started", ["job"], registry=r
        )
        self.steps_completed = Counter(
            "jetlane_steps_completed", "Step attempts that succeeded", ["job"], registry=r
        )
        self.steps_failed = Counter(
            "jetlane_steps_failed", "Step attempts that failed", ["job"], registry=r
        )
        self.retries = Counter(
            "jetlane_step_retries", "Failed attempts that will be retried", ["job"], registry=r
        )
        self.step_seconds = Histogram(
            "jetlane_step_duration_seconds",
            "Step attempt duration",
            ["job"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.replay_seconds = Histogram(
            "jetlane_replay_duration_seconds",
            "Time to rebuild a run from its full history",
            buckets=_REPLAY_BUCKETS,
            registry=r,
        )
        self.history_length = Histogram(
            "jetlane_history_length",
            "Messages in a history read for a full replay",
            buckets=_LENGTH_BUCKETS,
            registry=r,
        )
        self.fence_conflicts = Counter(
            "jetlane_fence_conflicts",
            "Appends refused because another runner wrote first",
            registry=r,
        )
        self.runs_ended = Counter(
            "jetlane_runs_ended",
            "Runs this runner brought to an end",
            ["job", "status"],
            registry=r,
        )
        self.sessions = Gauge(
            "jetlane_sessions_active", "Runs being advanced right now", registry=r
        )
        self.cached = Gauge("jetlane_runs_cached", "Parked runs held in memory", registry=r)
        self.pending = Gauge(
            "jetlane_consumer_pending",
            "Deliveries waiting or in flight on the runners' consumer (autoscaling signal)",
            registry=r,
        )
        self.dead_letters = Counter(
            "jetlane_dead_letters", "Inputs dead-lettered as unusable", registry=r
        )
        self.runs_blocked = Counter(
            "jetlane_runs_blocked",
            "Runs parked as blocked (a step's code cannot go on until it is fixed)",
            ["job"],
            registry=r,
        )
        self.timer_lateness = Histogram(
            "jetlane_timer_lateness_seconds",
            "Seconds from a durable timer's due time to a runner taking up its delivery",
            buckets=_LATENESS_BUCKETS,
            registry=r,
        )
        self.sessions_started = Counter(
            "jetlane_sessions_started",
            "Sessions started (a run taken up to be advanced: by a delivery, a timer, a wake)",
            registry=r,
        )

    def serve(self, jobs: Iterable[str]) -> None:
        """Export the counters alerts take ``increase()`` of at 0 for each of ``jobs``: a
        series that first appears at 1 has increased by nothing, so the first blocked or
        failed run of a job would alert nobody."""
        for job in jobs:
            self.runs_blocked.labels(job)
            for status in ("completed", "failed", "cancelled"):
                self.runs_ended.labels(job, status)

    def for_job(self, job: str) -> JobMetrics:
        """The step metrics labelled with ``job`` (labelled once, not per step)."""
        children = self._jobs.get(job)
        if children is None:
            children = self._jobs[job] = JobMetrics(
                self.steps_started.labels(job),
                self.steps_completed.labels(job),
                self.steps_failed.labels(job),
                self.step_seconds.labels(job),
                self.retries.labels(job),
            )
        return children

    def timer_received(self, headers: Mapping[str, str]) -> None:
        """Observe how late a fired durable timer reached a runner that takes it up.

        A redelivery is observed again (the run was woken that late); a message without
        the server's ``Nats-Scheduler`` header or a readable due time is not a fired timer.
        """
        due = headers.get(FIRE_AT_HEADER)
        if due is None or not headers.get("Nats-Scheduler"):
            return
        try:
            late = datetime.now(UTC) - datetime.fromisoformat(due.replace("Z", "+00:00"))
        except ValueError:
            return  # not a time: forged or garbled, nothing to measure
        self.timer_lateness.observe(max(late.total_seconds(), 0.0))

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when it has none yet), e.g. for tests."""
        return self.registry.get_sample_value(name, labels or None) or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve_ops(
    host: str, port: int, *, metrics: RunnerMetrics, ready: Callable[[], bool]
) -> asyncio.Server:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) > 1 else ""
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path == "/metrics":
                status, body, kind = "200 OK", metrics.render(), CONTENT_TYPE_LATEST
            elif path == "/healthz":
                status, body, kind = "200 OK", b"ok\n", "text/plain"
            elif path == "/readyz":
                ok = ready()
                status = "200 OK" if ok else "503 Service Unavailable"
                body, kind = (b"ready\n" if ok else b"not ready\n"), "text/plain"
            else:
                status, body, kind = "404 Not Found", b"not found\n", "text/plain"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (body if parts and parts[0] != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):  # teardown: the scraper may be gone
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)
