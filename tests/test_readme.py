"""The README's examples run here, so they cannot drift.

Blocks after ``<!-- readme-test: NAME -->`` are executed against the
session's nats-server (the tutorial's job served by a runner); blocks after
``<!-- wire: KIND -->`` must decode as that kind with exactly the documented
fields.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from jetlane import Client, Names, registry
from jetlane import wire as h
from jetlane.embedded import EmbeddedNats

from .helpers import StartRunner

README = Path(__file__).resolve().parent.parent / "README.md"
PROTOCOL = README.parent / "docs" / "protocol.md"  # the README's wire protocol, in full
DEFAULT_URL = "nats://127.0.0.1:4222"
_TESTED = re.compile(r"<!-- readme-test: (\w+) -->\s*```\w+\n(.*?)```", re.S)
_WIRE = re.compile(r"<!-- wire: (\w+) -->\s*```json\n(.*?)```", re.S)


def documents() -> str:
    return README.read_text() + PROTOCOL.read_text()


def blocks() -> dict[str, str]:
    return dict(_TESTED.findall(documents()))


@pytest.fixture
def names() -> Names:
    """The README speaks the default subjects and stream; so do these tests."""
    return Names()


def test_every_wire_kind_is_documented_with_an_example_that_decodes() -> None:
    examples = _WIRE.findall(documents())
    documented = {kind for kind, _ in examples}
    assert documented == set(h.INPUT_KINDS) | set(h.JOURNAL_KINDS)
    shown: dict[str, set[str]] = {}
    for kind, text in examples:
        direction = "in" if kind in h.INPUT_KINDS else "out"
        body = h.decode(kind, text.encode(), direction=direction)
        keys = set(msgspec.json.decode(text.encode()))
        fields = set(type(body).__struct_fields__)
        assert keys <= fields, f"{kind}: the README shows fields the protocol lacks"
        shown.setdefault(kind, set()).update(keys)
    for kind, keys in shown.items():
        if kind in h.JOURNAL_KINDS:
            # Every field of an entry is shown by some example of its kind (a field left
            # out when it has its default is shown in an example where it has not).
            fields = set(h.JOURNAL_KINDS[kind].__struct_fields__)
            assert keys == fields, f"{kind}: the docs omit {sorted(fields - keys)}"


async def _run(argv: list[str], url: str, timeout: float = 60) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETLANE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["JETLANE_NATS_URL"] = url
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}: {err.decode()}"
    return out.decode()


@pytest.fixture
async def tutorial(start_runner: StartRunner) -> None:
    code = blocks()["job"]
    namespace: dict[str, Any] = {"__name__": "readme_tutorial"}
    exec(compile(code, f"{README}:job", "exec"), namespace)
    await start_runner([registry()["hello"]])


async def test_tutorial_shell(tutorial: None, client: Client, nats_server: EmbeddedNats) -> None:
    outputs = []
    for line in blocks()["shell"].strip().splitlines():
        outputs.append(await _run(shlex.split(line), nats_server.url))
    assert outputs[0].strip() == "hello-1"
    assert '"kind":"run_completed"' in outputs[-1]
    assert await client.result("hello-1", timeout=30) == {
        "greeting": "Hello, Ada!",
        "reply": "hi there",
    }


async def test_tutorial_python(tutorial: None, nats_server: EmbeddedNats) -> None:
    code = blocks()["python"].replace(DEFAULT_URL, nats_server.url)
    out = await _run([sys.executable, "-c", code], nats_server.url)
    assert "{'greeting': 'Hello, Grace!', 'reply': 'nice to meet you'}" in out
    assert "\ncompleted\n" in out
    assert "run_completed" in out


async def test_wire_protocol_from_plain_nats(tutorial: None, nats_server: EmbeddedNats) -> None:
    code = blocks()["raw"]
    assert "jetlane" not in code.replace("jetlane.run.", "")  # no jetlane import
    out = await _run([sys.executable, "-c", code.replace(DEFAULT_URL, nats_server.url)], "")
    lines = out.strip().splitlines()
    assert " start " in lines[0]
    assert " run_completed " in lines[-1]
    assert "hello from plain NATS" in lines[-1]
