"""A runner process serving tests.chaos.jobs until SIGTERM (or SIGKILL)."""

from __future__ import annotations

import argparse
import asyncio
import signal

import structlog

from jetlane import ConnectOptions, Log, Names, Runner, RunnerConfig, registry

from . import jobs  # noqa: F401  (registers the jobs)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="one URL or a comma-separated list")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--ack-wait", type=float, default=2.0)
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--drain-timeout", type=float, default=5.0)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    structlog.configure(processors=[structlog.processors.JSONRenderer()])
    log = await Log.open(
        ConnectOptions(url=args.url),
        Names(args.prefix, args.stream),
        lease_ttl=args.lease_ttl,
        replicas=args.replicas,
    )
    runner = Runner(
        log,
        registry(),
        config=RunnerConfig(
            ack_wait=args.ack_wait,
            drain_timeout=args.drain_timeout,
            concurrency=args.concurrency,
        ),
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, runner.stop)
    loop.add_signal_handler(signal.SIGINT, runner.stop)
    await runner.run()
    await log.close()


if __name__ == "__main__":
    asyncio.run(main())
