"""``make demo``: durable runs surviving a crashed runner and a gap with no runner, live.

Starts an embedded nats-server (temporary data) and a runner *process*
(``jetlane runner --jobs jobs``), then a rolling deploy (build, then deploy
staging and prod; the deploy API fails once per deploy, so retries show;
cool-downs park the run) and an approval gate, and prints every history
message as it lands. On the way it

1. SIGKILLs the runner while ``deploy:staging`` is rolling out (it sees the
   rollout start in the deploy API's effects file, never by waiting a fixed
   time), starts a new runner, and shows the run going on from its last
   checkpoint: ``build`` is not run again, ``deploy:staging`` is retried;
2. stops that runner while the run sleeps in its cool-down, sends the
   approval while no runner is up, watches the clock pass the timer's
   recorded ``fire_at`` (and NATS fire the timer) with no runner up, then
   starts a third runner, which picks both up.

It ends with both results, the side effects (each build and deploy call,
with the process that made it) and a short history; exit 0 when both runs
end as expected. Timings are flags (or ``JETLANE_DEMO_*`` variables), so
tests run it fast; ``--json`` prints JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jetlane import Client, ConnectOptions, Log, RunStatus
from jetlane.cli.render import Printer, clock, short, status_text, want_json
from jetlane.cli.serve import configure_logging
from jetlane.embedded import EmbeddedNats
from jetlane.wire import Message

from .effects import ENV as EFFECTS_ENV
from .effects import Effects
from .runner_process import RunnerProcess

DEPLOY_ID, APPROVAL_ID = "deploy-1", "approval-1"
TARGET = "deploy:staging"  # the step the demo kills the runner in


def parse(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--cool-down",
        default=env("JETLANE_DEMO_COOL_DOWN", "3s"),
        help="cool-down between environments (the runner is stopped in the first one) "
        "[env JETLANE_DEMO_COOL_DOWN; default 3s]",
    )
    parser.add_argument(
        "--retry-delay",
        default=env("JETLANE_DEMO_RETRY_DELAY", "1s"),
        help="first retry delay of a failed deploy [env JETLANE_DEMO_RETRY_DELAY; default 1s]",
    )
    parser.add_argument(
        "--rollout",
        type=float,
        default=float(env("JETLANE_DEMO_ROLLOUT", "1.5")),
        help="seconds a deploy rolls out (the runner is killed during one) "
        "[env JETLANE_DEMO_ROLLOUT; default 1.5]",
    )
    parser.add_argument(
        "--takeover",
        type=float,
        default=float(env("JETLANE_DEMO_TAKEOVER", "2")),
        help="seconds before a killed runner's run goes to another runner (ack wait and "
        "lease TTL) [env JETLANE_DEMO_TAKEOVER; default 2]",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(env("JETLANE_DEMO_TIMEOUT", "50")),
        help="give up after this many seconds [env JETLANE_DEMO_TIMEOUT; default 50]",
    )
    parser.add_argument("--json", action="store_true", help="JSON lines (default when piped)")
    return parser.parse_args(argv)


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word if count == 1 else many or word + 's'}"


def _now() -> datetime:
    return datetime.now(UTC)


class Timeline:
    """Every message of every run, printed as it lands; ``first`` waits for one."""

    def __init__(self, printer: Printer) -> None:
        self.printer = printer
        self.messages: list[Message] = []
        self._grew = asyncio.Event()

    async def follow(self, log: Log) -> None:
        async for msg in log.tail(log.names.all_runs, 1):
            self.printer.message(msg)
            self.messages.append(msg)
            self._grew.set()

    async def first(self, match: Callable[[Message], bool], start: int = 0) -> tuple[int, Message]:
        """The first message from index ``start`` on that ``match``es, and its index."""
        index = start
        while True:
            for at in range(index, len(self.messages)):
                if match(self.messages[at]):
                    return at, self.messages[at]
            index = len(self.messages)
            self._grew.clear()
            await self._grew.wait()

    def completed_steps(self, run_id: str) -> list[str]:
        return [
            m.body.step for m in self.messages if m.run_id == run_id and m.kind == "step_completed"
        ]


class Demo:
    def __init__(
        self, args: argparse.Namespace, printer: Printer, url: str, workdir: Path, log: Log
    ) -> None:
        self.args, self.printer, self.url = args, printer, url
        self.client = Client(log)
        self.timeline = Timeline(printer)
        self.effects = Effects(workdir / "effects.jsonl")
        self.runners: list[RunnerProcess] = []
        self.problems: list[str] = []
        self.completed_before_kill: list[str] = []
        self.env = {
            **os.environ,
            EFFECTS_ENV: str(self.effects.path),
            "JETLANE_DEMO_ROLLOUT": f"{args.rollout:g}",
        }

    def narrate(self, event: str, text: str, **fields: Any) -> None:
        """A line of the story: ``>>> text`` for a person, ``{"demo": event, ...}`` in JSON."""
        if self.printer.json_lines:
            self.printer.emit({"demo": event, "time": _now().isoformat(), "text": text, **fields})
        else:
            self.printer.say(f">>> {text}", style="bold cyan")

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.narrate("problem", f"PROBLEM: {text}")

    @property
    def runners_up(self) -> int:
        return sum(r.running for r in self.runners)

    async def start_runner(self, why: str) -> RunnerProcess:
        number = len(self.runners) + 1
        runner = await RunnerProcess.start(
            number, self.url, env=self.env, takeover=self.args.takeover
        )
        self.runners.append(runner)
        self.narrate(
            "runner_starting", f"starting runner {number} (pid {runner.pid}){why}", runner=number
        )
        jobs = await runner.ready()
        self.narrate(
            "runner_started",
            f"runner {number} (pid {runner.pid}) is up, serving {', '.join(jobs)}",
            runner=number,
            pid=runner.pid,
            jobs=jobs,
        )
        return runner

    async def stop_runners(self) -> None:
        try:
            for runner in self.runners:
                await runner.stop()
        finally:  # cancelled again while waiting (a second Ctrl-C): leave nothing behind
            for runner in self.runners:
                runner.kill_now()

    async def run(self) -> int:
        watcher = asyncio.create_task(self.timeline.follow(self.client.log))
        try:
            self.narrate(
                "plan",
                f"the plan: kill a runner in the middle of '{TARGET}' and start another; stop "
                "that one while a timer is pending, let the timer come due, start a third",
            )
            first = await self.start_runner("")
            await self.client.start(
                "rolling-deploy",
                {
                    "environments": ["staging", "prod"],
                    "version": "v2",
                    "cool_down": self.args.cool_down,
                    "retry_delay": self.args.retry_delay,
                },
                run_id=DEPLOY_ID,
            )
            await self.client.start(
                "approval",
                {"change": "scale web to 5 replicas", "timeout": "1h"},
                run_id=APPROVAL_ID,
            )
            await self.crash(first)
            second = await self.start_runner(
                f": it gets {DEPLOY_ID} once runner {first.number}'s delivery and lease "
                f"lapse ({self.args.takeover:g}s)"
            )
            await self.recovered(second)
            await self.no_runner_while_timer_due(second)
            await self.start_runner(": it finds the fired timer and the approval waiting")
            deploy_out, approval_out = await asyncio.gather(
                self.client.result(DEPLOY_ID), self.client.result(APPROVAL_ID)
            )
            ok = (
                all(r.get("ok") for r in deploy_out["results"])
                and approval_out["status"] == "applied"
                and not self.problems
            )
            await self.summary(ok)
            return 0 if ok else 1
        finally:
            watcher.cancel()
            await self.stop_runners()

    async def crash(self, runner: RunnerProcess) -> None:
        """Kill ``runner`` with SIGKILL while the target step's rollout is under way."""
        rolling = await self._effect(
            lambda e: (
                e["effect"] == "deploy"
                and f"deploy:{e['env']}" == TARGET
                and e["outcome"] == "rolling out"
            )
        )
        step = TARGET
        self.narrate(
            "killing",
            f"'{step}' is rolling out (deploy API call {rolling['call']}): killing runner "
            f"{runner.number} (pid {runner.pid}) with SIGKILL in the middle of the step...",
            runner=runner.number,
            pid=runner.pid,
            step=step,
        )
        code = await runner.kill()
        finished = self.effects.count("deployed", key=rolling["key"])
        before = self.completed_before_kill = self.timeline.completed_steps(DEPLOY_ID)
        self.narrate(
            "runner_killed",
            f"runner {runner.number} is dead (exit {code}); {DEPLOY_ID} had completed "
            f"{', '.join(repr(s) for s in before) or 'no step'}; '{step}' "
            + ("had finished already" if finished else "never finished"),
            runner=runner.number,
            pid=runner.pid,
            signal="SIGKILL",
            exit_code=code,
            run_id=DEPLOY_ID,
            step=step,
            completed_before=before,
        )
        if finished:
            self.problem(f"'{step}' finished its rollout before the kill; raise --rollout")

    async def recovered(self, runner: RunnerProcess) -> None:
        before = self.completed_before_kill
        _, done = await self.timeline.first(
            lambda m: m.run_id == DEPLOY_ID and m.kind == "step_completed" and m.body.step == TARGET
        )
        now = self.timeline.completed_steps(DEPLOY_ID)
        again = sorted({s for s in before if now.count(s) > 1})
        number = {r.pid: r.number for r in self.runners}
        builds = [number.get(e["pid"]) for e in self.effects.records() if e["effect"] == "build"]
        retried = (
            f"retried: attempt {done.body.attempt}, the killed one, ran again and completed"
            if TARGET not in before
            else "was done before the kill"
        )
        self.narrate(
            "recovered",
            f"runner {runner.number} went on from the last checkpoint: "
            f"{', '.join(repr(s) for s in before) or 'no step'} not re-run "
            f"(the deploy API saw {plural(len(builds), 'build')}, by runner "
            f"{', '.join(map(str, builds))}); '{TARGET}' {retried}",
            runner=runner.number,
            step=TARGET,
            attempt=done.body.attempt,
            not_rerun=before,
        )
        if again:
            self.problem(f"steps completed before the kill ran again: {again}")

    async def no_runner_while_timer_due(self, runner: RunnerProcess) -> None:
        index, parked = await self.timeline.first(
            lambda m: m.run_id == DEPLOY_ID and m.kind == "timer_set" and m.body.purpose == "sleep"
        )
        fire_at = datetime.fromisoformat(parked.body.fire_at)
        due = clock(parked.body.fire_at).strip()
        self.narrate(
            "parked",
            f"{DEPLOY_ID} sleeps in '{parked.body.step}' until {due}: "
            f"stopping runner {runner.number} (SIGTERM) so that no runner is up when it comes due",
            run_id=DEPLOY_ID,
            step=parked.body.step,
            fire_at=parked.body.fire_at,
        )
        code = await runner.stop()
        stopped_at = _now()
        self.narrate(
            "runner_stopped",
            f"runner {runner.number} stopped (exit {code}); no runner is up now",
            runner=runner.number,
            pid=runner.pid,
            signal="SIGTERM",
            exit_code=code,
            runners_up=self.runners_up,
        )
        if stopped_at >= fire_at:
            self.problem("the timer came due before the runner stopped; raise --cool-down")
        self.narrate(
            "event_sending",
            f"sending event 'approval' to {APPROVAL_ID} with no runner up: it waits in the "
            "run's inbox",
            run_id=APPROVAL_ID,
            runners_up=self.runners_up,
        )
        await self.client.send_event(APPROVAL_ID, "approval", {"approved": True, "by": "demo"})
        self.narrate(
            "waiting",
            f"waiting for the clock to pass {due}, with no runner up",
        )
        # Watch the clock against the recorded fire_at (a time, not an event to wait on).
        while (now := _now()) < fire_at:  # noqa: ASYNC110
            await asyncio.sleep((fire_at - now).total_seconds())
        _, fired = await self.timeline.first(
            lambda m: (
                m.run_id == DEPLOY_ID and m.kind == "timer" and m.body.step == parked.body.step
            ),
            index,
        )
        self.narrate(
            "timer_due",
            f"{due} has passed and NATS fired the timer into "
            f"{DEPLOY_ID}'s inbox, with no runner up to act on it",
            run_id=DEPLOY_ID,
            step=parked.body.step,
            fire_at=parked.body.fire_at,
            now=_now().isoformat(),
            fired_seq=fired.seq,
            runners_up=self.runners_up,
        )

    async def _effect(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first side effect that ``match``es, polling the effects file."""
        while True:
            for effect in self.effects.records():
                if match(effect):
                    return effect
            await asyncio.sleep(0.01)

    async def summary(self, ok: bool) -> None:
        statuses = [await self.client.status(DEPLOY_ID), await self.client.status(APPROVAL_ID)]
        histories = {
            run: [m async for m in self.client.history(run)] for run in (DEPLOY_ID, APPROVAL_ID)
        }
        effects = self.effects.records()
        runners = [
            {"runner": r.number, "pid": r.pid, "ended_by": r.how or "demo end"}
            for r in self.runners
        ]
        if self.printer.json_lines:
            self.printer.emit(
                {
                    "demo": "done",
                    "ok": ok,
                    "runs": {s.run_id: {"status": s.status, "output": s.output} for s in statuses},
                    "effects": effects,
                    "runners": runners,
                    "problems": self.problems,
                }
            )
            return
        _summary_text(self.printer, statuses, histories, effects, self.runners)
        for text in self.problems:
            self.printer.say(f"problem: {text}", style="bold red")
        self.printer.say("")
        self.printer.say(
            "demo ok" if ok else "demo FAILED", style="bold green" if ok else "bold red"
        )


def _summary_text(
    printer: Printer,
    statuses: list[RunStatus],
    histories: dict[str, list[Message]],
    effects: list[dict[str, Any]],
    runners: list[RunnerProcess],
) -> None:
    printer.say("")
    printer.say("results", style="bold underline")
    for status in statuses:
        printer.say(status_text(status))
        printer.say(f"  output  {short(status.output, 200)}")
    printer.say("")
    printer.say(
        "side effects (the deploy API's and the approval desk's record)", style="bold underline"
    )
    number = {r.pid: r.number for r in runners}
    for effect in effects:
        detail = {k: v for k, v in effect.items() if k not in ("effect", "pid", "key")}
        by = f"runner {number.get(effect['pid'], '?')}"
        printer.say(f"  {effect['effect']:<18} {by:<9} {short(detail, 80)}")
    printer.say("")
    printer.say("short history (completed steps, with attempts)", style="bold underline")
    for run, messages in histories.items():
        steps = [
            f"{m.body.step}"
            + (f" ({plural(m.body.attempt, 'attempt')})" if m.body.attempt > 1 else "")
            for m in messages
            if m.kind == "step_completed"
        ]
        waits = sum(m.kind in ("sleep_completed", "event_received") for m in messages)
        printer.say(f"  {run}: " + " -> ".join(steps))
        printer.say(
            f"  {'':{len(run)}}  {plural(len(messages), 'log entry', 'log entries')}, "
            f"{plural(waits, 'park')} resumed"
        )


async def demo(args: argparse.Namespace) -> int:
    configure_logging(os.environ.get("JETLANE_LOG_LEVEL", "warning"))
    printer = Printer(json_lines=want_json(args.json), show_run=True)
    with EmbeddedNats() as server, tempfile.TemporaryDirectory(prefix="jetlane-demo-") as tmp:
        printer.say(
            f"nats-server (JetStream) at {server.url}, data in {server.data_dir}", style="bold"
        )
        if printer.json_lines:
            printer.emit({"demo": "started", "nats": server.url, "nats_pid": _pid(server)})
        # The demo creates the streams, so its short lease TTL is the one in force: a
        # killed runner's runs go to the next runner after --takeover seconds, not 30.
        log = await Log.open(ConnectOptions(url=server.url), lease_ttl=args.takeover)
        story = Demo(args, printer, server.url, Path(tmp), log)
        try:
            async with asyncio.timeout(args.timeout):
                return await story.run()
        except BrokenPipeError:
            raise  # the reader went away (`make demo | head`): nothing to explain
        except Exception:
            for runner in story.runners:
                print(f"--- runner {runner.number} log (last lines):", file=sys.stderr)
                print(runner.last_lines(), file=sys.stderr)
            raise
        finally:
            await log.close()


def _pid(server: EmbeddedNats) -> int | None:
    return server.process.pid if server.process is not None else None


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

    try:
        return asyncio.run(run())
    except BrokenPipeError:
        # The reader went away (`make demo | head`); the runners and the server are
        # stopped already (each has its finally). Quiet, as Unix tools are.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
