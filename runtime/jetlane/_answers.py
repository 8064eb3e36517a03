"""What a runner answers besides deliveries: input validations, job listings, wake-ups.

Clients ask ``<prefix>.api.validate.<job>`` (a queue group: one runner answers)
before a start, gather ``<prefix>.api.jobs`` (every runner answers) to list
what is served, and poke ``<prefix>.api.wake.<job>`` when a run of a job no
runner served is waiting. A runner with a build id also answers
``<prefix>.api.build.<build>.wake.<job>``: a runner of another build asks it
to take a run pinned to this build (an answer says that one of them has it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from ._core import history as h
from ._core.definition import Job, describe_job
from ._core.errors import InputError
from ._nats.log import Log

QUEUE = "jetlane-runners"


async def serve_answers(
    log: Log, jobs: Mapping[str, Job], wake: Callable[[str], bool], build: str | None = None
) -> list[Callable[[], Awaitable[None]]]:
    """Answer for ``jobs`` until the returned stops are called; ``wake(run_id)`` on a poke
    (False: not taken)."""
    stops = []
    for name, job in jobs.items():

        async def answer(data: bytes, job: Job = job) -> bytes:
            reply: dict[str, Any]
            try:
                job.validate_input(msgspec.json.decode(data))
                reply = {"ok": True}
            except InputError as exc:
                reply = {"error": str(exc)}
            except msgspec.DecodeError:
                reply = {"error": "input is not JSON"}
            return msgspec.json.encode(reply)

        async def poke(data: bytes) -> bytes | None:
            run_id = data.decode("utf-8", "replace")
            if not h.RUN_ID.fullmatch(run_id) or not wake(run_id):
                return None  # a stopping runner takes nothing: the asker hears no one
            return b"taken"  # answered only to a request (the build wake-up)

        subject = f"{log.names.prefix}.api.validate.{name}"
        stops.append(await log.serve(subject, answer, queue=QUEUE))
        stops.append(await log.serve(log.names.wake(name), poke, queue=QUEUE))
        if build is not None:
            stops.append(await log.serve(log.names.wake(name, build), poke, queue=QUEUE))

    async def listing(data: bytes) -> bytes:
        return msgspec.json.encode([describe_job(job) for job in jobs.values()])

    stops.append(await log.serve(log.names.jobs_subject, listing))
    await log.flush()  # the server knows the subscriptions before the runner says ready
    return stops
