"""The ``jetlane`` command line, run as subprocesses against the session's nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jobs.approval
import pytest

from jetlane import Context, Names, NonRetryableError, define_job, registry, step
from jetlane.embedded import EmbeddedNats, free_port

from .helpers import StartRunner

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETLANE_")}
    return {**env, **(extra or {})}


async def jetlane(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jetlane.cli",
        *args,
        cwd=ROOT,
        env=_env(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@pytest.fixture
def conn(nats_server: EmbeddedNats, names: Names) -> list[str]:
    """The flags that point the CLI at this test's server and stream."""
    return ["--nats", nats_server.url, "--prefix", names.prefix, "--stream", names.stream]


async def _fails(ctx: Context, input: dict[str, Any]) -> None:
    def boom() -> None:
        raise NonRetryableError("the disk is on fire")

    await step.do("explode", boom)


FAILS = define_job(name="fails", handler=_fails, register=False)


@pytest.fixture
async def served(start_runner: StartRunner) -> None:
    # importing jobs.approval registered its job
    await start_runner([registry()["approval"], FAILS], plugins=jobs.approval.plugins())


async def test_start_event_status_history(conn: list[str], served: None) -> None:
    started = await jetlane("start", "approval", "--input", '{"change": "c1"}', "--id", "a1", *conn)
    assert started.code == 0, started.err
    assert started.out.strip() == "a1"

    status = await _wait_status(conn, "a1", "waiting")
    assert status["waiting_for"] == "approval" and status["step"] == "approval"

    sent = await jetlane(
        "event", "a1", "approval", "--payload", '{"approved": true, "by": "ada"}', *conn
    )
    assert sent.code == 0, sent.err
    assert "sent event 'approval' to run a1" in sent.out

    done = await _wait_status(conn, "a1", "completed")
    assert done["output"] == {"change": "c1", "status": "applied", "by": "ada"}

    history = await jetlane("history", "a1", "--json", *conn)
    assert history.code == 0, history.err
    kinds = [m["kind"] for m in history.json_lines()]
    assert kinds[0] == "start" and kinds[-1] == "run_completed"
    assert {"wait_started", "event", "event_received"} <= set(kinds)

    text = await jetlane("history", "a1", *conn, env={"JETLANE_OUTPUT": "text"})
    assert text.code == 0
    assert "step_completed" in text.out and "request-approval" in text.out
    human = await jetlane("status", "a1", *conn, env={"JETLANE_OUTPUT": "text"})
    assert "run a1 (approval): completed" in human.out


async def _wait_status(conn: list[str], run_id: str, wanted: str) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        result = await jetlane("status", run_id, "--json", *conn)
        # A start still on its way (a concurrent `start --wait`) reads as "does not exist".
        assert result.code == 0 or "does not exist" in result.err, result.err
        status: dict[str, Any] = json.loads(result.out) if result.code == 0 else {}
        if status.get("status") == wanted:
            return status
        assert asyncio.get_running_loop().time() < deadline, f"status stayed {status}"
        await asyncio.sleep(0.1)


async def test_start_wait_follows_the_run_and_sets_the_exit_code(
    conn: list[str], served: None
) -> None:
    failed = await jetlane("start", "fails", "--input", "{}", "--wait", *conn)
    assert failed.code == 3, failed.err
    lines = failed.json_lines()
    assert lines[0]["job"] == "fails"
    assert lines[-1]["kind"] == "run_failed"
    assert "the disk is on fire" in lines[-1]["body"]["error"]["message"]

    waiter = asyncio.create_task(
        jetlane(
            "start", "approval", "--input", '{"change": "c2"}', "--run-id", "w1", "--wait", *conn
        )
    )
    await _wait_status(conn, "w1", "waiting")
    assert (
        await jetlane("event", "w1", "approval", "--payload", '{"approved": 1}', *conn)
    ).code == 0
    done = await waiter
    assert done.code == 0, done.err
    assert done.json_lines()[-1]["kind"] == "run_completed"

    timed_out = await jetlane(
        "start", "approval", "--input", '{"change": "c3"}', "--wait", "--timeout", "0.5", *conn
    )
    assert timed_out.code == 1
    assert "is still waiting after 0.5s" in timed_out.err


async def test_cancel(conn: list[str], served: None) -> None:
    assert (
        await jetlane("start", "approval", "--input", '{"change": "c"}', "--run-id", "c1", *conn)
    ).code == 0
    await _wait_status(conn, "c1", "waiting")
    cancelled = await jetlane("cancel", "c1", "--reason", "changed my mind", *conn)
    assert cancelled.code == 0, cancelled.err
    assert "cancel sent to run c1" in cancelled.out
    status = await _wait_status(conn, "c1", "cancelled")
    assert status["error"]["message"] == "changed my mind"
    again = await jetlane("cancel", "c1", *conn)
    assert again.code == 0 and "already ended (cancelled)" in again.out


