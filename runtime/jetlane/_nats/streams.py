"""Stream set-up: create jetlane's streams and consumer, or check the ones that exist.

``StreamSetup`` is composed into ``Log`` (not a base class of it): the part
that runs once per process, kept apart from the hot paths. It owns no state
of the log's; it returns what it finds (the lease TTL in force). An existing
stream with settings jetlane cannot use is a clear ``StreamMismatch``, never
a silent change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)

from .._core.errors import JetlaneError, StreamMismatch
from .connection import _Errors
from .names import Names


class StreamSetup:
    """Creates or checks the streams of ``names`` through ``js``."""

    def __init__(self, js: Any, names: Names, errors: _Errors) -> None:
        self.js = js
        self.names = names
        self.errors = errors

    async def ensure_stream(
        self, *, replicas: int = 1, lease_ttl: float = 30.0, wait: float = 10.0
    ) -> float:
        """Create the streams (runs, timers, leases, index) or check that they fit.

        Durable timers are message schedules in a stream of their own that fire
        onto ``<prefix>.fired.<id>``, which the runs stream sources into the
        run's inbox. The runs stream itself refuses schedules: a publisher who
        may write an inbox can then neither erase it (a schedule replaces every
        earlier message on its subject) nor fire anything onto a journal.
        """
        timers = StreamConfig(
            name=self.names.timers_stream,
            subjects=self.names.timer_subjects,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            num_replicas=replicas,
            allow_msg_schedules=True,
        )
        await self._create_or_check(timers, wait, self._check_timers)
        runs = StreamConfig(
            name=self.names.stream,
            subjects=self.names.subjects,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            num_replicas=replicas,
            duplicate_window=120.0,
            allow_direct=True,
            sources=[
                StreamSource(
                    name=self.names.timers_stream,
                    subject_transforms=[
                        SubjectTransform(
                            src=f"{self.names.prefix}.fired.*",
                            dest=f"{self.names.prefix}.run.{{{{wildcard(1)}}}}.in",
                        )
                    ],
                )
            ],
        )
        await self._create_or_check(runs, wait, self._check)
        lease_ttl = await self.ensure_lease_stream(replicas, lease_ttl)
        if await self._stream_info(self.names.waiting_stream) is None:
            await self._add_last_value_stream(
                self.names.waiting_stream, f"{self.names.prefix}.waiting.*", replicas
            )
        if await self._stream_info(self.names.index_stream) is None:
            await self._add_last_value_stream(
                self.names.index_stream, f"{self.names.prefix}.index.*", replicas
            )
        return lease_ttl

    async def _create_or_check(
        self, wanted: StreamConfig, wait: float, check: Callable[[StreamConfig], None]
    ) -> None:
        assert wanted.name is not None
        name = wanted.name
        info = await self._retry(lambda: self._stream_info(name), wait)
        if info is None:
            try:
                await self._retry(lambda: self.js.add_stream(wanted), wait)
                return
            except nats.js.errors.BadRequestError:
                info = await self._stream_info(name)  # created by a concurrent runner
                if info is None:
                    raise
        check(info.config)

    def _check_timers(self, config: StreamConfig) -> None:
        problems = []
        subjects = set(config.subjects or [])
        problems += [f"subjects lack {s!r}" for s in self.names.timer_subjects if s not in subjects]
        if not config.allow_msg_schedules:
            problems.append("allow_msg_schedules is off (needed for durable timers)")
        self._mismatch(self.names.timers_stream, problems)

    def _mismatch(self, name: str, problems: list[str]) -> None:
        if problems:
            raise StreamMismatch(
                f"stream {name!r} exists with settings jetlane cannot use: "
                + "; ".join(problems)
                + ". Fix it with `nats stream edit` or use another stream name."
            )

    async def ensure_lease_stream(self, replicas: int, lease_ttl: float) -> float:
        """Create the lease stream if absent; the lease TTL in force."""
        info = await self._stream_info(self.names.lease_stream)
        if info is not None:
            return float(info.config.max_age or lease_ttl)
        await self._add_last_value_stream(
            self.names.lease_stream, f"{self.names.prefix}.lease.*", replicas, max_age=lease_ttl
        )
        return lease_ttl

    async def _add_last_value_stream(
        self, name: str, subject: str, replicas: int, *, max_age: float | None = None
    ) -> None:
        """A small stream keeping the last message per subject (leases, the run index)."""
        with contextlib.suppress(nats.js.errors.BadRequestError):  # a concurrent runner
            await self.js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=[subject],
                    storage=StorageType.FILE,
                    num_replicas=replicas,
                    max_age=max_age,
                    max_msgs_per_subject=1,
                    discard=DiscardPolicy.OLD,
                    allow_direct=True,
                )
            )

    async def _stream_info(self, name: str) -> Any:
        try:
            return await self.js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return None

    async def _retry(self, op: Callable[[], Any], wait: float) -> Any:
        # JetStream answers 503 for a moment after a server (re)starts.
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            try:
                return await op()
            except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError) as exc:
                if self.errors.last is not None:
                    raise JetlaneError(
                        f"NATS refused a JetStream call: {self.errors.last}; "
                        "grant the user the JetStream API subjects jetlane needs (README)"
                    ) from exc
                if asyncio.get_running_loop().time() > deadline:
                    raise JetlaneError(
                        "JetStream did not answer: is JetStream enabled on the server, and "
                        "may this user use the JetStream API?"
                    ) from exc
                await asyncio.sleep(0.2)

    def _check(self, config: StreamConfig) -> None:
        problems = []
        subjects = set(config.subjects or [])
        for subject in self.names.subjects:
            if subject not in subjects:
                problems.append(f"subjects lack {subject!r}")
        if not config.allow_direct:
            problems.append("allow_direct is off (needed for fast history reads)")
        if config.allow_msg_schedules:
            problems.append(
                "allow_msg_schedules is on (an inbox publisher could erase runs with a "
                "schedule; timers live in the timers stream since jetlane 0.1)"
            )
        if not any(src.name == self.names.timers_stream for src in config.sources or []):
            problems.append(f"it does not source {self.names.timers_stream!r} (fired timers)")
        if config.retention not in (None, RetentionPolicy.LIMITS):
            problems.append(f"retention is {config.retention} (must be limits: a log)")
        if config.max_msgs_per_subject not in (None, -1, 0):
            problems.append("max_msgs_per_subject is limited (a run's history would be cut)")
        self._mismatch(self.names.stream, problems)

    async def runner_consumer(self, *, ack_wait: float, max_ack_pending: int) -> None:
        """Create (or update) the runner pool's shared durable pull consumer on every
        run's inbox; runners pull it with ``Puller``."""
        config = ConsumerConfig(
            durable_name=self.names.consumer,
            filter_subject=self.names.all_inboxes,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_deliver=-1,
            max_ack_pending=max_ack_pending,
        )
        await self._retry(lambda: self.js.add_consumer(self.names.stream, config), 10.0)

    async def consumer_pending(self) -> int:
        """Deliveries waiting plus in flight on the runners' consumer."""
        info = await self.js.consumer_info(self.names.stream, self.names.consumer)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
