"""What ``jetlane runner`` and ``jetlane dev`` share: loading jobs and plugins, logging, serving.

Plugins convention: any module imported for ``--jobs`` may define
``plugins()``, a factory returning ``{name: object}`` (or a ``PLUGINS``
dict); the runner merges them (a name defined twice is an error) and hands
them to handlers as ``ctx.plugins.<name>``. A factory rather than a global
object, so that each runner process builds its own clients after start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import pkgutil
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import structlog

from .._client import Client
from .._core.definition import Job, registry
from .._core.errors import ConfigError, ConnectError
from .._metrics import serve_ops
from .._nats.connection import ConnectOptions
from .._nats.log import Log
from .._nats.names import Names
from .._runner import Runner, RunnerConfig


@dataclass(frozen=True)
class Loaded:
    """The jobs and plugin objects found under a ``--jobs`` module path."""

    jobs: dict[str, Job]
    plugins: dict[str, Any]
    modules: list[str]


def module_name(spec: str) -> str:
    """``jobs``, ``jobs/``, ``jobs/etl.py`` or ``jobs.etl`` as a dotted module name."""
    name = spec.strip().rstrip("/")
    if name.endswith(".py"):
        name = name[:-3]
    name = name.replace(os.sep, ".").replace("/", ".").removeprefix("..").lstrip(".")
    if not name:
        raise ConfigError("--jobs needs a module or package name, e.g. --jobs jobs")
    return name


def load_jobs(spec: str) -> Loaded:
    """Import the module (or every module of the package) ``spec`` names; collect jobs, plugins."""
    name = module_name(spec)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` would: the jobs live in the project, not the venv
    modules = [_import(name)]
    path = getattr(modules[0], "__path__", None)
    if path is not None:
        for info in sorted(pkgutil.walk_packages(path, name + "."), key=lambda i: i.name):
            modules.append(_import(info.name))
    imported = {m.__name__ for m in modules}
    jobs = {
        job_name: job
        for job_name, job in registry().items()
        if getattr(job.handler, "__module__", None) in imported
    }
    if not jobs:
        raise ConfigError(f"no @job found in {name!r} (imported: {', '.join(sorted(imported))})")
    plugins: dict[str, Any] = {}
    for module in modules:
        for key, value in _plugins_of(module).items():
            if key in plugins:
                raise ConfigError(f"plugin {key!r} is defined twice (again in {module.__name__})")
            plugins[key] = value
    return Loaded(jobs=jobs, plugins=plugins, modules=sorted(imported))


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"cannot import jobs module {name!r}: {exc}") from exc


def _plugins_of(module: ModuleType) -> Mapping[str, Any]:
    factory = getattr(module, "plugins", None)
    found = factory() if callable(factory) else getattr(module, "PLUGINS", None)
    if found is None:
        return {}
    if not isinstance(found, Mapping):
        raise ConfigError(f"{module.__name__}: plugins must be a dict of name -> object")
    return found


def configure_logging(level: str = "info", *, json_lines: bool | None = None) -> None:
    """structlog to stderr: JSON lines when not a terminal (or asked), readable otherwise."""
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ConfigError(f"log level {level!r} is not debug, info, warning or error")
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


async def probe(options: ConnectOptions, names: Names | None = None) -> None:
    """Fail fast with ``ConnectError`` when the server is unreachable.

    nats-py retries a first connect that is refused for ever (with or without
    reconnects), so a TCP check comes first and the NATS handshake gets a
    deadline; both name the URL.
    """
    urls = [u.strip() for u in options.url.split(",") if u.strip()]
    reasons = [await _tcp_reason(url, options.connect_timeout) for url in urls]
    if urls and all(reasons):
        raise ConnectError(f"cannot connect to NATS at {options.url}: {reasons[0]}")
    try:
        async with asyncio.timeout(options.connect_timeout + 1.0):
            log = await Log.open(replace(options, reconnect=False), names, setup=False)
    except TimeoutError:
        raise ConnectError(
            f"cannot connect to NATS at {options.url}: no NATS handshake within "
            f"{options.connect_timeout + 1.0:g}s"
        ) from None
    await log.close()


async def _tcp_reason(url: str, timeout: float) -> str | None:
    """Why a TCP connection to ``url``'s host and port fails, or None when it opens."""
    parsed = urlsplit(url if "://" in url else f"nats://{url}")
    try:
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 4222
    except ValueError as exc:
        return f"bad URL ({exc})"
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:g}s"
    except OSError as exc:
        return os.strerror(exc.errno).lower() if exc.errno else str(exc)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


@contextlib.asynccontextmanager
async def api_beside(
    options: ConnectOptions, names: Names, host: str, port: int
) -> AsyncIterator[None]:
    """The HTTP API on ``host:port`` over its own connection, while the block runs (what
    ``jetlane dev`` serves next to its runner). The caller owns SIGINT/SIGTERM."""
    from ..api import api_server

    api_log = await Log.open(options, names, setup=False)
    server = api_server(Client(api_log), host, port)
    # The runner owns SIGINT/SIGTERM here; uvicorn must not take them over.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    try:
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):  # teardown: the API's own errors are logged
            await asyncio.wait_for(task, 10)
        await api_log.close()


async def serve(
    options: ConnectOptions,
    names: Names,
    loaded: Loaded,
    config: RunnerConfig,
    *,
    on_ready: Callable[[Runner], None] | None = None,
    replicas: int = 1,
    metrics: tuple[str, int] | None = None,
    api: tuple[str, int] | None = None,
) -> None:
    """Run a runner until SIGTERM/SIGINT, then drain (a second signal cancels the drain).

    ``metrics`` (host, port) serves /metrics, /healthz and /readyz; ``api`` (host,
    port) serves the HTTP API beside the runner (what ``jetlane dev`` does).
    """
    await probe(options, names)
    log = await Log.open(options, names, replicas=replicas)
    runner = Runner(log, loaded.jobs, plugins=loaded.plugins, config=config)
    task = asyncio.create_task(runner.run())
    loop = asyncio.get_running_loop()
    signals = 0
    ops: asyncio.Server | None = None
    beside = contextlib.AsyncExitStack()

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            runner.stop()
        else:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        if metrics is not None and metrics[1]:
            ops = await serve_ops(
                metrics[0],
                metrics[1],
                metrics=runner.metrics,
                ready=lambda: runner.ready.is_set() and log.connected,
            )
        if api is not None and api[1]:
            await beside.enter_async_context(api_beside(options, names, api[0], api[1]))
        if on_ready is not None:
            ready = asyncio.create_task(runner.ready.wait())
            await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
            if ready.done():
                on_ready(runner)
            else:
                ready.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await beside.aclose()
        if ops is not None:
            ops.close()
        await log.close()
