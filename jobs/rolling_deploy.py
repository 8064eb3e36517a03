"""The seed example: build once, then deploy environments one by one, with a cool-down and a
health check.

The deploy API is a plugin object on the runner. ``DemoDeployer`` stands in
for a real one: its first ``fail_first`` calls for each deploy fail with a
transient error, so retries show in the history, and a deploy that gets
through rolls out for ``rollout`` seconds. Its state lives in ``Effects``
(the outside world), so a runner that replaces a crashed one sees what was
already built and deployed. Timings come from the input, so a demo can use
seconds where production uses minutes.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import msgspec

from jetlane import Context, RetryPolicy, job, step

from .effects import Effects


class DeployInput(msgspec.Struct):
    environments: list[str]
    version: str = "v1"
    cool_down: str = "10m"
    retry_delay: str = "10s"


class EnvResult(msgspec.Struct):
    env: str
    ok: bool


class DeployResult(msgspec.Struct):
    results: list[EnvResult]


@job("rolling-deploy")
async def rolling_deploy(ctx: Context, input: DeployInput) -> DeployResult:
    deployer = ctx.plugins.deployer
    # A checkpoint: once recorded, no replay or runner crash builds again.
    build = await step.do("build", lambda: deployer.build(version=input.version, key=ctx.step_key))
    retries = RetryPolicy(limit=5, delay=input.retry_delay, backoff="exponential")
    results: list[EnvResult] = []
    for env in input.environments:
        # Checkpointed per attempt: a transient failure or a crash replays only this step.
        await step.do(
            f"deploy:{env}",
            lambda env=env: deployer.deploy(env=env, artifact=build["artifact"], key=ctx.step_key),
            retries=retries,
        )
        await step.sleep("cool-down", input.cool_down)  # parks the run; no process waits
        health = await step.do(f"health:{env}", lambda env=env: deployer.health(env=env))
        results.append(EnvResult(env=env, ok=health["status"] == "ok"))
        if health["status"] != "ok":
            break
    return DeployResult(results=results)


class TransientDeployError(RuntimeError):
    """What a flaky deploy API raises; retried by the step's policy."""


class DemoDeployer:
    """A pretend build and deploy API whose first ``fail_first`` calls per deploy fail.

    Deploys are keyed by ``ctx.step_key``, as a real API would dedupe them.
    Every call is an effect in ``effects``: ``build``, ``deploy`` (with the
    call's number for its key and its outcome: ``503`` or ``rolling out``),
    ``deployed`` when a rollout finished.
    """

    def __init__(
        self, fail_first: int = 1, rollout: float = 0.0, effects: Effects | None = None
    ) -> None:
        self.fail_first = fail_first
        self.rollout = rollout
        self.effects = effects if effects is not None else Effects()

    @classmethod
    def from_env(cls) -> DemoDeployer:
        return cls(
            fail_first=int(os.environ.get("JETLANE_DEMO_DEPLOY_FAILURES", "1")),
            rollout=float(os.environ.get("JETLANE_DEMO_ROLLOUT", "0")),
            effects=Effects.from_env(),
        )

    @property
    def deployed(self) -> dict[str, str]:
        """Environment -> artifact, for every finished rollout."""
        return {
            r["env"]: r["artifact"] for r in self.effects.records() if r["effect"] == "deployed"
        }

    def build(self, *, version: str, key: str) -> dict[str, Any]:
        artifact = f"web-{version}.tar.gz"
        self.effects.record("build", artifact=artifact, key=key)
        return {"artifact": artifact, "version": version}

    async def deploy(self, *, env: str, artifact: str, key: str) -> dict[str, Any]:
        call = self.effects.count("deploy", key=key) + 1
        if call <= self.fail_first:
            self.effects.record("deploy", env=env, key=key, call=call, outcome="503")
            raise TransientDeployError(f"deploy API for {env} returned 503 (simulated)")
        self.effects.record("deploy", env=env, key=key, call=call, outcome="rolling out")
        await asyncio.sleep(self.rollout)
        self.effects.record("deployed", env=env, artifact=artifact, key=key)
        return {"env": env, "artifact": artifact}

    async def health(self, *, env: str) -> dict[str, Any]:
        return {"status": "ok" if env in self.deployed else "unknown", "env": env}


def plugins() -> dict[str, Any]:
    return {"deployer": DemoDeployer.from_env()}
