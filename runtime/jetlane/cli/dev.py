"""``jetlane dev``: an embedded nats-server and a runner in one process tree.

The server runs in its own session (so a terminal's Ctrl-C reaches only
us); we stop it ourselves on the way out, after the runner has drained.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable
from pathlib import Path

from .._core.errors import ConfigError
from .._nats.connection import ConnectOptions
from .._nats.names import Names
from .._runner import Runner, RunnerConfig
from ..embedded import EmbeddedNats
from .serve import Loaded, serve


def _check_port(port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(
                f"port {port} on 127.0.0.1 is in use (another jetlane dev or nats-server?); "
                "pass --port 0 for any free port, or --nats URL to use that server"
            ) from None


async def run_dev(
    args: argparse.Namespace,
    options_for: Callable[[argparse.Namespace, str | None], ConnectOptions],
    names: Names,
    loaded: Loaded,
    config: RunnerConfig,
    banner: Callable[[str, Runner], None],
) -> None:
    server: EmbeddedNats | None = None
    url = args.nats
    if url is None:
        if args.port:
            _check_port(args.port)
        data = Path(args.data)
        server = EmbeddedNats(data, port=args.port or None, sync_always=args.sync_always)
        server.start()
        url = server.url
        print(f"jetlane dev: data     {data}/ (server log {server.log_file})", flush=True)
    try:
        await serve(
            options_for(args, url),
            names,
            loaded,
            config,
            on_ready=lambda r: banner(url, r),
            replicas=args.replicas,
            metrics=(args.metrics_host, args.metrics_port),
            api=("127.0.0.1", args.api_port),
        )
    finally:
        if server is not None:
            server.stop()
