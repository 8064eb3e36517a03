"""``jetlane``: the command line. One command per thing a user does with runs.

Every command talks to runs through ``jetlane.Client`` (and ``jetlane dev``
and ``jetlane runner`` through ``jetlane.Runner``). Errors are one line on
stderr and an exit code: 0 ok, 1 an operational error (server unreachable,
unknown run, run exists), 2 a usage error (bad flag, bad JSON, input that
does not fit the job), 3 a run that ended failed or cancelled
(``start --wait``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import msgspec

from .._client import Client, connect
from .._core import history as h
from .._core.definition import did_you_mean
from .._core.errors import ConfigError, InputError, JetlaneError, PayloadTooLarge
from .._core.status import summarize
from .._nats.connection import ConnectOptions
from .._nats.names import Names
from .._runner import RunnerConfig
from .ops import add_commands as add_ops_commands
from .ops import cmd_api as _cmd_api
from .ops import cmd_runs as _cmd_runs
from .render import Printer, want_json
from .serve import configure_logging, load_jobs, probe, serve

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool whose reader left


class CliError(Exception):
    """A failure to report as one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


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


def connect_options(args: argparse.Namespace, url: str | None = None) -> ConnectOptions:
    return ConnectOptions(
        url=url or args.nats,
        user=args.user,
        password=args.password,
        token=args.token,
        creds=args.creds,
        nkey_seed=args.nkey_seed,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        js_api_prefix=args.js_api_prefix or None,
        name="jetlane-cli",
    )


def names_of(args: argparse.Namespace) -> Names:
    return Names(prefix=args.prefix, stream=args.stream)


@asynccontextmanager
async def open_client(args: argparse.Namespace, *, long_lived: bool) -> AsyncIterator[Client]:
    """A client; one that follows a run reconnects, after a probe that fails fast."""
    options = connect_options(args)
    await probe(options)
    if not long_lived:
        options = replace(options, reconnect=False)
    async with connect(options, names=names_of(args)) as client:
        yield client


def parse_json(text: str, what: str) -> Any:
    try:
        return msgspec.json.decode(text.encode())
    except msgspec.DecodeError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}", EXIT_USAGE) from None


def read_input(args: argparse.Namespace) -> Any:
    if args.input is not None:
        return parse_json(args.input, "--input")
    if args.input_file is not None:
        try:
            if args.input_file == "-":
                text = sys.stdin.read()
            else:
                with open(args.input_file, encoding="utf-8") as f:
                    text = f.read()
        except OSError as exc:
            raise CliError(f"cannot read --input-file: {exc}", EXIT_USAGE) from None
        return parse_json(text, f"--input-file {args.input_file}")
    return None


def warn(text: str) -> None:
    print(f"jetlane: warning: {text}", file=sys.stderr, flush=True)


# -- commands -------------------------------------------------------------------


async def check_served(client: Client, job: str, *, queue: bool) -> None:
    """Refuse a start no runner can take, unless queued on purpose. One request when a
    runner serves the job; the slower gathering of every served job only to explain
    a refusal."""
    if await client.served(job):
        return
    if queue:
        warn(f"no runner serves job {job!r} now; the run waits until one does")
        return
    jobs = await client.jobs()
    hint = did_you_mean(job, jobs)
    known = f" (served: {', '.join(sorted(jobs))})" if jobs and not hint else ""
    raise CliError(
        f"no runner serves job {job!r}{hint}{known}; "
        "start it anyway with --queue-unserved (it waits for a runner)",
        EXIT_USAGE,
    )


async def cmd_jobs(args: argparse.Namespace) -> int:
    printer = Printer(json_lines=want_json(args.json))
    async with open_client(args, long_lived=False) as client:
        jobs = await client.jobs()
    if args.name is not None:
        if args.name not in jobs:
            hint = did_you_mean(args.name, jobs)
            raise CliError(f"no runner serves job {args.name!r}{hint}", EXIT_ERROR)
        shown = [jobs[args.name]]
    else:
        shown = [jobs[name] for name in sorted(jobs)]
    for job in shown:
        if printer.json_lines:
            printer.emit(job)
        elif args.name is not None:
            print(f"{job['name']}  input schema: {json.dumps(job.get('input_schema'))}")
        else:
            print(job["name"])
    return EXIT_OK