async def test_errors_are_one_line_with_an_exit_code(
    conn: list[str], served: None, nats_server: EmbeddedNats
) -> None:
    async def error(*args: str, code: int, says: str) -> None:
        result = await jetlane(*args)
        assert result.code == code, (args, result)
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("jetlane: error: "), result.err
        assert says in lines[0], lines[0]

    unreachable = "nats://127.0.0.1:1"
    await error(
        "status",
        "x",
        "--nats",
        unreachable,
        code=1,
        says=f"cannot connect to NATS at {unreachable}",
    )
    await error("start", "approval", "--nats", unreachable, code=1, says=unreachable)
    await error("status", "nope", *conn, code=1, says="run 'nope' does not exist")
    await error("event", "nope", "approval", *conn, code=1, says="run 'nope' does not exist")
    await error("history", "nope", *conn, code=1, says="run 'nope' does not exist")
    await error("cancel", "nope", *conn, code=1, says="run 'nope' does not exist")
    await error(
        "start", "approval", "--input", "{oops", *conn, code=2, says="--input is not valid JSON"
    )
    await error(
        "event", "x", "t", "--payload", "[1,", *conn, code=2, says="--payload is not valid JSON"
    )
    await error("start", "approval", "--input", '{"change": 5}', *conn, code=2, says="`$.change`")
    await error("start", "approval", "--input", "{}", *conn, code=2, says="`change`")
    await error("status", "bad.id", *conn, code=2, says="run id 'bad.id' is invalid")
    await error(
        "start", "approval", "--input-file", "/no/such/file", *conn, code=2, says="--input-file"
    )
    assert (
        await jetlane("start", "approval", "--input", '{"change": "c"}', "--id", "dup", *conn)
    ).code == 0
    await error(
        "start",
        "approval",
        "--input",
        '{"change": "c"}',
        "--id",
        "dup",
        *conn,
        code=1,
        says="run 'dup' already exists",
    )
    await error("history", *conn, code=2, says="history takes a RUN_ID or --all")


async def test_unserved_job_is_refused_with_a_did_you_mean_unless_queued(
    conn: list[str], served: None
) -> None:
    typo = await jetlane("start", "aproval", "--input", '{"change": "c"}', *conn)
    assert typo.code == 2
    assert "no runner serves job 'aproval'; did you mean 'approval'?" in typo.err
    assert "--queue-unserved" in typo.err
    result = await jetlane("start", "nobody-serves-this", "--id", "q1", "--queue-unserved", *conn)
    assert result.code == 0, result.err
    assert "no runner serves job 'nobody-serves-this'" in result.err
    status = await jetlane("status", "q1", "--json", *conn)
    assert json.loads(status.out)["status"] == "queued"


async def test_jobs_lists_what_runners_serve_with_input_schemas(
    conn: list[str], served: None
) -> None:
    listed = await jetlane("jobs", "--json", *conn)
    assert listed.code == 0 and {j["name"] for j in listed.json_lines()} == {"approval", "fails"}
    one = await jetlane("jobs", "approval", "--json", *conn)
    [described] = one.json_lines()
    assert described["name"] == "approval" and described["takes_input"] is True
    assert "change" in described["input_schema"]["$defs"]["ApprovalInput"]["properties"]
    missing = await jetlane("start", "approval", *conn)
    assert missing.code == 2
    assert "--input is required for job 'approval': schema" in missing.err


async def test_flags_read_the_environment(
    nats_server: EmbeddedNats, names: Names, served: None
) -> None:
    env = {
        "JETLANE_NATS_URL": nats_server.url,
        "JETLANE_PREFIX": names.prefix,
        "JETLANE_STREAM": names.stream,
    }
    result = await jetlane(
        "start", "approval", "--input", '{"change": "e"}', "--id", "env1", env=env
    )
    assert result.code == 0, result.err
    status = await jetlane("status", "env1", "--json", env=env)
    assert status.code == 0 and json.loads(status.out)["run_id"] == "env1"
    helptext = await jetlane("runner", "--help")
    for var in ("JETLANE_NATS_URL", "JETLANE_JOBS", "JETLANE_CONCURRENCY", "JETLANE_NATS_CREDS"):
        assert var in helptext.out


