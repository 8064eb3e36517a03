"""Bad input: a clear outcome for every malformed or unexpected message, and nothing lost.

Outcomes pinned here (the wire contract's edge cases):

- a malformed input (no kind, unknown kind, bad JSON, wrong shape, a journal
  kind on ``.in``, an invalid run id in the subject, an input for a run with
  no start) is dead-lettered on ``<prefix>.dlq.<run_id>`` (``_invalid`` for an
  invalid id) with its reason and original sequence; the original stays;
- a step result over the size limit fails the step once, non-retryably;
- an event for a run that does not exist: ``RunNotFound`` from the client,
  dead-lettered when published raw;
- a start for a job no runner serves: queued until a runner that serves it comes;
- a second start with the same id: ``RunAlreadyExists``; the first run is untouched;
- a cancel of a finished run: ``False`` and nothing sent; a raw one is ignored.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from jetlane import (
    Client,
    ConnectOptions,
    Context,
    Log,
    Names,
    PayloadTooLarge,
    RetryPolicy,
    RunAlreadyExists,
    RunFailedError,
    RunNotFound,
    define_job,
    step,
)
from jetlane import wire as h

from .chaos.harness import ChaosRunner
from .helpers import StartRunner, eventually

LIMIT = 10_000


async def raw_publish(
    log: Log, subject: str, data: bytes, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Publish like an outside program would; the JetStream ack as a dict."""
    reply = await log.nc.request(subject, data, timeout=5.0, headers=headers or {})
    ack: dict[str, Any] = msgspec.json.decode(reply.data)
    return ack


async def dead_letters(log: Log) -> list[tuple[str, dict[str, Any]]]:
    out = []
    async for raw in log.read_raw(f"{log.names.prefix}.dlq.>"):
        subject = (raw.headers or {}).get("Nats-Subject", raw.subject)
        out.append((subject, msgspec.json.decode(raw.data)))
    return out


async def idle(log: Log) -> bool:
    """The runner pool has nothing pending or in flight."""
    info = await log.js.consumer_info(log.names.stream, log.names.consumer)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


# -- 1,000 malformed messages among 100 valid runs ----------------------------