async def cmd_start(args: argparse.Namespace) -> int:
    payload = read_input(args)
    json_lines = want_json(args.json)
    printer = Printer(json_lines=json_lines)
    async with open_client(args, long_lived=args.wait) as client:
        await check_served(client, args.job, queue=args.queue_unserved)
        try:
            run = await client.start(args.job, payload, run_id=args.run_id)
        except InputError as exc:
            served = (await client.jobs()).get(args.job) if payload is None else None
            if served is not None:
                schema = json.dumps(served.get("input_schema"))
                raise CliError(
                    f"--input is required for job {args.job!r}: schema {schema}", EXIT_USAGE
                ) from exc
            raise
        if not args.wait:
            if args.json:
                printer.emit({"run_id": run.run_id, "job": args.job})
            else:
                print(run.run_id, flush=True)
            return EXIT_OK
        if json_lines:
            printer.emit({"run_id": run.run_id, "job": args.job})
        else:
            printer.say(f"started run {run.run_id} of job {args.job}", style="bold")
        seen: list[h.Message] = []
        try:
            async with asyncio.timeout(args.timeout):
                with printer.live(f"run {run.run_id}: queued"):
                    async for msg in client.history(run.run_id, follow=True):
                        seen.append(msg)
                        printer.message(msg)
        except TimeoutError:
            status = summarize(run.run_id, seen)
            now = status.status if status is not None else "queued"
            raise CliError(f"run {run.run_id} is still {now} after {args.timeout:g}s") from None
        status = summarize(run.run_id, seen)
        assert status is not None
        if not json_lines:
            printer.status(status)
        return EXIT_OK if status.status == "completed" else EXIT_RUN_FAILED


async def cmd_event(args: argparse.Namespace) -> int:
    payload = parse_json(args.payload, "--payload") if args.payload is not None else None
    async with open_client(args, long_lived=False) as client:
        live = await client.send_event(
            args.run_id, args.type, payload, event_id=args.event_id, force=args.force
        )
    printer = Printer(json_lines=args.json)
    if live:
        printer.say(f"sent event {args.type!r} to run {args.run_id}")
    else:
        printer.say(
            f"stored event {args.type!r} for run {args.run_id}, which has ended: "
            "it is in the history, after the end; nothing acts on it"
        )
    if args.json:
        printer.emit(
            {"run_id": args.run_id, "type": args.type, "sent": True, "after_end": not live}
        )
    return EXIT_OK


async def cmd_status(args: argparse.Namespace) -> int:
    async with open_client(args, long_lived=False) as client:
        status = await client.status(args.run_id)
    Printer(json_lines=want_json(args.json)).status(status)
    return EXIT_OK


async def cmd_history(args: argparse.Namespace) -> int:
    if (args.run_id is None) == (not args.all):
        raise CliError("history takes a RUN_ID or --all", EXIT_USAGE)
    printer = Printer(json_lines=want_json(args.json), show_run=args.all)
    async with open_client(args, long_lived=args.follow) as client:
        if args.run_id is not None:
            with printer.live(f"run {args.run_id}") if args.follow else _nothing():
                async for msg in client.history(args.run_id, follow=args.follow):
                    printer.message(msg)
            return EXIT_OK
        async for msg in client.audit_feed(follow=args.follow):
            printer.message(msg)
    return EXIT_OK


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def cmd_cancel(args: argparse.Namespace) -> int:
    async with open_client(args, long_lived=False) as client:
        sent = await client.cancel(args.run_id, args.reason)
        status = await client.status(args.run_id)
    printer = Printer(json_lines=args.json)
    if args.json:
        printer.emit({"run_id": args.run_id, "cancel_sent": sent, "status": status.status})
    elif sent:
        printer.say(f"cancel sent to run {args.run_id}")
    else:
        printer.say(f"run {args.run_id} already ended ({status.status}); nothing sent")
    return EXIT_OK