async def test_history_all_follow_is_an_audit_feed(conn: list[str], served: None) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jetlane.cli",
        "history",
        "--all",
        "--follow",
        *conn,
        cwd=ROOT,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert (await jetlane("start", "fails", "--id", "f1", "--input", "{}", *conn)).code == 0
        assert (await jetlane("start", "fails", "--id", "f2", "--input", "{}", *conn)).code == 0
        ended: set[str] = set()
        assert proc.stdout is not None
        while ended != {"f1", "f2"}:
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            message = json.loads(line)
            if message["kind"] == "run_failed":
                ended.add(message["run_id"])
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 15) == 130
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.communicate()


@pytest.mark.parametrize("output", ["json", "text"])
async def test_a_reader_that_leaves_ends_the_cli_quietly(
    conn: list[str], served: None, output: str
) -> None:
    """`jetlane history --all --follow | head -1`: exit 141, no traceback, no 'unexpected';
    in text mode too (JETLANE_OUTPUT=text), whose printer would otherwise exit 1."""
    assert (await jetlane("start", "fails", "--run-id", "p1", "--input", "{}", *conn)).code == 0
    args = [sys.executable, "-m", "jetlane.cli", "history", "--all", "--follow", *conn]
    with subprocess.Popen(  # noqa: ASYNC220 (a plain pipe, so the test can close it)
        args,
        cwd=ROOT,
        env=_env({"JETLANE_OUTPUT": output}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            first = (await asyncio.to_thread(proc.stdout.readline)).decode()
            assert (json.loads(first)["run_id"] if output == "json" else first.split()[1]) == "p1"
            proc.stdout.close()  # the reader leaves, as head does
            for n in range(2, 6):  # more output for the CLI to write into the closed pipe
                await jetlane("start", "fails", "--run-id", f"p{n}", "--input", "{}", *conn)
            try:
                code = await asyncio.to_thread(proc.wait, 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError(
                    f"the CLI went on after its reader left: {proc.stderr.read().decode()}"
                ) from None
            err = proc.stderr.read().decode()
            assert code == 141, err
            assert "unexpected" not in err and "Traceback" not in err and "BrokenPipe" not in err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def _read_until(stream: asyncio.StreamReader, text: str, timeout: float = 20) -> list[str]:
    lines: list[str] = []
    async with asyncio.timeout(timeout):
        while not lines or text not in lines[-1]:
            line = await stream.readline()
            assert line, f"stream ended before {text!r}: {lines}"
            lines.append(line.decode())
    return lines


async def test_runner_serves_until_sigterm_then_exits_0(conn: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jetlane.cli",
        "runner",
        "--jobs",
        "jobs",
        *conn,
        cwd=ROOT,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        logs = await _read_until(proc.stderr, "runner started")
        started = json.loads(logs[-1])  # JSON log lines: stderr is not a terminal
        assert set(started["jobs"]) >= {"rolling-deploy", "approval", "batch-etl"}
        deploy = '{"environments": ["dev"], "cool_down": "0.2s", "retry_delay": "0.1s"}'
        result = await jetlane("start", "rolling-deploy", "--input", deploy, "--wait", *conn)
        assert result.code == 0, result.err
        assert result.json_lines()[-1]["body"]["output"] == {
            "results": [{"env": "dev", "ok": True}]
        }
        etl = '{"source": "s", "batches": 2, "cool_down": "0.1s", "retry_delay": "0.2s"}'
        result = await jetlane("start", "batch-etl", "--input", etl, "--wait", *conn, timeout=60)
        assert result.code == 0, result.err
        assert result.json_lines()[-1]["body"]["output"]["rows"] == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.communicate()


async def test_runner_without_jobs_or_server_fails_clearly(conn: list[str]) -> None:
    missing = await jetlane("runner", "--jobs", "no_such_module", *conn)
    assert missing.code == 2 and "cannot import jobs module 'no_such_module'" in missing.err
    down = await jetlane("runner", "--jobs", "jobs", "--nats", "nats://127.0.0.1:1")
    assert down.code == 1 and "cannot connect to NATS at nats://127.0.0.1:1" in down.err


async def test_dev_starts_nats_and_a_runner_and_stops_both(tmp_path: Path) -> None:
    data = tmp_path / "data"
    api_port, metrics_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jetlane.cli",
        "dev",
        "--port",
        "0",
        "--api-port",
        str(api_port),
        "--metrics-port",
        str(metrics_port),
        "--data",
        str(data),
        cwd=ROOT,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        lines = await _read_until(proc.stdout, "ready")
        url = next(w for line in lines for w in line.split() if w.startswith("nats://"))
        assert f"http://127.0.0.1:{api_port}" in "\n".join(lines)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{api_port}/healthz")).status_code == 200
            ready = await http.get(f"http://127.0.0.1:{metrics_port}/readyz")
            assert ready.status_code == 200
        approve = '{"change": "d"}'
        assert (
            await jetlane("start", "approval", "--input", approve, "--id", "d1", "--nats", url)
        ).code == 0
        assert (
            await jetlane(
                "event", "d1", "approval", "--payload", '{"approved": true}', "--nats", url
            )
        ).code == 0
        waited = await jetlane(
            "start", "fails", "--nats", url, "--timeout", "1", "--wait", "--queue-unserved"
        )
        assert waited.code == 1  # `fails` is not in jobs/: queued with a warning, never run
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.communicate()
    conf = str(data / "nats-server.conf")
    assert not _processes_mentioning(conf), "jetlane dev left nats-server running"
    assert (data / "jetstream").is_dir()


def _processes_mentioning(text: str) -> list[Path]:
    return [p for p in Path("/proc").iterdir() if p.name.isdigit() and text in _cmdline(p)]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


async def test_an_ended_run_refuses_events_unless_forced(conn: list[str], served: None) -> None:
    assert (
        await jetlane("start", "approval", "--input", '{"change": "x"}', "--id", "x1", *conn)
    ).code == 0
    await _wait_status(conn, "x1", "waiting")
    assert (
        await jetlane("event", "x1", "approval", "--payload", '{"approved": true}', *conn)
    ).code == 0
    await _wait_status(conn, "x1", "completed")

    refused = await jetlane("event", "x1", "approval", *conn)
    assert refused.code == 1, refused
    assert refused.err.count("\n") == 1 and "has already ended (completed)" in refused.err
    kinds = [m["kind"] for m in (await jetlane("history", "x1", "--json", *conn)).json_lines()]
    assert kinds[-1] == "run_completed"

    forced = await jetlane(
        "event", "x1", "approval", "--force", *conn, env={"JETLANE_OUTPUT": "text"}
    )
    assert forced.code == 0, forced.err
    assert "stored event 'approval' for run x1, which has ended" in forced.out
    kinds = [m["kind"] for m in (await jetlane("history", "x1", "--json", *conn)).json_lines()]
    assert kinds[-2:] == ["run_completed", "event"]
    text = await jetlane("history", "x1", *conn, env={"JETLANE_OUTPUT": "text"})
    assert "after the end: nothing acts on it" in text.out.splitlines()[-1]
    status = await jetlane("status", "x1", *conn, env={"JETLANE_OUTPUT": "text"})
    assert "1 event stored after the end" in status.out


async def test_paused_runs_say_so_and_due_times_are_not_pending(
    conn: list[str], served: None
) -> None:
    approve = '{"change": "p", "timeout": "1s"}'
    assert (await jetlane("start", "approval", "--input", approve, "--id", "p1", *conn)).code == 0
    await _wait_status(conn, "p1", "waiting")
    paused = await jetlane("pause", "p1", "--reason", "change freeze", *conn)
    assert paused.code == 0, paused.err

    text = {"JETLANE_OUTPUT": "text"}
    status = await jetlane("status", "p1", *conn, env=text)
    first = status.out.splitlines()[0]
    assert "waiting, paused at step approval" in first, first
    assert "; paused by " in first and "@" in first and ": change freeze" in first, first

    # The 1 s timeout passes while paused: the status says it is due, not "until".
    deadline = asyncio.get_running_loop().time() + 15
    while "due since" not in (line := (await jetlane("status", "p1", *conn, env=text)).out):
        assert asyncio.get_running_loop().time() < deadline, line
        await asyncio.sleep(0.1)
    assert "timeout due since" in line and "(acts when resumed)" in line and " until " not in line
    assert "it acts when the run is resumed" in line  # the detail row (JSON has it too)

    async def listed() -> Result:
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            result = await jetlane("runs", "list", "--status", "paused", *conn, env=text)
            if "p1" in result.out:
                return result
            assert asyncio.get_running_loop().time() < deadline, result
            await asyncio.sleep(0.1)

    table = (await listed()).out.splitlines()
    assert table[0].split() == ["RUN", "JOB", "STATUS", "PAUSED", "STEP", "CREATED"]
    assert [row.split()[:4] for row in table[1:]] == [["p1", "approval", "waiting", "yes"]]

    typo = await jetlane("runs", "list", "--status", "sleepy", *conn)
    assert typo.code == 2 and typo.err.count("\n") == 1, typo
    assert "did you mean 'sleeping'" in typo.err and "queued, running" in typo.err

    assert (await jetlane("resume", "p1", *conn)).code == 0
    done = await _wait_status(conn, "p1", "completed")
    assert done["output"]["status"] == "timed_out" and not done["paused"]
