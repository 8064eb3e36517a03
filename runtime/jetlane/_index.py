"""The run index: one summary per run, for listing without replaying histories.

The index is derived data. Runners write a run's summary (job, status,
current step, times, wait deadline, error) when a session ends, to a stream
that keeps the last message per run subject; listing reads every last value
with one batch direct get (``multi_last``). ``rebuild`` recomputes it from
the histories, which stay the source of truth.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from ._log import Log
from ._status import RunStatus, summarize

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RunStatus)


def record(status: RunStatus) -> bytes:
    """The index record of a run (its output is left out: it may be large)."""
    return _encoder.encode(msgspec.structs.replace(status, output=None, detail=None))


def _cursor_of(status: RunStatus) -> str:
    return base64.urlsafe_b64encode(f"{status.created_at}|{status.run_id}".encode()).decode()


def _key(status: RunStatus) -> tuple[str, str]:
    return status.created_at, status.run_id


def page(
    statuses: list[RunStatus],
    *,
    job: str | None = None,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[RunStatus], str | None]:
    """Filter, order newest first, and cut one page; the cursor of the next page or None."""
    chosen = [
        s
        for s in statuses
        if (job is None or s.job == job) and (status is None or s.status == status)
    ]
    chosen.sort(key=_key, reverse=True)
    if cursor:
        try:
            created, run_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        except (ValueError, UnicodeDecodeError):
            raise ValueError("invalid cursor") from None
        chosen = [s for s in chosen if _key(s) < (created, run_id)]
    limit = max(1, min(limit, 1000))
    selected = chosen[:limit]
    more = len(chosen) > limit
    return selected, (_cursor_of(selected[-1]) if more and selected else None)


class RunIndex:
    """Reads and rebuilds the index over a ``Log``."""

    def __init__(self, log: Log) -> None:
        self.log = log

    async def all(self) -> list[RunStatus]:
        out = []
        for data in await self.log.read_index():
            try:
                out.append(_decoder.decode(data))
            except msgspec.DecodeError:
                continue  # a record from a newer writer we cannot read: rebuild fixes it
        return out

    async def list(self, **filters: Any) -> tuple[list[RunStatus], str | None]:
        return page(await self.all(), **filters)

    async def rebuild(self) -> int:
        """Recompute every run's summary from its history; the number of runs indexed."""
        count = 0
        for run_id in await self.log.run_ids():
            status = summarize(run_id, await self.log.read(run_id))
            if status is not None:
                await self.log.put_index(run_id, record(status))
                count += 1
        return count
