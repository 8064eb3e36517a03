"""The seed example: deploy environments one by one, with a cool-down and a health check.

The deploy API is a plugin object on the runner. ``DemoDeployer`` stands in
for a real one: its first ``fail_first`` attempts at each deploy fail with a
transient error, so retries show in the history. Timings come from the
input, so a demo can use seconds where production uses minutes.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from jetlane import Context, RetryPolicy, job, step


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
    retries = RetryPolicy(limit=5, delay=input.retry_delay, backoff="exponential")
    results: list[EnvResult] = []
    for env in input.environments:
        # Checkpointed per attempt: a transient failure replays only this step.
        await step.do(
            f"deploy:{env}",
            lambda env=env: deployer.deploy(env=env, version=input.version, key=ctx.step_key),
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
    """A pretend deploy API whose first ``fail_first`` calls per deploy fail.

    Deploys are keyed by ``ctx.step_key``, as a real API would dedupe them.
    """

    def __init__(self, fail_first: int = 1) -> None:
        self.fail_first = fail_first
        self.attempts: dict[str, int] = {}
        self.deployed: dict[str, str] = {}

    @classmethod
    def from_env(cls) -> DemoDeployer:
        return cls(fail_first=int(os.environ.get("JETLANE_DEMO_DEPLOY_FAILURES", "1")))

    async def deploy(self, *, env: str, version: str, key: str) -> dict[str, Any]:
        attempt = self.attempts[key] = self.attempts.get(key, 0) + 1
        if attempt <= self.fail_first:
            raise TransientDeployError(f"deploy API for {env} returned 503 (simulated)")
        self.deployed[env] = version
        return {"env": env, "version": version}

    async def health(self, *, env: str) -> dict[str, Any]:
        return {"status": "ok" if env in self.deployed else "unknown", "env": env}


def plugins() -> dict[str, Any]:
    return {"deployer": DemoDeployer.from_env()}
