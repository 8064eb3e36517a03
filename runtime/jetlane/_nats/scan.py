"""Whole-stream scans: every value of a last-value stream, every subject under a filter.

Both are async iterators that hold one page at a time, so their memory does
not grow with the stream; their time does (they read all of it).

What was measured (nats-server 2.15, 1,000,000 subjects, 2-core machine,
``bench/index_scale.py`` and the experiments behind it) and chosen:

- ``multi_last`` batch direct get cannot page: the server ignores
  ``start_seq`` with it and answers 413 past 1,024 subjects. Paging it would
  need subject ranges that are not known in advance. Not used.
- Reading a last-value stream (``max_msgs_per_subject`` 1, such as the run
  index) in sequence order with plain batch direct gets: 9.5 s for 1M
  records, one batch in flight. The client is the bottleneck (parsing each
  message's six headers). A wildcard ``next_by_subj`` filter (e.g.
  ``jetlane.index.*``) costs the server a search among every subject per
  batch: 31-38 s at 1M, so ``last_values`` reads the stream unfiltered.
- A consumer delivering ``last_per_subject`` (what a stream with several
  messages per subject needs): 23 s for 1M as an ephemeral pull consumer
  (nats-py builds a ``Msg`` per message); an ordered push consumer took 24 s,
  and with ``headers_only`` it stalled for good at 1M; a push consumer without
  flow control was cut off as a slow consumer. Not used.
- Stream info with ``subjects_filter``, paged by ``offset`` (the server
  answers at most 100,000 subjects a request, sorted): 7.9-10 s for 1M
  subjects, nearly all of it in the server. Used to enumerate runs. Each page
  holds the stream's lock: appends to the runs stream waited up to 0.5 s
  during one at 1M subjects (creating a ``last_per_subject`` consumer stalled
  them 1.25 s, once).
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import msgspec

from .._core.errors import JetlaneError

if TYPE_CHECKING:
    from .log import Log
    from .router import Batch

BATCH: Final = 1000
OVERLAP: Final = 1000
INFO_TIMEOUT: Final = 60.0


class Value(NamedTuple):
    """A stored message: its subject, stream sequence and body."""

    subject: str
    seq: int
    data: bytes


async def last_values(log: Log, stream: str) -> AsyncIterator[Value]:
    """Every message of ``stream`` in sequence order, until nothing is left.

    For a stream that keeps one message per subject, that is the last value of
    every subject. A subject rewritten during the scan moves to the end of the
    stream, which the scan reaches, so none is missed; one rewritten after the
    scan passed it comes twice: the later (higher ``seq``) is the newer. One
    batch of ``BATCH`` messages is held (the next is fetched while the caller
    works through the current one).
    """
    direct = f"{log.api}.DIRECT.GET.{stream}"
    ahead: asyncio.Task[Batch] | None = asyncio.create_task(
        log.router.batch(direct, {"seq": 1, "batch": BATCH})
    )
    try:
        while ahead is not None:
            batch = await ahead
            ahead = None
            end = batch.end.headers or {}
            more = end.get("Status") == "204" and int(end.get("Nats-Num-Pending", "0")) > 0
            if batch.messages and more:
                last = int((batch.messages[-1].headers or {})["Nats-Sequence"])
                ahead = asyncio.create_task(
                    log.router.batch(direct, {"seq": last + 1, "batch": BATCH})
                )
            for raw in batch.messages:
                headers = raw.headers or {}
                yield Value(
                    headers.get("Nats-Subject", ""),
                    int(headers.get("Nats-Sequence", "0")),
                    raw.data,
                )
    finally:
        if ahead is not None:  # the caller stopped early, or a batch failed
            ahead.cancel()
            ahead.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # seen: not logged as "never retrieved"


class _State(msgspec.Struct):
    subjects: dict[str, int] | None = None


class _Info(msgspec.Struct):
    state: _State | None = None
    total: int = 0
    error: dict[str, Any] | None = None


_info_decoder = msgspec.json.Decoder(_Info)


async def _subjects_page(log: Log, stream: str, subject_filter: str, offset: int) -> _Info:
    request = {"subjects_filter": subject_filter, "offset": offset}
    # nats-py's own request: a page of 100,000 subjects takes the server about a
    # second at 1M subjects, longer than the log's request timeout.
    reply = await log.ask(
        f"{log.api}.STREAM.INFO.{stream}",
        msgspec.json.encode(request),
        timeout=max(log.timeout, INFO_TIMEOUT),
    )
    info = _info_decoder.decode(reply)
    if info.error is not None:
        raise JetlaneError(f"cannot list the subjects of stream {stream}: {info.error}")
    return info


async def subjects(
    log: Log, stream: str, subject_filter: str, *, overlap: int = OVERLAP
) -> AsyncIterator[str]:
    """Every subject of ``stream`` matching ``subject_filter``, each once, in sorted order.

    Stream info answers a page of at most 100,000 subjects, cut at ``offset``
    from the sorted list of all matching subjects, which the server computes
    again for every page (so a page costs O(subjects)). Subjects removed
    before a page boundary between two requests would shift later ones into
    the page already read: each page therefore starts ``overlap`` subjects
    back, and what was already yielded (sorts at or before the last subject
    yielded) is skipped. A page whose first subject sorts after the last one
    yielded means more than ``overlap`` were removed: it is asked again from
    further back. Subjects created during the scan that sort before the last
    one yielded are not listed (they did not exist when it began).
    """
    overlap = max(1, overlap)
    last: str | None = None
    offset = 0
    back = overlap
    while True:
        info = await _subjects_page(log, stream, subject_filter, offset)
        page = sorted((info.state.subjects if info.state else None) or {})
        if last is not None and offset > 0 and (not page or page[0] > last):
            offset = max(0, offset - back)  # a gap may lie before this page
            back *= 2
            continue
        start = 0 if last is None else bisect.bisect_right(page, last)
        for subject in page[start:]:
            yield subject
        if start < len(page):
            last = page[-1]
        end = offset + len(page)
        if not page or end >= info.total:
            return
        back = overlap
        offset = max(0, end - overlap)
