"""A job in two code versions, for the rolling-upgrade tests: $JETLANE_TEST_VARIANT picks one.

``a`` and ``b`` record the same steps (``b`` is a compatible upgrade: another
output); ``b-diverged`` calls a step first that ``a`` never called, so a run
that ``a`` started blocks on it. Each step execution is appended to
$JETLANE_TEST_EXEC_LOG as ``<variant>:<step key>``, and the output names the
variant that finished the run.
"""

from __future__ import annotations

import os
from typing import Any

from jetlane import Context, job, step

VARIANT = os.environ.get("JETLANE_TEST_VARIANT", "a")


def _ran(ctx: Context) -> str:
    path = os.environ.get("JETLANE_TEST_EXEC_LOG")
    if path:
        with open(path, "a") as out:
            out.write(f"{VARIANT}:{ctx.step_key}\n")
    return VARIANT


@job("upgrade")
async def upgrade(ctx: Context, input: dict[str, Any]) -> str:
    """A step, a wait for the event ``go``, a step; the output names who finished."""
    if VARIANT == "b-diverged":
        await step.do("prepare", lambda: _ran(ctx))
    await step.do("first", lambda: _ran(ctx))
    got = await step.wait_for_event("go", type="go", timeout="5m")
    await step.do("second", lambda: _ran(ctx))
    return f"{got} finished by {VARIANT}"
