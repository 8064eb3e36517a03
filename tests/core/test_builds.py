"""Builds on the wire (rolling upgrades): ``run_started`` and ``pin`` change no replay.

``golden/pinned_v1.json`` is ``rolling_deploy.json`` as a pinned run records it:
a ``run_started`` naming build ``A`` after the start, and an operator's ``pin``
to build ``B`` while the second cool-down sleeps (sequences renumbered, and
the ``input_seq`` fields with them). The same handler must replay it exactly
as the unpinned history, old histories (no build anywhere) stay unpinned, and
a reader that does not know the new kinds (they decode as ``invalid``, as in
a jetlane older than builds) still replays the run.
"""

from __future__ import annotations

import pytest

from jetlane import ConfigError, DecodeError
from jetlane import wire as h
from jetlane._core.replay import Append, Finished, Park, Replay
from jetlane._core.status import summarize

from .replay_driver import FakeClock, entropy, plain
from .test_golden import JOB, load, replay


def test_pinned_golden_history_decodes_and_tells_its_build() -> None:
    messages = load("pinned_v1.json")
    kinds = [m.kind for m in messages]
    assert kinds[:2] == ["start", "run_started"] and "pin" in kinds
    assert messages[1].body == h.RunStarted(build="A")
    pin = next(m.body for m in messages if m.kind == "pin")
    assert pin == h.Pin(build="B", reason="build A drained")
    cut = kinds.index("pin")
    assert h.pinned_build(messages[:cut]) == "A"
    assert h.pinned_build(messages) == "B"
    before = summarize("deploy-43", messages[:cut])
    assert before is not None and before.build == "A" and before.status == "sleeping"
    status = summarize("deploy-43", messages)
    assert status is not None and status.build == "B" and status.status == "completed"


def test_histories_without_builds_are_unpinned() -> None:
    for name in ("rolling_deploy.json", "minimal_v1.json"):
        messages = load(name)
        assert h.pinned_build(messages) is None
        status = summarize(messages[0].run_id, messages)
        assert status is not None and status.build is None


async def test_pinned_golden_history_replays_like_the_unpinned_one() -> None:
    pinned, plain_ = load("pinned_v1.json"), load("rolling_deploy.json")
    core = Replay(JOB, "deploy-43", clock=FakeClock(), entropy=entropy)
    for msg in pinned[:-1]:
        core.ingest(msg)
    decision = await core.next(None)
    assert isinstance(decision, Finished) and isinstance(decision.entry, h.RunCompleted)
    (entry,) = [e.body for e in core.outbox if isinstance(e, Append)]
    assert isinstance(entry, h.RunCompleted)
    assert plain(entry.output) == pinned[-1].body.output == plain_[-1].body.output


async def test_every_parked_prefix_of_the_pinned_history_replays_to_a_park() -> None:
    messages = load("pinned_v1.json")
    parks = 0
    for cut, msg in enumerate(messages):
        if msg.direction == "in" and msg.kind in ("timer", "event", "pin"):
            decision, outbox = await replay(messages[:cut])
            assert isinstance(decision, Park), (cut, decision)
            assert outbox == []  # a pin decides nothing, and run_started is no step
            parks += 1
    assert parks >= 5


async def test_a_reader_without_the_new_kinds_still_replays_a_pinned_run() -> None:
    # What a runner older than builds makes of them: unknown kinds decode as invalid.
    messages = [
        h.Message(m.seq, m.run_id, m.direction, "invalid", h.Invalid(reason="unknown kind"))
        if m.kind in ("run_started", "pin")
        else m
        for m in load("pinned_v1.json")
    ]
    core = Replay(JOB, "deploy-43", clock=FakeClock(), entropy=entropy)
    for msg in messages[:-1]:
        core.ingest(msg)
    decision = await core.next(None)
    assert isinstance(decision, Finished) and isinstance(decision.entry, h.RunCompleted)
    status = summarize("deploy-43", messages)
    assert status is not None and status.status == "completed" and status.build is None


def test_run_started_without_a_build_decodes_and_pins_nothing() -> None:
    body = h.decode("run_started", b"{}", direction="out")
    assert body == h.RunStarted(build=None)
    start = h.Message(1, "r", "in", "start", h.Start(job="j"))
    assert h.pinned_build([start, h.Message(2, "r", "out", "run_started", body)]) is None


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("pin", b"{}"),
        ("pin", b'{"build": ""}'),
        ("pin", b'{"build": "v1.4.2"}'),  # a dot would split the wake subject
        ("pin", b'{"build": "a b"}'),
        ("run_started", b'{"build": "x>"}'),
        ("run_started", b'{"build": ""}'),
    ],
)
def test_invalid_builds_are_refused_on_decode(kind: str, data: bytes) -> None:
    direction = "in" if kind in h.INPUT_KINDS else "out"
    with pytest.raises(DecodeError, match="build"):
        h.decode(kind, data, direction=direction)


def test_check_build_id_explains_what_is_allowed() -> None:
    assert h.check_build_id("v1-4-2") == "v1-4-2"
    with pytest.raises(ConfigError, match=r"1-64 characters of A-Z a-z 0-9 _ -"):
        h.check_build_id("v1.4.2")
