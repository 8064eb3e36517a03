"""The wire contract, from a plain NATS client with no jetlane code; and bad input."""

from __future__ import annotations

import json

import nats
import pytest

from jetlane import Client, Context, Log, Names, define_job, step
from jetlane.embedded import EmbeddedNats

from .helpers import StartRunner


async def greet(ctx: Context, input: dict[str, str]) -> str:
    name = await step.do("name", lambda: input["name"])
    reply = await step.wait_for_event("reply", type="reply", timeout="1m")
    return f"hello {name}, {reply['text']}"


GREET = define_job(name="greet", handler=greet, register=False)


async def test_raw_nats_client_starts_a_run_sends_an_event_and_reads_history(
    nats_server: EmbeddedNats, names: Names, log: Log, start_runner: StartRunner
) -> None:
    p = names.prefix
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    ack = await js.publish(
        f"{p}.run.raw-1.in",
        json.dumps({"job": "greet", "input": {"name": "ada"}}).encode(),
        headers={
            "Jetlane-Kind": "start",
            "Nats-Expected-Last-Subject-Sequence": "0",
            "Nats-Msg-Id": "start:raw-1",
        },
    )
    assert ack.seq > 0
    # A second start with the same id is refused (wrong last sequence).
    with pytest.raises(nats.js.errors.APIError) as refused:
        await js.publish(
            f"{p}.run.raw-1.in",
            b'{"job": "greet"}',
            headers={"Jetlane-Kind": "start", "Nats-Expected-Last-Subject-Sequence": "0"},
        )
    assert refused.value.err_code == 10071
    await js.publish(
        f"{p}.run.raw-1.in",
        json.dumps({"type": "reply", "payload": {"text": "welcome"}}).encode(),
        headers={"Jetlane-Kind": "event"},
    )
    await start_runner([GREET])  # after the event: the history's shape is then fixed
    sub = await js.subscribe(f"{p}.run.raw-1.>", ordered_consumer=True)
    seen: list[tuple[str, str, dict[str, object]]] = []
    while not seen or seen[-1][1] != "run_completed":
        msg = await sub.next_msg(timeout=10)
        seen.append(
            (
                msg.subject.rsplit(".", 1)[-1],
                (msg.headers or {})["Jetlane-Kind"],
                json.loads(msg.data),
            )
        )
    await nc.close()
    assert [k for _, k, _ in seen] == [
        "start",
        "event",
        "step_completed",
        "event_received",
        "run_completed",
    ]
    assert seen[-1] == ("out", "run_completed", {"output": "hello ada, welcome"})
    completed = seen[2][2]
    assert completed["step"] == "name" and completed["result"] == "ada"
    assert completed["attempt"] == 1 and str(completed["started_at"]).endswith("Z")
    assert seen[3][2] == {"step": "reply", "type": "reply", "input_seq": ack.seq + 1}


async def test_malformed_inputs_are_dead_lettered_and_the_runner_keeps_serving(
    nats_server: EmbeddedNats, names: Names, client: Client, log: Log, start_runner: StartRunner
) -> None:
    runner = await start_runner([GREET])
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    p = names.prefix
    bad = [
        (f"{p}.run.x.in", b"not json", {"Jetlane-Kind": "event"}),
        (f"{p}.run.x.in", b"{}", {}),
        (f"{p}.run.x.in", b"{}", {"Jetlane-Kind": "explode"}),
        (f"{p}.run.x.in", b'{"type": 5}', {"Jetlane-Kind": "event"}),
        (f"{p}.run.x.in", b'{"job": "no such/job"}', {"Jetlane-Kind": "start"}),
    ]
    seqs = [
        (await js.publish(subject, data, headers=headers)).seq for subject, data, headers in bad
    ]
    await client.start("greet", {"name": "bo"}, run_id="good")
    await client.send_event("good", "reply", {"text": "hi"})
    assert await client.result("good", timeout=10) == "hello bo, hi"
    sub = await js.subscribe(f"{p}.dlq.>", ordered_consumer=True)
    letters = [json.loads((await sub.next_msg(timeout=10)).data) for _ in bad]
    await nc.close()
    assert sorted(letter["seq"] for letter in letters) == seqs
    reasons = " | ".join(letter["reason"] for letter in letters)
    for expected in (
        "bad event body",
        "missing Jetlane-Kind",
        "not allowed on .in",
        "invalid job",
    ):
        assert expected in reasons
    assert runner.metrics.value("jetlane_dead_letters_total") == len(bad)