def malformed(i: int, pad: str, valid_ids: list[str]) -> tuple[str, bytes, dict[str, str]]:
    """The i-th malformed input: (subject, body, headers); every one is ~``len(pad)`` bytes."""
    p = "{prefix}"
    body = msgspec.json.encode({"job": "echo", "input": {"value": 1}, "pad": pad})
    kind = i % 10
    own = f"{p}.run.bad{i}.in"
    if kind == 0:
        return own, body, {}  # no Jetlane-Kind header
    if kind == 1:
        return own, body, {h.KIND_HEADER: "explode"}
    if kind == 2:
        return own, b"{not json" + pad.encode(), {h.KIND_HEADER: "start"}
    if kind == 3:
        shape = msgspec.json.encode({"job": 5, "pad": pad})
        return own, shape, {h.KIND_HEADER: "start"}
    if kind == 4:
        forged = {"step": "echo", "attempt": 1, "result": pad, "started_at": "", "duration_ms": 1}
        target = valid_ids[i % len(valid_ids)] if valid_ids else f"bad{i}"
        return (
            f"{p}.run.{target}.in",
            msgspec.json.encode(forged),
            {h.KIND_HEADER: "step_completed"},
        )
    if kind == 5:
        event = msgspec.json.encode({"type": "", "payload": pad})
        target = valid_ids[i % len(valid_ids)] if valid_ids else f"bad{i}"
        return f"{p}.run.{target}.in", event, {h.KIND_HEADER: "event"}
    if kind == 6:
        bad_job = msgspec.json.encode({"job": "no such job!", "pad": pad})
        return own, bad_job, {h.KIND_HEADER: "start"}
    if kind == 7:
        event = msgspec.json.encode({"type": "go", "payload": pad})
        # A run that has no start (yet): not malformed, so kept for the run, not
        # dead-lettered (anyone may publish on an inbox before the start).
        return own, event, {h.KIND_HEADER: "event"}
    if kind == 8:
        return f"{p}.run.bad+{i}.in", body, {h.KIND_HEADER: "start"}  # invalid run id
    deep = b"[" * 5000 + b"]" * 5000
    return own, deep + pad.encode(), {h.KIND_HEADER: "cancel"}


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_malformed_flood_is_dead_lettered_and_valid_runs_complete(
    options: ConnectOptions, names: Names, tmp_path: Path, rng: random.Random
) -> None:
    log = await Log.open(options, names, lease_ttl=2.0)
    client = Client(log)
    runner = ChaosRunner(options.url, names, tmp_path / "exec.txt", tag="flood")
    pad = "x" * 32_000
    bad: dict[int, str] = {}  # stream sequence -> subject
    valid: list[str] = []
    counter = itertools.count()

    async def wave(valid_runs: int, per_valid: int) -> None:
        for _ in range(valid_runs):
            run_id = f"v{len(valid)}"
            await client.start("echo", {"value": len(valid)}, run_id=run_id)
            valid.append(run_id)
            for _ in range(per_valid):
                i = next(counter)
                subject, data, headers = malformed(i, pad, valid)
                subject = subject.format(prefix=names.prefix)
                ack = await raw_publish(log, subject, data, headers)
                if i % 10 != 7:
                    bad[int(ack["seq"])] = subject

    async def all_dead_lettered() -> bool:
        return len(await dead_letters(log)) >= len(bad) and await idle(log)

    try:
        await wave(20, 10)
        await eventually(all_dead_lettered, timeout=60, what="the first wave to be dead-lettered")
        rss_before = runner.rss_kib()
        await wave(80, 10)
        await eventually(all_dead_lettered, timeout=120, what="every bad message dead-lettered")
        rss_after = runner.rss_kib()
        results = await asyncio.gather(*(client.result(r, timeout=60) for r in valid))
        assert runner.alive(), runner.output()[-3000:]
    finally:
        runner.kill()
    assert len(bad) == 900 and len(valid) == 100
    assert results == list(range(100))
    records = await dead_letters(log)
    by_seq: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for subject, record in records:
        by_seq.setdefault(int(record["seq"]), []).append((subject, record))
    assert set(by_seq) == set(bad), "some bad messages were not dead-lettered (or good ones were)"
    for seq, subject in bad.items():
        dlq_subject, record = by_seq[seq][0]
        assert record["reason"], record
        assert record["subject"] == subject
        run_id = subject.split(".")[2]
        expected = run_id if h.RUN_ID.fullmatch(run_id) else "_invalid"
        assert dlq_subject == f"{names.prefix}.dlq.{expected}"
    # The originals stay in the stream (dead-lettering copies, never deletes).
    assert (await log.js.stream_info(names.stream)).state.messages >= 2000
    # 800 bad messages of ~32 kB each went through after the first measurement:
    # a runner that kept them would have grown by ~25 MB.
    growth_mib = (rss_after - rss_before) / 1024
    print(f"runner RSS {rss_before} KiB -> {rss_after} KiB (+{growth_mib:.1f} MiB)")
    assert growth_mib < 12, f"runner RSS grew by {growth_mib:.1f} MiB over 800 bad messages"
    await log.close()


# -- payloads over the size limit ---------------------------------------------


async def test_oversized_step_result_fails_once_non_retryably(
    client: Client, log: Log, start_runner: StartRunner
) -> None:
    calls = 0

    async def handler(ctx: Context, input: None) -> str:
        async def big() -> str:
            nonlocal calls
            calls += 1
            return "x" * (2 * LIMIT)

        return await step.do("big", big, retries=RetryPolicy(limit=5, delay=0.05))

    job = define_job(name="big-result", handler=handler, register=False)
    await start_runner([job], max_payload=LIMIT)
    await client.start("big-result", None, run_id="big1")
    with pytest.raises(RunFailedError) as failure:
        await client.result("big1", timeout=20)
    assert failure.value.type == "StepFailed"
    assert calls == 1, "an oversized result must not be retried"
    history = [m async for m in client.history("big1")]  # still readable
    failed = [m.body for m in history if isinstance(m.body, h.StepFailed)]
    assert len(failed) == 1
    entry = failed[0]
    assert entry.retry_at is None and entry.error.type == "PayloadTooLarge"
    assert "'big'" in entry.error.message and "bytes" in entry.error.message
    assert str(len(msgspec.json.encode("x" * (2 * LIMIT)))) in entry.error.message
    assert (await client.status("big1")).status == "failed"


