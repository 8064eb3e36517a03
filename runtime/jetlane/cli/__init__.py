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
from .ops import cmd_api as _cmd_api
from .ops import cmd_runs as _cmd_runs
from .parser import build_parser as build_parser
from .render import Printer, want_json
from .serve import configure_logging, load_jobs, probe, serve

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool whose reader left


class CliError(Exception):
    """A failure to report as one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


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
