"""Create (or raise to R3) the jetlane streams before runners start.

Runners create the streams they need at R1 when none exist; in a NATS
cluster the streams should be replicated. This one-shot (the
``jetlane-stream-setup`` Job) creates them with ``JETLANE_REPLICAS``
replicas, or raises the replica count of streams a runner created first.
Idempotent: run it again at any time.
"""

from __future__ import annotations

import asyncio
import os

from jetlane import ConnectOptions, Log, Names


async def main() -> None:
    replicas = int(os.environ.get("JETLANE_REPLICAS", "3"))
    names = Names(
        prefix=os.environ.get("JETLANE_PREFIX", "jetlane"),
        stream=os.environ.get("JETLANE_STREAM", "JETLANE"),
    )
    options = ConnectOptions(url=os.environ.get("JETLANE_NATS_URL", "nats://nats:4222"))
    log = await Log.open(options, names, replicas=replicas)
    try:
        for name in (names.timers_stream, names.stream, names.index_stream, names.lease_stream):
            info = await log.js.stream_info(name)
            if info.config.num_replicas != replicas:
                info.config.num_replicas = replicas
                await log.js.update_stream(info.config)
            print(f"stream {name}: {replicas} replica(s)")
    finally:
        await log.close()


if __name__ == "__main__":
    asyncio.run(main())
