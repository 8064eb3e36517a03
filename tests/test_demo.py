"""``make demo``'s script, run fast: both runs complete, a runner SIGKILLed mid-step is replaced
and the run goes on from its last checkpoint, a timer due with no runner up fires when one
returns, and no process is left behind.

The demo runs once for the module (a subprocess with fast timings, ``--json``); each test
reads a different part of its timeline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = {
    # The runner is stopped in the first cool-down and killed during the first rollout:
    # both last long enough for that on a loaded machine (the demo reports it otherwise).
    "JETLANE_DEMO_COOL_DOWN": "4s",
    "JETLANE_DEMO_ROLLOUT": "2",
    "JETLANE_DEMO_RETRY_DELAY": "0.2s",
    "JETLANE_DEMO_TAKEOVER": "1",
    "JETLANE_DEMO_TIMEOUT": "50",
}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@dataclass
class Timeline:
    """The demo's JSON lines: its own (``demo``) and every history message, in print order."""

    lines: list[dict[str, Any]]

    def story(self, event: str, **match: Any) -> tuple[int, dict[str, Any]]:
        """The first of the demo's own lines for ``event`` (with ``match``ing fields)."""
        for index, line in enumerate(self.lines):
            if line.get("demo") == event and all(line.get(k) == v for k, v in match.items()):
                return index, line
        raise AssertionError(f"the demo printed no {event!r} line matching {match}")

    def entries(self, run_id: str, kind: str, step: str | None = None) -> list[int]:
        """Indexes of the run's history messages of ``kind`` (for ``step``)."""
        return [
            index
            for index, line in enumerate(self.lines)
            if line.get("run_id") == run_id
            and line.get("kind") == kind
            and (step is None or line["body"].get("step") == step)
        ]

    @property
    def done(self) -> dict[str, Any]:
        return self.lines[-1]

    def pids(self) -> list[int]:
        return [line["pid"] for line in self.lines if line.get("demo") == "runner_started"]


@pytest.fixture(scope="module")
def demo() -> Iterator[Timeline]:
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.demo", "--json"],
        cwd=ROOT,
        env={**os.environ, **FAST},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    yield Timeline([json.loads(line) for line in proc.stdout.splitlines()])


def test_demo_completes_both_runs_and_leaves_no_process(demo: Timeline) -> None:
    first, last = demo.lines[0], demo.done
    assert first["demo"] == "started"
    assert last["demo"] == "done" and last["ok"] is True and last["problems"] == []
    assert last["runs"]["deploy-1"]["status"] == "completed"
    assert last["runs"]["approval-1"]["status"] == "completed"
    assert last["runs"]["approval-1"]["output"]["status"] == "applied"
    assert demo.entries("deploy-1", "step_failed")  # the transient failure was retried
    assert demo.entries("approval-1", "event_received")
    assert not _alive(first["nats_pid"]), "the demo left nats-server running"
    assert len(demo.pids()) == 3
    assert not [pid for pid in demo.pids() if _alive(pid)], "the demo left a runner running"


def test_a_runner_killed_mid_step_is_replaced_and_the_run_goes_on_from_its_checkpoint(
    demo: Timeline,
) -> None:
    killed_at, killed = demo.story("runner_killed")
    assert killed["signal"] == "SIGKILL" and killed["exit_code"] == -signal.SIGKILL
    assert killed["step"] == "deploy:staging"
    assert killed["pid"] == demo.story("runner_started", runner=1)[1]["pid"]
    assert not _alive(killed["pid"])
    replacement = demo.story("runner_started", runner=2)[1]["pid"]

    # The steps completed before the kill: recorded once in the final history, not re-run.
    before = [
        demo.lines[i]["body"]["step"]
        for i in demo.entries("deploy-1", "step_completed")
        if i < killed_at
    ]
    assert before == killed["completed_before"] and "build" in before
    for step in before:
        assert len(demo.entries("deploy-1", "step_completed", step)) == 1, step
    # ... and their side effects happened once, in the killed runner.
    effects = demo.done["effects"]
    builds = [e for e in effects if e["effect"] == "build"]
    assert [e["pid"] for e in builds] == [killed["pid"]]
    assert [e["pid"] for e in effects if e["effect"] == "approval-requested"] == [killed["pid"]]

    # The killed step: its rollout started in the killed runner and never finished there;
    # the replacement attempted it again and completed it, once.
    staging = [e for e in effects if e.get("env") == "staging"]
    rollouts = [e["pid"] for e in staging if e.get("outcome") == "rolling out"]
    assert rollouts == [killed["pid"], replacement]
    assert [e["pid"] for e in staging if e["effect"] == "deployed"] == [replacement]
    completed = demo.entries("deploy-1", "step_completed", "deploy:staging")
    assert len(completed) == 1 and completed[0] > killed_at


def test_a_timer_due_with_no_runner_up_fires_when_a_runner_returns(demo: Timeline) -> None:
    _, parked = demo.story("parked")
    step, fire_at = parked["step"], datetime.fromisoformat(parked["fire_at"])
    stopped_at, stopped = demo.story("runner_stopped")
    assert stopped["signal"] == "SIGTERM" and stopped["runners_up"] == 0
    assert not _alive(stopped["pid"])
    down = datetime.fromisoformat(stopped["time"])
    assert down < fire_at  # stopped before the timer came due
    # The log stamps messages to the millisecond: compare with the stop at that precision.
    down = down.replace(microsecond=down.microsecond // 1000 * 1000)
    due_at, due = demo.story("timer_due")
    assert due["runners_up"] == 0 and datetime.fromisoformat(due["now"]) >= fire_at
    # Printed before the third runner process was spawned.
    returned_at, returning = demo.story("runner_starting", runner=3)
    up = datetime.fromisoformat(returning["time"])
    assert stopped_at < due_at < returned_at

    # While no runner was up the timer fired into the inbox (the demo waited for it before
    # starting a runner), the approval sent meanwhile waited there too, and no journal
    # entry was written.
    [fired] = demo.entries("deploy-1", "timer", step)
    assert stopped_at < fired < returned_at
    [event] = demo.entries("approval-1", "event")
    assert down <= datetime.fromisoformat(demo.lines[event]["time"]) < up
    written = [datetime.fromisoformat(m["time"]) for m in demo.lines if m.get("direction") == "out"]
    assert not [t for t in written if down < t < up], "a run moved with no runner up"

    # The runner that returned took both up: the sleep ended and both runs completed.
    [woke] = demo.entries("deploy-1", "sleep_completed", step)
    [deployed] = demo.entries("deploy-1", "run_completed")
    [approved] = demo.entries("approval-1", "run_completed")
    assert returned_at < woke < deployed and returned_at < approved


def test_demo_interrupted_stops_its_server_and_runners() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "jobs.demo", "--json"],
        cwd=ROOT,
        env={**os.environ, **FAST},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            lines = [json.loads(proc.stdout.readline())]
            for line in proc.stdout:  # until the runner that replaced the killed one is up
                lines.append(json.loads(line))
                if lines[-1].get("demo") == "runner_started" and lines[-1]["runner"] == 2:
                    break
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            assert proc.wait(timeout=30) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not _alive(lines[0]["nats_pid"]), "the demo left nats-server running"
    runners = Timeline(lines).pids()
    assert len(runners) == 2
    assert not [pid for pid in runners if _alive(pid)], "the demo left a runner running"