def _runner_config(args: argparse.Namespace) -> RunnerConfig:
    if args.concurrency < 1:
        raise CliError("--concurrency must be at least 1", EXIT_USAGE)
    replay_always = getattr(args, "replay_always", False) or not getattr(args, "cache_runs", True)
    return RunnerConfig(
        concurrency=args.concurrency,
        ack_wait=args.ack_wait,
        drain_timeout=args.drain_timeout,
        cache_size=0 if replay_always else RunnerConfig().cache_size,
        build_id=h.check_build_id(args.build_id) if args.build_id else None,
        adopt_orphans=args.adopt_orphans,
    )


async def cmd_runner(args: argparse.Namespace) -> int:
    if not args.jobs:
        raise CliError("runner needs --jobs MODULE (or JETLANE_JOBS)", EXIT_USAGE)
    config = _runner_config(args)
    configure_logging(args.log_level, json_lines=True if args.log_json else None)
    loaded = load_jobs(args.jobs)
    await serve(
        connect_options(args),
        names_of(args),
        loaded,
        config,
        replicas=args.replicas,
        metrics=(args.metrics_host, args.metrics_port),
    )
    return EXIT_OK


async def cmd_dev(args: argparse.Namespace) -> int:
    from .dev import run_dev

    config = _runner_config(args)
    configure_logging(args.log_level, json_lines=True if args.log_json else None)
    # With --reload the code is imported by the runner child only (see cli/reload.py).
    loaded = None if args.reload else load_jobs(args.jobs)

    def banner(url: str, jobs: list[str], hint: str) -> None:
        print(f"jetlane dev: NATS     {url}", flush=True)
        print(f"jetlane dev: runner   serving {', '.join(jobs)}", flush=True)
        if args.reload:
            print(f"jetlane dev: reload   on: watching {args.jobs} for changes", flush=True)
        if args.api_port:
            print(f"jetlane dev: API      http://127.0.0.1:{args.api_port}", flush=True)
        if args.metrics_port:
            print(
                f"jetlane dev: metrics  http://{args.metrics_host}:{args.metrics_port}/metrics",
                flush=True,
            )
        print(f"jetlane dev: ready. Try: {hint}", flush=True)
        print("jetlane dev: Ctrl-C stops everything", flush=True)

    await run_dev(args, connect_options, names_of(args), loaded, config, banner)
    return EXIT_OK


async def cmd_api(args: argparse.Namespace) -> int:
    configure_logging("info", json_lines=None)
    return await _cmd_api(args, open_client)


async def cmd_runs(args: argparse.Namespace) -> int:
    return await _cmd_runs(args, open_client, want_json(args.json))


async def cmd_pause(args: argparse.Namespace) -> int:
    async with open_client(args, long_lived=False) as client:
        sent = await client.pause(args.run_id, reason=args.reason, by=_who())
    return _control_done(args, "paused" if sent else "already ended")


async def cmd_resume(args: argparse.Namespace) -> int:
    async with open_client(args, long_lived=False) as client:
        sent = await client.resume(args.run_id)
    return _control_done(args, "resumed" if sent else "already ended")


def _who() -> str:
    """user@host of this process, for the pause entry (what a person reads back)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _control_done(args: argparse.Namespace, outcome: str) -> int:
    if want_json(args.json):
        print(msgspec.json.encode({"run_id": args.run_id, "outcome": outcome}).decode())
    else:
        print(f"{args.run_id}: {outcome}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "pause": cmd_pause,
    "resume": cmd_resume,
    "api": cmd_api,
    "runs": cmd_runs,
    "dev": cmd_dev,
    "runner": cmd_runner,
    "start": cmd_start,
    "event": cmd_event,
    "status": cmd_status,
    "history": cmd_history,
    "cancel": cmd_cancel,
    "jobs": cmd_jobs,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`jetlane history --all | head`): stop quietly, as
        # Unix tools do, and keep Python from complaining when it flushes stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except (InputError, ConfigError, PayloadTooLarge) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except JetlaneError as exc:
        return _fail(str(exc), EXIT_ERROR)
    except Exception as exc:
        if os.environ.get("JETLANE_DEBUG"):
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc} (JETLANE_DEBUG=1 shows more)", 1)


def _fail(message: str, code: int) -> int:
    line = " ".join(message.split())
    print(f"jetlane: error: {line}", file=sys.stderr, flush=True)
    return code
