"""``jetlane dev --reload``: a subprocess whose runner child is replaced when the code changes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import BinaryIO

from jetlane.cli.reload import changed, snapshot

from .test_cli import _env, _wait_status, jetlane

# The job the test edits: it parks on an event, then returns what the step after it says.
CODE = """
from jetlane import Context, job, step


@job("parked")
async def parked(ctx: Context, input: None) -> str:
    await step.wait_for_event({wait!r}, type="go", timeout="1h")
    return await step.do("after", lambda: {result!r})
"""


class Lines:
    """What a process prints, line by line, kept for the assertion messages."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream
        self.seen: list[str] = []

    async def until(self, text: str, timeout: float = 60) -> list[str]:
        """The lines up to and including the first (new) one containing ``text``."""
        got: list[str] = []
        async with asyncio.timeout(timeout):
            while not got or text not in got[-1]:
                line = await self.stream.readline()
                assert line, f"dev ended before {text!r}: {self.seen}"
                got.append(line.decode().rstrip("\n"))
                self.seen.append(got[-1])
        return got


def _log_file(path: Path) -> BinaryIO:
    return path.open("wb")


async def test_dev_reload_serves_new_code_and_survives_broken_code(tmp_path: Path) -> None:
    project = tmp_path / "project"
    package = project / "reloadjobs"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    flow = package / "flow.py"
    flow.write_text("def broken(:\n")  # broken from the start: dev waits for a fix
    err = _log_file(tmp_path / "dev.err")  # runner logs: read only when a test fails
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jetlane.cli",
        "dev",
        "--reload",
        "--jobs",
        "reloadjobs",
        "--port",
        "0",
        "--api-port",
        "0",
        "--data",
        str(tmp_path / "data"),
        cwd=project,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=err,
    )
    assert proc.stdout is not None
    out = Lines(proc.stdout)
    try:
        failed = await out.until("SyntaxError")
        assert any("reload failed; no runner is running" in line for line in failed), failed
        assert any(str(flow) in line and "line 1" in line for line in failed), failed

        flow.write_text(CODE.format(wait="go", result="v1"))
        banner = await out.until("ready. Try:")
        url = next(w for line in banner for w in line.split() if w.startswith("nats://"))
        nats = ["--nats", url]
        assert (await jetlane("start", "parked", "--id", "r1", *nats)).code == 0
        await _wait_status(nats, "r1", "waiting")

        # An edit of what the step after the wait returns: the parked run goes on with it.
        flow.write_text(CODE.format(wait="go", result="v2"))
        reloaded = await out.until("code reloaded")
        assert "reloadjobs/flow.py changed: reloading" in reloaded[-2], reloaded
        assert "1 run in flight replays on this code" in (await out.until("in flight"))[-1]
        assert (await jetlane("event", "r1", "go", *nats)).code == 0
        assert (await _wait_status(nats, "r1", "completed"))["output"] == "v2"

        # A syntax error: reported, dev lives on, and the runner it had keeps serving.
        flow.write_text(CODE.format(wait="go", result="v2") + "def broken(:\n")
        failed = await out.until("SyntaxError")
        assert any("keeps running the code it loaded then" in line for line in failed), failed
        assert proc.returncode is None
        assert (await jetlane("start", "parked", "--id", "r2", *nats)).code == 0
        await _wait_status(nats, "r2", "waiting")

        # The fix renames the wait under the parked r2: the reload says that r2 blocks
        # at its next wake-up, and the event then blocks it.
        flow.write_text(CODE.format(wait="renamed", result="v3"))
        await out.until("code reloaded")
        said = await out.until("would block")
        assert "1 of 1 run in flight does not fit this code" in said[0], said
        assert "run 'r2'" in said[-1] and "'go'" in said[-1], said
        assert (await jetlane("event", "r2", "go", *nats)).code == 0
        await _wait_status(nats, "r2", "blocked")

        # Code that fits again: the reload says so, and the blocked run completes on it.
        flow.write_text(CODE.format(wait="go", result="v4"))
        await out.until("code reloaded")
        assert "blocked run 'r2' replays on this code" in (await out.until("blocked run"))[-1]
        assert (await _wait_status(nats, "r2", "completed"))["output"] == "v4"

        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        err.close()
    assert not _children_in(project), "the runner child outlived jetlane dev"


def _children_in(cwd: Path) -> list[int]:
    """Processes of a reload runner child working in ``cwd``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            here = os.readlink(entry / "cwd")
        except OSError:
            continue
        if b"jetlane.cli.reload" in cmdline and here == str(cwd):
            found.append(int(entry.name))
    return found


def test_the_watcher_sees_python_files_only(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("a = 1\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "sub").mkdir()
    before = snapshot([tmp_path])
    (tmp_path / "__pycache__" / "a.cpython.pyc").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert changed(before, snapshot([tmp_path])) == []
    (tmp_path / "sub" / "b.py").write_text("b = 1\n")
    (tmp_path / "a.py").write_text("a = 22\n")
    assert changed(before, snapshot([tmp_path])) == [
        str(tmp_path / "a.py"),
        str(tmp_path / "sub" / "b.py"),
    ]
    edited = snapshot([tmp_path])
    (tmp_path / "a.py").unlink()
    assert changed(edited, snapshot([tmp_path])) == [str(tmp_path / "a.py")]
    assert changed(snapshot([tmp_path / "sub" / "b.py"]), {}) == [str(tmp_path / "sub" / "b.py")]


# A job that returns what a helper module beside its package says.
HELPED = """
import shared
from jetlane import Context, job, step


@job("helped")
async def helped(ctx: Context, input: None) -> str:
    await step.wait_for_event("wait", type="go", timeout="1h")
    return await step.do("after", lambda: shared.VALUE)
"""


async def test_dev_reload_sees_an_edit_of_a_helper_the_jobs_import(tmp_path: Path) -> None:
    """A module outside ``--jobs`` that the jobs import from the project (``shared.py``
    beside the package) is their code too: editing it reloads."""
    project = tmp_path / "project"
    package = project / "helpedjobs"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "flow.py").write_text(HELPED)
    shared = project / "shared.py"
    shared.write_text("VALUE = 'v1'\n")
    err = _log_file(tmp_path / "dev.err")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "jetlane.cli", "dev", "--reload", "--jobs", "helpedjobs"),
        *("--port", "0", "--api-port", "0", "--data", str(tmp_path / "data")),
        cwd=project,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=err,
    )
    assert proc.stdout is not None
    out = Lines(proc.stdout)
    try:
        banner = await out.until("ready. Try:")
        url = next(w for line in banner for w in line.split() if w.startswith("nats://"))
        nats = ["--nats", url]
        assert (await jetlane("start", "helped", "--run-id", "h1", *nats)).code == 0
        await _wait_status(nats, "h1", "waiting")
        shared.write_text("VALUE = 'v2'\n")
        reloaded = await out.until("code reloaded")
        assert "shared.py changed: reloading" in reloaded[-2], reloaded
        assert (await jetlane("event", "h1", "go", *nats)).code == 0
        assert (await _wait_status(nats, "h1", "completed"))["output"] == "v2"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        err.close()
