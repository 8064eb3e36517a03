"""A manual gate: request an approval, park until someone answers, then act or give up.

The same shape serves an OAuth consent or any callback: a step asks the
outside world, ``step.wait_for_event`` parks the run (no process waits), and
``jetlane event <run> approval --payload '{"approved": true, "by": "ada"}'``
resumes it. An answer sent before the wait began is not lost.
"""

from __future__ import annotations

from typing import Any

import msgspec

from jetlane import Context, EventTimeout, job, step

from .effects import Effects


class ApprovalInput(msgspec.Struct):
    change: str
    approvers: list[str] = msgspec.field(default_factory=lambda: ["on-call"])
    timeout: str = "1h"


class ApprovalResult(msgspec.Struct):
    change: str
    status: str  # "applied", "rejected" or "timed_out"
    by: str | None = None


@job("approval")
async def approval(ctx: Context, input: ApprovalInput) -> ApprovalResult:
    gate = ctx.plugins.approvals
    await step.do(
        "request-approval",
        lambda: gate.request(change=input.change, approvers=input.approvers, key=ctx.step_key),
    )
    try:
        answer = await step.wait_for_event("approval", type="approval", timeout=input.timeout)
    except EventTimeout:
        await step.do("notify-timeout", lambda: gate.notify(change=input.change, text="expired"))
        return ApprovalResult(change=input.change, status="timed_out")
    by = answer.get("by") if isinstance(answer, dict) else None
    if not (isinstance(answer, dict) and answer.get("approved")):
        await step.do("notify-rejected", lambda: gate.notify(change=input.change, text="rejected"))
        return ApprovalResult(change=input.change, status="rejected", by=by)
    await step.do("apply-change", lambda: gate.apply(change=input.change, key=ctx.step_key))
    return ApprovalResult(change=input.change, status="applied", by=by)


class DemoApprovals:
    """Stands in for a ticketing or chat integration; its effects go to ``effects``."""

    def __init__(self, effects: Effects | None = None) -> None:
        self.effects = effects if effects is not None else Effects()
        self.requests: dict[str, str] = {}
        self.applied: set[str] = set()

    def request(self, *, change: str, approvers: list[str], key: str) -> dict[str, Any]:
        # Keyed by the step key: a re-executed step does not open a second ticket.
        ticket = self.requests.setdefault(key, f"TICKET-{len(self.requests) + 1}")
        self.effects.record("approval-requested", change=change, ticket=ticket, key=key)
        return {"ticket": ticket, "approvers": approvers}

    def notify(self, *, change: str, text: str) -> None:
        self.effects.record("notified", change=change, text=text)

    def apply(self, *, change: str, key: str) -> str:
        self.applied.add(key)
        self.effects.record("change-applied", change=change, key=key)
        return change


def plugins() -> dict[str, Any]:
    return {"approvals": DemoApprovals(Effects.from_env())}
