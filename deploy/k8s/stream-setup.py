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
    env = os.environ.get
    options = ConnectOptions(
        url=env("JETLANE_NATS_URL", "tls://nats:4222"),
        # The same variables as `jetlane runner` (docs/deploy.md).
        user=env("JETLANE_NATS_USER"),
        password=env("JETLANE_NATS_PASSWORD"),
        token=env("JETLANE_NATS_TOKEN"),
        creds=env("JETLANE_NATS_CREDS"),
        nkey_seed=env("JETLANE_NATS_NKEY_SEED"),
        tls_ca=env("JETLANE_NATS_TLS_CA"),
        tls_cert=env("JETLANE_NATS_TLS_CERT"),
        tls_key=env("JETLANE_NATS_TLS_KEY"),
        name="jetlane-stream-setup",
    )
    log = await Log.open(options, names, replicas=replicas)
    try:
        streams = (names.timers_stream, names.stream, names.index_stream, names.lease_stream)
        for name in (*streams, names.waiting_stream):
            info = await log.js.stream_info(name)
            if info.config.num_replicas != replicas:
                info.config.num_replicas = replicas
                await log.js.update_stream(info.config)
            print(f"stream {name}: {replicas} replica(s)")
    finally:
        await log.close()


if __name__ == "__main__":
    asyncio.run(main())
