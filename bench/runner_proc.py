"""A runner process serving the bench jobs: ``python -m bench.runner_proc URL PREFIX STREAM [k=v]``.

Prints ``ready`` once it pulls; drains and exits on SIGTERM. ``k=v`` pairs
are ``RunnerConfig`` fields (numbers).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

import structlog

from jetlane import ConnectOptions, Log, Names, Runner, RunnerConfig

from .jobs import jobs


async def main(argv: list[str]) -> None:
    url, prefix, stream, *pairs = argv
    config: dict[str, Any] = {
        k: float(v) if "." in v else int(v) for k, v in (p.split("=", 1) for p in pairs)
    }
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    log = await Log.open(ConnectOptions(url=url), Names(prefix, stream))
    runner = Runner(log, jobs(), config=RunnerConfig(**config))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, runner.stop)
    loop.add_signal_handler(signal.SIGINT, runner.stop)
    task = asyncio.create_task(runner.run())
    await runner.ready.wait()
    print("ready", flush=True)
    await task
    await log.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
