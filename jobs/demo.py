"""``make demo``: a durable run happening in front of you, in well under a minute.

Starts an embedded nats-server (temporary data) and a runner in this
process, starts a rolling deploy (its deploy API fails transiently, so
retries show; cool-downs park the run) and an approval gate, prints every
history message live, sends the approval event itself after a few seconds,
and ends with both results and a short history. Exit 0 when both runs end
as expected. Timings are flags (or ``JETLANE_DEMO_*`` variables), so tests
run it fast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

from jetlane import Client, ConnectOptions, Log, Runner, RunnerConfig, RunStatus
from jetlane.cli.render import Printer, short, status_text, want_json
from jetlane.cli.serve import configure_logging, load_jobs
from jetlane.embedded import EmbeddedNats

DEPLOY_ID, APPROVAL_ID = "deploy-1", "approval-1"


def parse(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__)
    parser.add_argument(
        "--cool-down",
        default=env("JETLANE_DEMO_COOL_DOWN", "3s"),
        help="cool-down between environments [env JETLANE_DEMO_COOL_DOWN; default 3s]",
    )
    parser.add_argument(
        "--retry-delay",
        default=env("JETLANE_DEMO_RETRY_DELAY", "1s"),
        help="first retry delay of a failed deploy [env JETLANE_DEMO_RETRY_DELAY; default 1s]",
    )
    parser.add_argument(
        "--approval-after",
        type=float,
        default=float(env("JETLANE_DEMO_APPROVAL_AFTER", "3")),
        help="seconds the approval run waits before the demo approves it "
        "[env JETLANE_DEMO_APPROVAL_AFTER; default 3]",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(env("JETLANE_DEMO_TIMEOUT", "50")),
        help="give up after this many seconds [env JETLANE_DEMO_TIMEOUT; default 50]",
    )
    parser.add_argument("--json", action="store_true", help="JSON lines (default when piped)")
    return parser.parse_args(argv)


async def demo(args: argparse.Namespace) -> int:
    configure_logging(os.environ.get("JETLANE_LOG_LEVEL", "warning"))
    loaded = load_jobs("jobs")
    printer = Printer(json_lines=want_json(args.json), show_run=True)
    with EmbeddedNats() as server:
        printer.say(
            f"nats-server (JetStream) at {server.url}, data in {server.data_dir}", style="bold"
        )
        if printer.json_lines:
            printer.emit({"demo": "started", "nats": server.url, "nats_pid": _pid(server)})
        options = ConnectOptions(url=server.url)
        runner_log, client_log = await Log.open(options), await Log.open(options)
        runner = Runner(
            runner_log,
            loaded.jobs,
            plugins=loaded.plugins,
            config=RunnerConfig(concurrency=16, drain_timeout=5.0),
        )
        runner_task = asyncio.create_task(runner.run())
        try:
            await asyncio.wait_for(runner.ready.wait(), 10)
            printer.say(f"runner serving {', '.join(sorted(runner.jobs))}", style="bold")
            async with asyncio.timeout(args.timeout):
                return await _scenario(Client(client_log), client_log, printer, args)
        finally:
            runner.stop()
            await asyncio.wait_for(runner_task, 15)
            await client_log.close()
            await runner_log.close()


def _pid(server: EmbeddedNats) -> int | None:
    return server.process.pid if server.process is not None else None


async def _scenario(client: Client, log: Log, printer: Printer, args: argparse.Namespace) -> int:
    waiting = asyncio.Event()
    watcher = asyncio.create_task(_watch(log, printer, waiting))
    await client.start(
        "rolling-deploy",
        {
            "environments": ["staging", "prod"],
            "version": "v2",
            "cool_down": args.cool_down,
            "retry_delay": args.retry_delay,
        },
        run_id=DEPLOY_ID,
    )
    await client.start(
        "approval", {"change": "scale web to 5 replicas", "timeout": "1h"}, run_id=APPROVAL_ID
    )
    await waiting.wait()
    await asyncio.sleep(args.approval_after)  # the human's thinking time, for show
    printer.say(f">>> sending event 'approval' to {APPROVAL_ID}", style="bold cyan")
    await client.send_event(APPROVAL_ID, "approval", {"approved": True, "by": "demo"})
    deploy_out, approval_out = await asyncio.gather(
        client.result(DEPLOY_ID), client.result(APPROVAL_ID)
    )
    await watcher
    statuses = [await client.status(DEPLOY_ID), await client.status(APPROVAL_ID)]
    histories = {run: [m async for m in client.history(run)] for run in (DEPLOY_ID, APPROVAL_ID)}
    ok = all(r.get("ok") for r in deploy_out["results"]) and approval_out["status"] == "applied"
    _summary(printer, statuses, histories, ok)
    return 0 if ok else 1


async def _watch(log: Log, printer: Printer, waiting: asyncio.Event) -> None:
    """Print every message of every run as it lands, until both demo runs end."""
    ended: set[str] = set()
    async for msg in log.tail(log.names.all_runs, 1):
        printer.message(msg)
        if msg.run_id == APPROVAL_ID and msg.kind == "wait_started":
            waiting.set()
        if msg.kind in ("run_completed", "run_failed", "run_cancelled"):
            ended.add(msg.run_id)
            if ended >= {DEPLOY_ID, APPROVAL_ID}:
                return


def _summary(
    printer: Printer, statuses: list[RunStatus], histories: dict[str, list[Any]], ok: bool
) -> None:
    if printer.json_lines:
        printer.emit(
            {
                "demo": "done",
                "ok": ok,
                "runs": {s.run_id: {"status": s.status, "output": s.output} for s in statuses},
            }
        )
        return
    printer.say("")
    printer.say("results", style="bold underline")
    for status in statuses:
        printer.say(status_text(status))
        printer.say(f"  output  {short(status.output, 200)}")
    printer.say("")
    printer.say("short history (completed steps, with attempts)", style="bold underline")
    for run, messages in histories.items():
        steps = [
            f"{m.body.step}" + (f" ({m.body.attempt} attempts)" if m.body.attempt > 1 else "")
            for m in messages
            if m.kind == "step_completed"
        ]
        waits = sum(m.kind in ("sleep_completed", "event_received") for m in messages)
        printer.say(f"  {run}: " + " -> ".join(steps))
        printer.say(f"  {'':{len(run)}}  {len(messages)} log entries, {waits} parks resumed")
    printer.say("")
    printer.say("demo ok" if ok else "demo FAILED", style="bold green" if ok else "bold red")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    async def run() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await demo(args)
        except TimeoutError:
            print(f"demo: runs did not finish within {args.timeout:g}s", file=sys.stderr)
            return 1
        except asyncio.CancelledError:
            return 130

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
