"""``make demo``'s script, run fast: both runs complete and no process is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_demo_completes_both_runs_and_leaves_no_process() -> None:
    env = {
        **os.environ,
        "JETLANE_DEMO_COOL_DOWN": "0.3s",
        "JETLANE_DEMO_RETRY_DELAY": "0.2s",
        "JETLANE_DEMO_APPROVAL_AFTER": "0.2",
        "JETLANE_DEMO_TIMEOUT": "40",
    }
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.demo", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 60
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    first, last = lines[0], lines[-1]
    assert first["demo"] == "started"
    assert last["demo"] == "done" and last["ok"] is True
    assert last["runs"]["deploy-1"]["status"] == "completed"
    assert last["runs"]["approval-1"]["status"] == "completed"
    assert last["runs"]["approval-1"]["output"]["status"] == "applied"
    kinds = [(m["run_id"], m["kind"]) for m in lines[1:-1]]
    assert ("deploy-1", "step_failed") in kinds  # the transient failure was retried
    assert ("approval-1", "event_received") in kinds
    assert not _alive(first["nats_pid"]), "the demo left nats-server running"


def test_demo_interrupted_stops_its_server() -> None:
    env = {**os.environ, "JETLANE_DEMO_COOL_DOWN": "30s", "JETLANE_DEMO_TIMEOUT": "40"}
    with subprocess.Popen(
        [sys.executable, "-m", "jobs.demo", "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            first = json.loads(proc.stdout.readline())
            for line in proc.stdout:  # until the deploy parks in its cool-down
                if json.loads(line).get("kind") == "timer_set" and "cool-down" in line:
                    break
            proc.terminate()
            assert proc.wait(timeout=30) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not _alive(first["nats_pid"]), "the demo left nats-server running"
