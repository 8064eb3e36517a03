"""The workload: runs of the ``invariants`` job, each with a seeded timeline of inputs.

Every run gets a ``Plan`` drawn from the seeded ``random.Random``: its input
(steps sync or async, a flaky one, a nap), when its events come, and which
message-borne faults hit it: the ``go`` event published *before* the start, a
start without the create-once headers, a raw duplicate start, a cancel, a
pause and its resume, a forged ``timer`` input carrying the token of a timer
the journal shows armed, a malformed input. ``drive`` plays the timeline and
records in a ``Sent`` what the server acknowledged (stream seqs), which is
what the checker holds the engine to.

Publishes go through ``Log.publish_input`` (the documented wire protocol) and
are retried while the nemesis has the server down; a create-once start whose
retry is refused is resolved by reading the inbox (its first attempt may have
been stored before the server died).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from jetlane import Client, Log, RunAlreadyExists
from jetlane import wire as h
from jetlane._nats.log import FenceLost

from .checker import Sent
from .jobs import inv_budget

T = TypeVar("T")
PUBLISH_DEADLINE = 25.0  # seconds a publish is retried (the server may be restarting)


@dataclass
class Plan:
    input: dict[str, Any]
    go_after: float
    early_event: bool = False
    start_raw: bool = False
    duplicate_start: bool = False
    second_go: bool = False
    maybe_after: float | None = None
    cancel_after: float | None = None
    pause_after: float | None = None
    pause_for: float = 1.0
    forge_after: float | None = None
    malformed: bool = False
    child_duplicate: bool = False  # start the child again: create-once, then a raw publish


def draw_plan(rng: random.Random) -> Plan:
    steps = rng.randint(3, 5)
    job_input = {
        "steps": steps,
        "delay": rng.choice([0.05, 0.15, 0.15, 0.25]),
        "sync": [i for i in range(steps) if rng.random() < 0.4],
        "flaky": [rng.randrange(steps)] if rng.random() < 0.35 else [],
        "nap_at": rng.randrange(steps) if rng.random() < 0.7 else None,
        "nap": round(rng.uniform(1.0, 2.0), 3),
        "maybe_timeout": 1.0,
    }
    fanned = 0
    if rng.random() < 0.4:
        fanned = rng.randint(2, steps)
        job_input["parallel"] = fanned  # the first steps run at once
    if rng.random() < 0.3:  # a child run: invoked (its end awaited) or detached
        n = rng.randint(1, 2)
        job_input["child"] = {
            "steps": n,
            "at": rng.randrange(fanned, steps) if fanned < steps and rng.random() < 0.6 else None,
            "detached": rng.random() < 0.3,
            "timeout": "10m" if rng.random() < 0.5 else None,  # armed, forgeable, never due
            "sync": [i for i in range(n) if rng.random() < 0.4],
            "flaky": [rng.randrange(n)] if rng.random() < 0.3 else [],
        }
    chance = rng.random
    return Plan(
        input=job_input,
        go_after=rng.uniform(0.0, 4.0),
        early_event=chance() < 0.1,
        start_raw=chance() < 0.1,
        duplicate_start=chance() < 0.15,
        second_go=chance() < 0.1,
        maybe_after=rng.uniform(0.0, 5.0) if chance() < 0.5 else None,
        cancel_after=rng.uniform(0.0, 3.0) if chance() < 0.15 else None,
        pause_after=rng.uniform(0.0, 2.5) if chance() < 0.2 else None,
        pause_for=rng.uniform(0.3, 2.5),
        forge_after=rng.uniform(0.2, 2.5) if chance() < 0.25 else None,
        malformed=chance() < 0.05,
        child_duplicate="child" in job_input and chance() < 0.4,
    )


def pending_timer(history: list[h.Message]) -> h.TimerSet | None:
    """The latest timer the journal shows armed and not yet used."""
    done: set[tuple[str, str]] = set()
    for msg in history:
        body = msg.body
        if isinstance(body, h.SleepCompleted):
            done.add((body.step, "sleep"))
        elif isinstance(body, h.EventReceived | h.WaitTimedOut):
            done.add((body.step, "wait_timeout"))
        elif isinstance(body, h.StepCompleted | h.StepFailed):
            done.add((body.step, "retry"))
        elif isinstance(body, h.ChildResult | h.ChildTimedOut):
            done.add((body.step, "child_timeout"))
        elif isinstance(body, h.TimerSet):
            done.discard((body.step, body.purpose))
    for msg in reversed(history):
        body = msg.body
        if isinstance(body, h.TimerSet) and (body.step, body.purpose) not in done:
            return body
        if isinstance(body, h.TERMINAL):
            return None
    return None


@dataclass
class Workload:
    log: Log
    faults: Counter[str]
    sent: dict[str, Sent] = field(default_factory=dict)
    malformed: set[int] = field(default_factory=set)
    snapshots: dict[str, list[list[h.Message]]] = field(default_factory=dict)
    children: dict[str, Sent] = field(default_factory=dict)  # child run id -> what we sent it

    # -- reading and publishing, through server restarts ----------------------

    async def _retry(self, op: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PUBLISH_DEADLINE
        while True:
            try:
                return await op()
            except FenceLost:
                raise
            except Exception:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.25)

    async def read(self, run_id: str) -> list[h.Message]:
        history = await self._retry(lambda: self.log.read(run_id))
        self.remember(run_id, history)
        return history

    def remember(self, run_id: str, history: list[h.Message]) -> None:
        """Keep the first and the latest read of each history (the append-only check)."""
        if history:
            first = self.snapshots.get(run_id, [history])[0]
            self.snapshots[run_id] = [first, history]

    async def publish(self, run_id: str, body: h.Input) -> int | None:
        try:
            ack = await self._retry(lambda: self.log.publish_input(run_id, body))
        except Exception:
            return None
        return ack.seq

    async def publish_raw(self, subject: str, data: bytes, headers: dict[str, str]) -> int | None:
        async def once() -> int:
            reply = await self.log.nc.request(subject, data, timeout=5.0, headers=headers)
            ack = msgspec.json.decode(reply.data)
            return int(ack["seq"])

        try:
            return await self._retry(once)
        except Exception:
            return None

    # -- one run's timeline ---------------------------------------------------

    async def drive(self, run_id: str, plan: Plan, rng: random.Random) -> None:
        sent = self.sent[run_id] = Sent(run_id, budget=inv_budget(plan.input))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        go = h.Event("go", {"run": run_id, "n": 1})
        if plan.early_event:
            self.faults["early_event"] += 1
            seq = await self.publish(run_id, go)
            if seq is not None:
                sent.events.append(seq)
                sent.early_events.append(seq)
        await self._start(run_id, plan, sent)
        if not sent.starts:
            return
        actions: list[tuple[float, str]] = []
        if not plan.early_event:
            actions.append((plan.go_after, "go"))
        if plan.second_go:
            actions.append((plan.go_after + rng.uniform(0.0, 1.0), "second_go"))
        if plan.maybe_after is not None:
            actions.append((plan.maybe_after, "maybe"))
        if plan.cancel_after is not None:
            actions.append((plan.cancel_after, "cancel"))
        if plan.pause_after is not None:
            actions.append((plan.pause_after, "pause"))
            actions.append((plan.pause_after + plan.pause_for, "resume"))
        if plan.forge_after is not None:
            actions.append((plan.forge_after, "forge"))
        if plan.malformed:
            actions.append((rng.uniform(0.0, 3.0), "malformed"))
        if plan.child_duplicate:
            actions.append((rng.uniform(0.0, 3.0), "child_duplicate"))
        for offset, action in sorted(actions):
            await asyncio.sleep(max(0.0, t0 + offset - loop.time()))
            await self._act(run_id, action, sent)

    async def _start(self, run_id: str, plan: Plan, sent: Sent) -> None:
        body = h.Start("invariants", plan.input)
        if plan.start_raw:
            self.faults["raw_start"] += 1
            seq = await self.publish(run_id, body)
            if seq is not None:
                sent.starts.append(seq)
        else:
            try:
                # The create-once procedure of the README (Client.start does it):
                # fenced on 0, then on the inbox's last sequence if it holds no start.
                await self._retry(lambda: Client(self.log)._create_once(run_id, body))
                refused, seq = None, 0
                history = await self.read(run_id)
                first = next((m for m in history if isinstance(m.body, h.Start)), None)
                if first is not None:
                    seq = first.seq
            except RunAlreadyExists as exc:
                refused, seq = f"RunAlreadyExists ({exc})", 0
            except Exception as exc:
                sent.expect_end = False
                sent.start_refused = f"never acknowledged: {exc}"
                return
            if refused is not None:
                # Our own first attempt may have been stored before its ack was lost.
                history = await self.read(run_id)
                first = next((m for m in history if isinstance(m.body, h.Start)), None)
                if first is not None and first.body == body:
                    seq, refused = first.seq, None
            if refused is None:
                sent.starts.append(seq)
            else:
                sent.start_refused = refused
        if plan.duplicate_start and sent.starts:
            self.faults["duplicate_start"] += 1
            seq = await self.publish(run_id, body)
            if seq is not None:
                sent.starts.append(seq)

    async def _act(self, run_id: str, action: str, sent: Sent) -> None:
        if action in ("go", "second_go", "maybe"):
            kind = "maybe" if action == "maybe" else "go"
            n = 2 if action == "second_go" else 1
            self.faults["second_event"] += action == "second_go"
            seq = await self.publish(run_id, h.Event(kind, {"run": run_id, "n": n}))
            if seq is not None:
                sent.events.append(seq)
            elif kind == "go":
                sent.expect_end = False  # the run waits for ever for a go that never came
        elif action == "cancel":
            self.faults["cancel"] += 1
            await self.publish(run_id, h.Cancel("nemesis"))
        elif action == "pause":
            self.faults["pause"] += 1
            await self.publish(run_id, h.Pause("nemesis"))
        elif action == "resume":
            if await self.publish(run_id, h.Resume()) is None:
                sent.expect_end = False
        elif action == "forge":
            await self._forge(run_id, sent)
        elif action == "child_duplicate":
            await self._child_duplicate(run_id)
        elif action == "malformed":
            self.faults["malformed_input"] += 1
            subject = self.log.names.inbox(run_id)
            seq = await self.publish_raw(subject, b'{"job": 5', {h.KIND_HEADER: "explode"})
            if seq is not None:
                sent.malformed.add(seq)
                self.malformed.add(seq)

    async def _forge(self, run_id: str, sent: Sent) -> None:
        """Publish a ``timer`` input for the timer the journal shows armed, before it is due."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        while loop.time() < deadline:
            armed = pending_timer(await self.read(run_id))
            if armed is not None:
                forged = h.Timer(timer=armed.timer, step=armed.step, purpose=armed.purpose)
                seq = await self.publish(run_id, forged)
                if seq is not None:
                    self.faults[f"forged_timer_{armed.purpose}"] += 1
                    sent.forged.add(seq)
                    if armed.step == "go":
                        sent.may_fail = True  # a go that times out fails the run: I4 says why
                return
            await asyncio.sleep(0.1)

    def child_sent(self, child_id: str) -> Sent:
        if child_id not in self.children:
            self.children[child_id] = Sent(child_id)
        return self.children[child_id]

    async def _child_duplicate(self, run_id: str) -> None:
        """Once the parent has started its child, start the child again: a create-once
        start must be refused; a raw one is stored and must change nothing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while loop.time() < deadline:
            history = await self.read(run_id)
            started = next((m.body for m in history if isinstance(m.body, h.ChildStarted)), None)
            if started is not None and started.error is None:
                child = [m for m in await self.read(started.run_id) if isinstance(m.body, h.Start)]
                if not child:
                    return  # the checker reports a child_started without its start
                sent = self.child_sent(started.run_id)
                self.faults["child_duplicate_start"] += 1
                child_id, body = started.run_id, child[0].body
                try:  # Log.create_once returns the start it found: it must find one
                    await self._retry(lambda: self.log.create_once(child_id, body))  # noqa: B023
                except FenceLost:
                    pass  # the inbox kept changing: refused too
                except Exception:
                    return
                try:  # once: a retry after a lost ack could store a start we cannot name
                    ack = await self.log.publish_input(started.run_id, child[0].body)
                except Exception:
                    sent.unsure_starts = True
                    return
                self.faults["child_raw_start"] += 1
                sent.starts.append(ack.seq)
                return
            if any(isinstance(m.body, h.TERMINAL) for m in history):
                return
            await asyncio.sleep(0.1)


def children_of(history: list[h.Message]) -> list[h.ChildStarted]:
    """The child runs a run's journal says it started (rejected starts left out)."""
    return [m.body for m in history if isinstance(m.body, h.ChildStarted) and m.body.error is None]
