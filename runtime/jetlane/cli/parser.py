"""The ``jetlane`` command line's flags: every command's parser, each flag also read from
a ``JETLANE_*`` environment variable where it has one."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .._runner import RunnerConfig
from .ops import add_commands as add_ops_commands

# -- flags that also read the environment ---------------------------------------


def _env_help(text: str, var: str, default: Any = None) -> str:
    shown = f"; default {default}" if default not in (None, False, "") else ""
    return f"{text} [env {var}{shown}]"


def _flag(
    parser: argparse._ActionsContainer,
    flag: str,
    var: str,
    text: str,
    default: Any = None,
    **kwargs: Any,
) -> None:
    """A flag whose default comes from ``var`` (argparse converts it with ``type`` like a flag)."""
    parser.add_argument(
        flag, default=os.environ.get(var, default), help=_env_help(text, var, default), **kwargs
    )


def _switch(parser: argparse.ArgumentParser, flag: str, var: str, text: str) -> None:
    on = os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
    parser.add_argument(flag, action="store_true", default=on, help=_env_help(text, var))


def _connection_flags(*, nats_default: str | None) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    _flag(group, "--nats", "JETLANE_NATS_URL", "NATS server URL(s), comma-separated", nats_default)
    for flag, text in (
        ("--user", "user name"),
        ("--password", "password"),
        ("--token", "auth token"),
        ("--creds", "credentials file (JWT + NKey)"),
        ("--nkey-seed", "NKey seed file"),
        ("--tls-ca", "CA certificate file for TLS"),
        ("--tls-cert", "client certificate file for TLS"),
        ("--tls-key", "client key file for TLS"),
    ):
        var = "JETLANE_NATS_" + flag[2:].upper().replace("-", "_")
        _flag(group, flag, var, text)
    _flag(
        group,
        "--js-api-prefix",
        "JETLANE_JS_API_PREFIX",
        "JetStream API prefix, for a client in an account that imports the API under one "
        "(e.g. $JS.jetlane.API; runners keep the default $JS.API)",
    )
    _flag(group, "--prefix", "JETLANE_PREFIX", "subject prefix", "jetlane")
    _flag(group, "--stream", "JETLANE_STREAM", "stream name", "JETLANE")
    return parent


def _output_flags() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--json",
        action="store_true",
        help="print JSON lines (the default when stdout is not a terminal; "
        "JETLANE_OUTPUT=json|text|auto forces a format)",
    )
    return parent


def _runner_flags(parser: argparse.ArgumentParser, *, jobs_required: bool) -> None:
    default = None if jobs_required else "jobs"
    _flag(parser, "--jobs", "JETLANE_JOBS", "module or package whose @jobs to serve", default)
    defaults = RunnerConfig()
    _flag(
        parser,
        "--concurrency",
        "JETLANE_CONCURRENCY",
        "runs advanced at once",
        defaults.concurrency,
        type=int,
    )
    _flag(
        parser,
        "--ack-wait",
        "JETLANE_ACK_WAIT",
        "seconds before a silent runner's delivery is redelivered",
        defaults.ack_wait,
        type=float,
    )
    _flag(
        parser,
        "--drain-timeout",
        "JETLANE_DRAIN_TIMEOUT",
        "seconds in-flight runs get to park after SIGTERM",
        defaults.drain_timeout,
        type=float,
    )
    _flag(
        parser,
        "--metrics-port",
        "JETLANE_METRICS_PORT",
        "port for /metrics, /healthz and /readyz (0: off)",
        0 if not jobs_required else 9090,
        type=int,
    )
    _flag(
        parser,
        "--metrics-host",
        "JETLANE_METRICS_HOST",
        "address the metrics port binds",
        "127.0.0.1" if not jobs_required else "0.0.0.0",
    )
    _flag(
        parser,
        "--replicas",
        "JETLANE_REPLICAS",
        "stream replicas when the runner creates the streams (3 in a cluster)",
        1,
        type=int,
    )
    _flag(
        parser,
        "--build-id",
        "JETLANE_BUILD_ID",
        "this code's build: pin the runs it starts, serve only those (unset: serve every run)",
    )
    _switch(
        parser,
        "--adopt-orphans",
        "JETLANE_ADOPT_ORPHANS",
        "take over runs pinned to a build no live runner serves (recorded as a pin)",
    )
    _flag(parser, "--log-level", "JETLANE_LOG_LEVEL", "debug, info, warning or error", "info")
    _switch(parser, "--log-json", "JETLANE_LOG_JSON", "JSON log lines even in a terminal")
    if jobs_required:
        _switch(
            parser,
            "--replay-always",
            "JETLANE_REPLAY_ALWAYS",
            "replay every run from its history at every wake-up (no parked-run cache): "
            "code that is not deterministic blocks at once, not after a restart",
        )
    else:
        _switch(
            parser,
            "--cache-runs",
            "JETLANE_DEV_CACHE_RUNS",
            "keep parked runs in memory as a runner does (dev replays every wake-up, "
            "so that code that is not deterministic shows at once)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jetlane",
        description="Durable execution for Python on NATS JetStream.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage or input error, 3 run failed or cancelled.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    conn = _connection_flags(nats_default="nats://127.0.0.1:4222")
    out = _output_flags()

    dev = sub.add_parser(
        "dev",
        parents=[_connection_flags(nats_default=None)],
        help="embedded NATS + a runner in one process: the local default",
        description="Start nats-server (JetStream, loopback only) and a runner; Ctrl-C stops both. "
        "With --nats, use that server instead of starting one.",
    )
    _runner_flags(dev, jobs_required=False)
    _flag(dev, "--data", "JETLANE_DATA", "where the embedded server keeps its data", ".jetlane")
    _flag(
        dev,
        "--port",
        "JETLANE_DEV_PORT",
        "port of the embedded server (0: any free)",
        4222,
        type=int,
    )
    _switch(dev, "--sync-always", "JETLANE_SYNC_ALWAYS", "fsync before every acknowledgement")
    _switch(
        dev,
        "--reload",
        "JETLANE_DEV_RELOAD",
        "restart the runner with fresh code when a --jobs file changes "
        "(code that does not load leaves the running runner as it is)",
    )
    _flag(
        dev,
        "--api-port",
        "JETLANE_DEV_API_PORT",
        "port of the HTTP API on 127.0.0.1 (0: off)",
        8080,
        type=int,
    )

    runner = sub.add_parser(
        "runner",
        parents=[conn],
        help="serve jobs from the pool until SIGTERM, then drain",
        description="The pool worker (what a Kubernetes pod runs). Imports every module of --jobs, "
        "serves its @jobs with the plugins its modules' plugins() factories return.",
    )
    _runner_flags(runner, jobs_required=True)

    start = sub.add_parser("start", parents=[conn, out], help="start a run; prints its id")
    start.add_argument("job", help="job name")
    source = start.add_mutually_exclusive_group()
    source.add_argument("--input", help="input as JSON")
    source.add_argument("--input-file", help="file holding the input as JSON (- for stdin)")
    start.add_argument(
        "--run-id",
        "--id",
        dest="run_id",
        metavar="RUN_ID",
        help="the run's id, making the start create-once (default: a random one; "
        "--id is its old name)",
    )
    start.add_argument("--wait", action="store_true", help="follow the run until it ends")
    start.add_argument("--timeout", type=float, help="with --wait: give up after SECONDS")
    _switch(
        start,
        "--queue-unserved",
        "JETLANE_QUEUE_UNSERVED",
        "start even when no runner serves the job (the run waits for one)",
    )

    jobs = sub.add_parser(
        "jobs", parents=[conn, out], help="the jobs live runners serve (NAME: its input schema)"
    )
    jobs.add_argument("name", nargs="?")

    event = sub.add_parser("event", parents=[conn, out], help="send an event to a run")
    event.add_argument("run_id")
    event.add_argument("type", help="event type, as the run's wait_for_event names it")
    event.add_argument("--payload", help="payload as JSON")
    event.add_argument("--event-id", help="idempotency key (dedupes resends for 2 minutes)")
    event.add_argument(
        "--force",
        action="store_true",
        help="store the event even when the run has ended (it stays in the history; "
        "nothing acts on it)",
    )

    status = sub.add_parser("status", parents=[conn, out], help="what a run is doing")
    status.add_argument("run_id")

    history = sub.add_parser("history", parents=[conn, out], help="a run's history (audit log)")
    history.add_argument("run_id", nargs="?")
    history.add_argument("--all", action="store_true", help="every run's history (audit feed)")
    history.add_argument("--follow", "-f", action="store_true", help="keep tailing")

    cancel = sub.add_parser("cancel", parents=[conn, out], help="cancel a run")
    cancel.add_argument("run_id")
    cancel.add_argument("--reason", help="why (recorded in the history)")
    pause = sub.add_parser("pause", parents=[conn, out], help="hold a run: no new step starts")
    pause.add_argument("run_id")
    pause.add_argument("--reason", help="why (recorded in the history)")
    resume = sub.add_parser(
        "resume", parents=[conn, out], help="let a paused run go on, or a held step run again"
    )
    resume.add_argument("run_id")
    add_ops_commands(sub, conn, out, _flag, _switch)
    return parser


# -- plumbing -------------------------------------------------------------------
