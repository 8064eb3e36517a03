"""``jetlane dev``: an embedded nats-server and a runner in one process tree.

The server runs in its own session (so a terminal's Ctrl-C reaches only
us); we stop it ourselves on the way out, after the runner has drained.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
from collections.abc import Callable
from pathlib import Path

from .._core.errors import ConfigError
from .._nats.connection import ConnectOptions
from .._nats.log import Log
from .._nats.names import Names
from .._runner import RunnerConfig
from ..embedded import EmbeddedNats
from .examples import try_start
from .reload import Supervisor, child_env
from .serve import Loaded, api_beside, probe, serve


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
    loaded: Loaded | None,
    config: RunnerConfig,
    banner: Callable[[str, list[str], str], None],
) -> None:
    """Serve ``loaded`` with a runner in this process, or (``loaded`` None: ``--reload``)
    a runner child that is restarted on every change of the ``--jobs`` files."""
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
        if loaded is None:
            await _supervise(args, options_for(args, url), names, config, banner, url)
        else:
            await serve(
                options_for(args, url),
                names,
                loaded,
                config,
                on_ready=lambda r: banner(url, sorted(r.jobs), try_start(r.jobs, url)),
                replicas=args.replicas,
                metrics=(args.metrics_host, args.metrics_port),
                api=("127.0.0.1", args.api_port),
            )
    finally:
        if server is not None:
            server.stop()


async def _supervise(
    args: argparse.Namespace,
    options: ConnectOptions,
    names: Names,
    config: RunnerConfig,
    banner: Callable[[str, list[str], str], None],
    url: str,
) -> None:
    """``--reload``: the API here, the runner in a child that each change replaces."""
    await probe(options, names)
    log = await Log.open(options, names, replicas=args.replicas)  # the streams, before the API
    await log.close()
    supervisor = Supervisor(
        child_env(args, url),
        args.jobs,
        drain_timeout=config.drain_timeout,
        banner=lambda jobs, hint: banner(url, jobs, hint),
    )
    async with contextlib.AsyncExitStack() as stack:
        if args.api_port:
            await stack.enter_async_context(api_beside(options, names, "127.0.0.1", args.api_port))
        await supervisor.run()