async def test_oversized_input_and_event_are_refused_by_the_client(
    log: Log, start_runner: StartRunner
) -> None:
    client = Client(log, max_payload=LIMIT)

    async def handler(ctx: Context, input: Any) -> Any:
        return await step.wait_for_event("go", type="go", timeout="1m")

    job = define_job(name="waiter", handler=handler, register=False)
    await start_runner([job], max_payload=LIMIT)
    with pytest.raises(PayloadTooLarge, match=r"input is \d+ bytes; the limit is 10000"):
        await client.start("waiter", {"blob": "x" * LIMIT}, run_id="w0")
    with pytest.raises(RunNotFound):
        await client.status("w0")  # nothing was sent
    await client.start("waiter", {}, run_id="w1")

    async def waiting() -> bool:
        return (await client.status("w1")).status == "waiting"

    await eventually(waiting, what="the run to wait")
    with pytest.raises(PayloadTooLarge, match=r"event payload is \d+ bytes"):
        await client.send_event("w1", "go", "x" * LIMIT)
    assert (await client.status("w1")).status == "waiting"
    await client.send_event("w1", "go", "small")
    assert await client.result("w1", timeout=10) == "small"


async def test_oversized_raw_input_fails_the_run_non_retryably(
    log: Log, start_runner: StartRunner
) -> None:
    async def handler(ctx: Context, input: Any) -> int:
        return await step.do("size", lambda: len(input["blob"]))

    job = define_job(name="sized", handler=handler, register=False)
    await start_runner([job], max_payload=LIMIT)
    body = msgspec.json.encode({"job": "sized", "input": {"blob": "x" * (2 * LIMIT)}})
    await raw_publish(
        log, log.names.inbox("rawbig"), body, {h.KIND_HEADER: "start", h.VERSION_HEADER: "1"}
    )
    client = Client(log)
    with pytest.raises(RunFailedError) as failure:
        await client.result("rawbig", timeout=15)
    assert failure.value.type == "PayloadTooLarge"
    assert str(len(body)) in failure.value.message or "bytes" in failure.value.message


async def test_oversized_raw_event_fails_the_wait_step_non_retryably(
    log: Log, start_runner: StartRunner
) -> None:
    async def handler(ctx: Context, input: Any) -> int:
        payload = await step.wait_for_event("go", type="go", timeout="1m")
        return len(payload)

    job = define_job(name="big-event", handler=handler, register=False)
    await start_runner([job], max_payload=LIMIT)
    client = Client(log)
    await client.start("big-event", None, run_id="be1")
    body = msgspec.json.encode({"type": "go", "payload": "x" * (2 * LIMIT)})
    await raw_publish(log, log.names.inbox("be1"), body, {h.KIND_HEADER: "event"})
    with pytest.raises(RunFailedError) as failure:
        await client.result("be1", timeout=15)
    # The wait took the event (recorded once) and raised StepFailed in the handler,
    # decided from the log alone: a replay raises it again, never a retry loop.
    history = [m async for m in client.history("be1")]
    assert [m.kind for m in history].count("event_received") == 1
    assert failure.value.type == "StepFailed"
    assert "'go'" in failure.value.message and "PayloadTooLarge" in failure.value.message
    assert re.search(r"is \d+ bytes", failure.value.message)


# -- unknown runs, unknown jobs, duplicate starts, late cancels ---------------


async def test_event_for_unknown_run(client: Client, log: Log, start_runner: StartRunner) -> None:
    async def waiter(ctx: Context) -> Any:
        return await step.wait_for_event("w", type="go", timeout="1m")

    await start_runner([define_job(name="waits-go", handler=waiter, register=False)])
    with pytest.raises(RunNotFound):
        await client.send_event("ghost", "go", 1)
    assert not await log.exists("ghost")  # the client sent nothing
    # A raw publisher may send an event before the run's start: it is not malformed;
    # it is kept (not dead-lettered) and the run, once started, sees it.
    await raw_publish(
        log, log.names.inbox("ghost2"), b'{"type": "go", "payload": 7}', {h.KIND_HEADER: "event"}
    )

    async def handled() -> bool:
        info = await log.js.consumer_info(log.names.stream, log.names.consumer)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0) == 0

    await eventually(handled, what="the early event to be handled")
    assert await dead_letters(log) == []
    with pytest.raises(RunNotFound):
        await client.status("ghost2")  # an event does not create a run
    handle = await client.start("waits-go", run_id="ghost2")
    assert await handle.result(timeout=10) == 7


async def _noop(ctx: Context, input: Any) -> Any:
    return await step.do("noop", lambda: input)


