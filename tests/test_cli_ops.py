"""`jetlane runs` and `jetlane api` as subprocesses against a real nats-server."""

from __future__ import annotations

import asyncio
import sys

import httpx

from jetlane import Client, Context, Names, define_job, step
from jetlane.embedded import EmbeddedNats, free_port

from .helpers import StartRunner, eventually
from .test_cli import ROOT, _env, jetlane


async def stepper(ctx: Context, input: int) -> int:
    return await step.do("one", lambda: input + 1)


async def test_runs_list_and_rebuild(
    nats_server: EmbeddedNats, names: Names, client: Client, start_runner: StartRunner
) -> None:
    await start_runner([define_job(name="stepper", handler=stepper, register=False)])
    for i in range(3):
        await client.start("stepper", i, run_id=f"cli-runs-{i}")
    for i in range(3):
        assert await client.result(f"cli-runs-{i}", timeout=10) == i + 1
    conn = ["--nats", nats_server.url, "--prefix", names.prefix, "--stream", names.stream]

    async def listed() -> bool:
        out = await jetlane("runs", "list", "--json", *conn)
        return out.code == 0 and len(out.json_lines()) == 3

    await eventually(listed, what="three runs in the index")
    page = await jetlane("runs", "list", "--json", "--limit", "2", *conn)
    lines = page.json_lines()
    assert [line.get("run_id") for line in lines[:2]] == ["cli-runs-2", "cli-runs-1"]
    assert "cursor" in lines[2]
    rest = await jetlane("runs", "list", "--json", "--cursor", lines[2]["cursor"], *conn)
    assert [line["run_id"] for line in rest.json_lines()] == ["cli-runs-0"]
    for cursor in ("garbage", "bm90IGEgY3Vyc29y"):  # not base64; base64 without a '|'
        bad = await jetlane("runs", "list", "--cursor", cursor, *conn)
        assert bad.code == 2, bad  # a usage error, not "unexpected ValueError"
        assert "cursor" in bad.err and "unexpected" not in bad.err, bad.err
    rebuilt = await jetlane("runs", "rebuild-index", "--json", *conn)
    assert rebuilt.code == 0 and rebuilt.json_lines() == [{"indexed": 3}]
    paused = await jetlane("pause", "cli-runs-0", "--json", *conn)
    assert paused.code == 0 and paused.json_lines() == [
        {"run_id": "cli-runs-0", "outcome": "already ended"}
    ]
    text = await jetlane(
        "runs", "list", "--status", "completed", *conn, env={"JETLANE_OUTPUT": "text"}
    )
    assert text.code == 0 and "cli-runs-0" in text.out and "completed" in text.out


async def test_api_command_serves_until_sigterm(nats_server: EmbeddedNats, names: Names) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jetlane.cli",
        "api",
        "--nats",
        nats_server.url,
        "--prefix",
        names.prefix,
        "--stream",
        names.stream,
        "--port",
        str(port),
        "--api-token",
        "t0ken",
        cwd=ROOT,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def up() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(up, timeout=20, what="the API to listen")
            assert (await http.get("/runs")).status_code == 401
            ok = await http.get("/runs", headers={"Authorization": "Bearer t0ken"})
            assert ok.status_code == 200
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def test_pause_and_resume_commands(
    nats_server: EmbeddedNats, names: Names, client: Client
) -> None:
    await client.start("nobody-serves-this", run_id="cli-pause")
    conn = ["--nats", nats_server.url, "--prefix", names.prefix, "--stream", names.stream]
    text = {"JETLANE_OUTPUT": "text"}
    paused = await jetlane("pause", "cli-pause", "--reason", "freeze", *conn, env=text)
    assert paused.code == 0 and "cli-pause: paused" in paused.out
    assert (await client.status("cli-pause")).paused
    resumed = await jetlane("resume", "cli-pause", *conn, env=text)
    assert resumed.code == 0 and "cli-pause: resumed" in resumed.out
    assert not (await client.status("cli-pause")).paused
    missing = await jetlane("pause", "no-such-run", *conn)
    assert missing.code == 1 and "does not exist" in missing.err
