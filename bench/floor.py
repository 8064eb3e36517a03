"""The floor: raw JetStream from nats-py, no jetlane code, on the same server and machine."""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ._harness import Bench
from ._stats import percentile


async def batch_get(nc: NATS, stream: str, subject: str, count: int) -> int:
    """One batch direct get of up to ``count`` messages of ``subject``; how many came."""
    inbox = nc.new_inbox()
    got: list[Msg] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Msg) -> None:
        if msg.headers and "Status" in msg.headers:
            if not done.done():
                done.set_result(None)
        else:
            got.append(msg)

    sub = await nc.subscribe(inbox, cb=on_msg)
    request = {"seq": 1, "batch": count, "next_by_subj": subject}
    await nc.publish(f"$JS.API.DIRECT.GET.{stream}", msgspec.json.encode(request), reply=inbox)
    await asyncio.wait_for(done, 10)
    await sub.unsubscribe()
    return len(got)


async def run(bench: Bench) -> None:
    s = bench.settings
    names = bench.names("floor")
    log = await bench.open_log(names)  # creates the stream
    await log.close()
    nc = await nats.connect(bench.url)
    js = nc.jetstream()
    n_sync = s.pick(200, 2000)
    n_async = s.pick(2000, 20000)
    pub = bench.figure("floor", "publish_p50", "ms", note="sync js.publish, one coroutine")
    pub99 = bench.figure("floor", "publish_p99", "ms")
    fenced = bench.figure("floor", "fenced_append_p50", "ms", note="Expected-Last-Subject-Seq")
    thr = bench.figure("floor", "publish_async", "msg/s", note="publish_async + completed")
    last = bench.figure("floor", "direct_get_last_p50", "ms", note="last_by_subj")
    batch = bench.figure("floor", "batch_get_1000", "ms", note="one batch direct get")
    payload = b'{"step":"s","attempt":1,"result":null,"started_at":"","duration_ms":0.01}'
    subject = f"{names.prefix}.run.floor.out"
    for r in range(s.rounds):
        lat = []
        for _ in range(n_sync):
            t0 = time.perf_counter()
            await js.publish(f"{names.prefix}.run.p{r}.out", payload)
            lat.append((time.perf_counter() - t0) * 1000)
        pub.samples.append(percentile(lat, 50))
        pub99.samples.append(percentile(lat, 99))

        lat = []
        seq = 0
        fenced_subject = f"{names.prefix}.run.f{r}.out"
        for _ in range(n_sync):
            headers = {"Nats-Expected-Last-Subject-Sequence": str(seq)}
            t0 = time.perf_counter()
            ack = await js.publish(fenced_subject, payload, headers=headers)
            lat.append((time.perf_counter() - t0) * 1000)
            seq = ack.seq
        fenced.samples.append(percentile(lat, 50))

        t0 = time.perf_counter()
        for i in range(n_async):
            await js.publish_async(f"{names.prefix}.run.a{r}x{i % 100}.out", payload)
        await js.publish_async_completed()
        thr.samples.append(n_async / (time.perf_counter() - t0))

        lat = []
        for _ in range(200 if not s.quick else 50):
            t0 = time.perf_counter()
            await nc.request(
                f"$JS.API.DIRECT.GET.{names.stream}",
                msgspec.json.encode({"last_by_subj": fenced_subject}),
                timeout=5,
            )
            lat.append((time.perf_counter() - t0) * 1000)
        last.samples.append(percentile(lat, 50))

    for _ in range(1000):
        await js.publish_async(subject, payload)
    await js.publish_async_completed()
    for _ in range(s.rounds):
        t0 = time.perf_counter()
        count = await batch_get(nc, names.stream, subject, 1000)
        batch.samples.append((time.perf_counter() - t0) * 1000)
        assert count == 1000, count
    await nc.close()