async def test_start_for_unserved_job_is_queued_until_a_runner_serves_it(
    client: Client, start_runner: StartRunner
) -> None:
    await start_runner([define_job(name="other", handler=_noop, register=False)])
    await client.start("later", {"n": 1}, run_id="q1")
    status = await client.status("q1")
    assert (status.status, status.job) == ("queued", "later")
    await start_runner([define_job(name="later", handler=_noop, register=False)])
    assert await client.result("q1", timeout=30) == {"n": 1}


async def test_status_says_no_runner_serves_the_job(
    client: Client, start_runner: StartRunner
) -> None:
    await start_runner([define_job(name="other", handler=_noop, register=False)])
    await client.start("unserved", None, run_id="q2")

    async def says_so() -> bool:
        detail = (await client.status("q2")).detail or ""
        return "no runner" in detail.lower()

    await eventually(says_so, timeout=8, what="the status to say no runner serves the job")


async def test_second_start_with_same_id(
    client: Client, log: Log, start_runner: StartRunner
) -> None:
    await start_runner([define_job(name="noop", handler=_noop, register=False)])
    await client.start("noop", "first", run_id="dup")
    assert await client.result("dup", timeout=10) == "first"
    with pytest.raises(RunAlreadyExists):  # same Nats-Msg-Id: a duplicate inside the window
        await client.start("noop", "second", run_id="dup")
    # Another publisher honouring create-once with its own msg id: wrong last sequence.
    ack = await raw_publish(
        log,
        log.names.inbox("dup"),
        msgspec.json.encode({"job": "noop", "input": "third"}),
        {h.KIND_HEADER: "start", "Nats-Expected-Last-Subject-Sequence": "0"},
    )
    assert ack["error"]["err_code"] == 10071
    # A publisher ignoring create-once gets its start stored; the runner ignores it.
    await raw_publish(
        log,
        log.names.inbox("dup"),
        msgspec.json.encode({"job": "noop", "input": "fourth"}),
        {h.KIND_HEADER: "start"},
    )
    await eventually(lambda: idle(log), what="the runner to settle")
    status = await client.status("dup")
    assert (status.status, status.output) == ("completed", "first")
    journal = [m.body for m in await log.read("dup") if m.direction == "out"]
    assert sum(isinstance(b, h.StepCompleted) for b in journal) == 1
    assert sum(isinstance(b, h.RunCompleted) for b in journal) == 1


async def test_cancel_of_a_finished_run(
    client: Client, log: Log, start_runner: StartRunner
) -> None:
    await start_runner([define_job(name="noop", handler=_noop, register=False)])
    await client.start("noop", 7, run_id="fin")
    assert await client.result("fin", timeout=10) == 7
    length = len(await log.read("fin"))
    assert await client.cancel("fin", "too late") is False
    assert len(await log.read("fin")) == length  # nothing sent
    await raw_publish(log, log.names.inbox("fin"), b"{}", {h.KIND_HEADER: "cancel"})
    await eventually(lambda: idle(log), what="the runner to settle")
    history = await log.read("fin")
    assert len(history) == length + 1  # the raw cancel is stored, and nothing else
    assert not any(isinstance(m.body, h.RunCancelled) for m in history)
    status = await client.status("fin")
    assert (status.status, status.output) == ("completed", 7)
    with pytest.raises(RunNotFound):
        await client.cancel("never-was")


async def test_an_input_that_takes_a_starts_dedupe_id_does_not_block_the_start(
    client: Client, log: Log, start_runner: StartRunner
) -> None:
    """Anyone may publish on a run's inbox with any header: an event carrying the
    dedupe id of the run's future start (``start:<run id>``) must not make that start
    look stored (a child run's parent would then wait for a child that never began)."""

    async def echo(ctx: Context, input: int) -> int:
        return await step.do("echo", lambda: input)

    await start_runner([define_job(name="sq-echo", handler=echo, register=False)])
    await log.publish_input("sq-1", h.Event(type="noise"), msg_id="start:sq-1")
    handle = await client.start("sq-echo", 7, run_id="sq-1")
    assert await handle.result(timeout=20) == 7
    starts = [m for m in await log.read_inputs("sq-1") if isinstance(m.body, h.Start)]
    assert len(starts) == 1
    with pytest.raises(RunAlreadyExists):  # and create-once still holds
        await client.start("sq-echo", 8, run_id="sq-1")
