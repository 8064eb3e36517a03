"""A runner process for fault tests: serves a test jobs module until SIGTERM (or SIGKILL)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal

import structlog

from jetlane import ConnectOptions, Log, Names, Runner, RunnerConfig, registry


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--jobs", default="tests.procs.jobs", help="test module whose jobs to serve"
    )
    parser.add_argument("--url", required=True, help="one URL or a comma-separated list")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--ack-wait", type=float, default=2.0)
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--build-id", default=None)
    parser.add_argument("--adopt-orphans", type=int, default=0)
    parser.add_argument("--serve", default="", help="comma-separated jobs to serve (default: all)")
    args = parser.parse_args()
    importlib.import_module(args.jobs)  # registers its @jobs
    structlog.configure(processors=[structlog.processors.JSONRenderer()])
    log = await Log.open(
        ConnectOptions(url=args.url), Names(args.prefix, args.stream), lease_ttl=args.lease_ttl
    )
    served = set(filter(None, args.serve.split(",")))
    jobs = {name: job for name, job in registry().items() if not served or name in served}
    runner = Runner(
        log,
        jobs,
        config=RunnerConfig(
            ack_wait=args.ack_wait,
            drain_timeout=args.drain_timeout,
            concurrency=args.concurrency,
            build_id=args.build_id,
            adopt_orphans=bool(args.adopt_orphans),
        ),
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, runner.stop)
    loop.add_signal_handler(signal.SIGINT, runner.stop)
    await runner.run()
    await log.close()


if __name__ == "__main__":
    asyncio.run(main())
