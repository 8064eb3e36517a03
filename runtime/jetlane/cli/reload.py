"""``jetlane dev --reload``: restart the runner with fresh code when a ``--jobs`` file changes.

Design note. The runner runs in a child process that is replaced on every
change, rather than re-importing the user's modules in the dev process:
``importlib.reload`` leaves stale objects behind (a module that imported a
name from another keeps the old one, ``@job`` registrations and plugin
objects of the old code linger, a C extension or a thread cannot be
reloaded), and a fresh interpreter is exactly what a deployed runner would
run. nats-server and the HTTP API stay in the dev process, so restarts cost
the runner's start-up only (about half a second) and clients never see the
server go away.

A reload runs in four phases, so that code that does not load never stops
the runner that works: (1) a new child imports the code (and calls its
``plugins()`` factories) and reports the jobs it found, or the error and
exits; (2) it replays the history of every run in flight against the new
code and reports which would block; (3) the old child is stopped (SIGTERM:
it drains its steps in flight, as a deployed runner does); (4) the new one
is told to serve. Parked runs then go on with the new code at their next
wake-up, or block there (``NonDeterminismError``) when it no longer fits
their history, as reported in phase 2.

The child talks to the dev process on a pipe of its own (JSON lines), so its
stdout and stderr stay the terminal's: job ``print``s and runner logs look
as they do without ``--reload``. It reads its stdin for the order to serve
and stops (draining) when stdin closes, so it never outlives ``jetlane dev``.

Files are watched by polling their modification times (every 0.3 s): no
dependency, and it works where inotify does not (network and container
mounts). A change is acted on once the files stop changing for one poll, so
an editor's write-rename-chmod is one reload.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .._core.errors import ConfigError, JetlaneError

POLL = 0.3  # seconds between looks at the watched files
CHECK_LIMIT = 200  # runs in flight replayed against new code, newest first
Snapshot = dict[str, tuple[int, int]]


# -- the watcher ----------------------------------------------------------------


def snapshot(roots: Iterable[Path]) -> Snapshot:
    """(mtime in ns, size) of every ``.py`` file under ``roots`` (files or directories)."""
    found: Snapshot = {}
    for root in roots:
        if root.is_dir():
            for folder, dirs, files in os.walk(root):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
                for name in files:
                    if name.endswith(".py"):
                        _stat(Path(folder) / name, found)
        else:
            _stat(root, found)
    return found


def _stat(path: Path, into: Snapshot) -> None:
    with contextlib.suppress(OSError):  # deleted between the listing and the look
        st = path.stat()
        into[str(path)] = (st.st_mtime_ns, st.st_size)


def changed(before: Snapshot, after: Snapshot) -> list[str]:
    """The files added, removed or modified between two snapshots."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def _listed(paths: list[str], most: int = 3) -> str:
    shown = ", ".join(os.path.relpath(p) for p in paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def guess_roots(spec: str) -> list[Path]:
    """Where ``--jobs`` lives under the working directory, before any child has said so."""
    from .serve import module_name

    base = Path(*module_name(spec).split(".")).resolve()  # as a child reports them
    return [p for p in (base, base.with_suffix(".py")) if p.exists()]


# -- the child: load, check, serve ------------------------------------------------


def _describe(exc: BaseException) -> str:
    """A load error as a person fixes it: where in the user's code, and what."""
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(exc)).rstrip()
    package = str(Path(__file__).resolve().parent.parent)
    frames = [
        f
        for f in traceback.TracebackException.from_exception(exc).stack
        if not f.filename.startswith((package, "<frozen"))
    ]
    where = ""
    if frames:
        last = frames[-1]
        where = f'File "{last.filename}", line {last.lineno}, in {last.name}\n'
        where += f"    {last.line}\n" if last.line else ""
    what = "".join(traceback.format_exception_only(exc)).rstrip()
    return where + what


def _project_files() -> set[str]:
    """The files of every imported module that lives in the project (under the working
    directory, outside the interpreter's and jetlane's own folders): the helpers the jobs
    import from beside their package count as their code."""
    project = Path.cwd().resolve()
    outside = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    outside.add(Path(__file__).resolve().parent.parent)  # jetlane itself
    found: set[str] = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not isinstance(file, str) or not file.endswith(".py"):
            continue
        path = Path(file).resolve()
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            continue  # an installed library, whatever folder its environment is in
        if path.is_relative_to(project) and not any(path.is_relative_to(o) for o in outside):
            found.add(str(path))
    return found


def _files_of(modules: Iterable[str]) -> list[str]:
    """What to watch for the loaded modules: package folders (new modules count) and files,
    and the project's modules they import."""
    roots: set[str] = _project_files()
    for name in modules:
        module = sys.modules.get(name)
        if module is None:
            continue
        path = getattr(module, "__path__", None)
        if path is not None:
            roots.update(str(Path(p).resolve()) for p in path)
        elif getattr(module, "__file__", None):
            roots.add(str(Path(module.__file__).resolve()))  # type: ignore[arg-type]
    return sorted(roots)


async def _check_in_flight(args: argparse.Namespace, jobs: dict[str, Any]) -> dict[str, Any]:
    """Replay the newest runs in flight against the loaded code: which would block."""
    from .._client import connect
    from .._core.errors import NonDeterminismError
    from .._core.status import summarize
    from ..testing import replay_async
    from . import connect_options, names_of

    problems: list[dict[str, str]] = []
    goes_on: list[str] = []
    checked = 0
    more = False
    async with connect(connect_options(args), names=names_of(args)) as client:
        runs: list[str] = []
        cursor: str | None = None
        while True:
            page, cursor = await client.list_runs(limit=1000, cursor=cursor)
            runs += [r.run_id for r in page if not r.done]
            if cursor is None or len(runs) > CHECK_LIMIT:
                break
        more = len(runs) > CHECK_LIMIT
        for run_id in runs[:CHECK_LIMIT]:
            history = await client.log.read(run_id)
            status = summarize(run_id, history)
            if status is None or status.done:
                continue  # the index lagged: it has ended
            checked += 1
            job = jobs.get(status.job)
            if job is None:
                problems.append(
                    {
                        "run_id": run_id,
                        "problem": f"run {run_id!r}: job {status.job!r} is not in the new code; "
                        "the run waits for a runner that serves it",
                    }
                )
                continue
            try:
                await replay_async(job, history)
            except NonDeterminismError as exc:
                problems.append({"run_id": run_id, "problem": str(exc)})
                continue
            except Exception as exc:  # the user's orchestrator code, run by the replay
                problems.append(
                    {"run_id": run_id, "problem": f"run {run_id!r}: replay raised {exc!r}"}
                )
                continue
            if status.status == "blocked":
                goes_on.append(run_id)
    return {
        "event": "checked",
        "checked": checked,
        "more": more,
        "blocked": problems,
        "unblocked": goes_on,
    }


async def _child(args: argparse.Namespace, say: Callable[[dict[str, Any]], None]) -> int:
    from . import _runner_config, connect_options, names_of
    from .examples import try_start
    from .serve import configure_logging, load_jobs, serve

    config = _runner_config(args)
    configure_logging(args.log_level, json_lines=True if args.log_json else None)
    try:
        loaded = load_jobs(args.jobs)
    except Exception as exc:  # whatever the user's code raises at import: reported, not fatal
        say({"event": "failed", "error": _describe(exc)})
        return 2
    say(
        {
            "event": "loaded",
            "jobs": sorted(loaded.jobs),
            "files": _files_of(loaded.modules),
            "try": try_start(loaded.jobs, args.nats),
        }
    )
    say(await _check_in_flight(args, loaded.jobs))
    loop = asyncio.get_running_loop()
    orders = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(orders), sys.stdin)
    if (await orders.readline()).strip() != b"go":
        return 0  # the dev process went away or chose another child

    async def stop_when_orphaned() -> None:
        await orders.read()  # EOF: jetlane dev is gone; drain and stop like on SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)

    watch = asyncio.create_task(stop_when_orphaned())
    try:
        await serve(
            connect_options(args),
            names_of(args),
            loaded,
            config,
            on_ready=lambda runner: say({"event": "ready"}),
            replicas=args.replicas,
            metrics=(args.metrics_host, args.metrics_port),
        )
    finally:
        watch.cancel()
    return 0


def child_main(argv: list[str]) -> int:
    from . import _fail, build_parser

    own = argparse.ArgumentParser(prog="jetlane dev --reload runner")
    own.add_argument("--report-fd", type=int, required=True)
    fd = own.parse_args(argv).report_fd
    args = build_parser().parse_args(["runner"])  # every setting comes from JETLANE_* variables
    with os.fdopen(fd, "w", buffering=1) as out:

        def say(value: dict[str, Any]) -> None:
            out.write(json.dumps(value) + "\n")
            out.flush()

        try:
            return asyncio.run(_child(args, say))
        except KeyboardInterrupt:
            return 130
        except JetlaneError as exc:
            return _fail(str(exc), 1)


# -- the dev process: watch, restart ---------------------------------------------


class _Child:
    """A runner child: its process and its report pipe."""

    def __init__(
        self, proc: asyncio.subprocess.Process, reports: asyncio.StreamReader, pipe: Any
    ) -> None:
        self.proc = proc
        self.reports = reports
        self.pipe = pipe
        self.started_at = ""

    @classmethod
    async def spawn(cls, env: dict[str, str]) -> _Child:
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "jetlane.cli.reload",
                "--report-fd",
                str(write_fd),
                stdin=asyncio.subprocess.PIPE,
                env=env,
                pass_fds=(write_fd,),
                # Its own session: a terminal's Ctrl-C reaches only jetlane dev, which
                # stops the child once (a second signal would cut its drain short).
                start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        reports = asyncio.StreamReader()
        pipe, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reports), os.fdopen(read_fd, "rb", buffering=0)
        )
        return cls(proc, reports, pipe)

    async def report(self) -> dict[str, Any] | None:
        """The child's next report; None when it exited without one."""
        line = await self.reports.readline()
        if not line:
            return None
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
        return None

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    def signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def stop(self, timeout: float) -> int:
        """SIGTERM (the runner drains), then SIGKILL past ``timeout``; the exit code."""
        self.signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            code = await self.proc.wait()
        self.close()
        return code

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.pipe.close()


def _runs(count: int) -> str:
    return f"{count} run{'' if count == 1 else 's'}"


def _say(text: str) -> None:
    for line in text.splitlines() or [""]:
        print(f"jetlane dev: {line}", flush=True)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


class Supervisor:
    """Keeps one runner child serving the newest code that loads."""

    def __init__(
        self,
        env: dict[str, str],
        spec: str,
        *,
        drain_timeout: float,
        banner: Callable[[list[str], str], None],
    ) -> None:
        self.env = env
        self.spec = spec
        self.drain_timeout = drain_timeout
        self.banner = banner
        self.current: _Child | None = None
        self.candidate: _Child | None = None
        self.roots = guess_roots(spec)
        self.stopping = asyncio.Event()
        self.signals = 0
        self.reloaded = False  # the banner is printed once, then reload lines

    def _on_signal(self) -> None:
        self.signals += 1
        self.stopping.set()
        if self.candidate is not None:
            self.candidate.signal(signal.SIGTERM)
        if self.signals > 1 and self.current is not None:
            self.current.signal(signal.SIGTERM)  # a second signal cuts the drain short

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        try:
            seen = snapshot(self.roots)  # before the load: an edit during it is a change
            if not await self._load() and not self.roots:
                raise ConfigError(f"cannot find --jobs {self.spec!r} to watch; see the error above")
            await self._watch(self._rebase(seen))
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            for child in (self.candidate, self.current):
                if child is not None:
                    await child.stop(self.drain_timeout + 10)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    def _rebase(self, seen: Snapshot) -> Snapshot:
        """The watched files now, with the state each had before the last load where
        known: a file edited while a child loaded the code reads as changed."""
        return {path: seen.get(path, state) for path, state in snapshot(self.roots).items()}

    async def _watch(self, seen: Snapshot) -> None:
        while not self.stopping.is_set():
            await self._pause(POLL)
            if self.current is not None and self.current.proc.returncode is not None:
                _say(
                    f"the runner exited with code {self.current.proc.returncode}; "
                    "no runner is running until a watched file changes"
                )
                self.current.close()
                self.current = None
            now = snapshot(self.roots)
            if now == seen:
                continue
            while not self.stopping.is_set():  # settle: one quiet poll
                await self._pause(POLL)
                later = snapshot(self.roots)
                if later == now:
                    break
                now = later
            edited = changed(seen, now)
            seen = now
            if not edited or self.stopping.is_set():
                continue
            _say(f"{_listed(edited)} changed: reloading")
            await self._load()
            seen = self._rebase(seen)

    async def _load(self) -> bool:
        """Start a child on the code as it is now; True when it serves."""
        child = self.candidate = await _Child.spawn(self.env)
        try:
            return await self._bring_up(child)
        finally:
            self.candidate = None

    async def _bring_up(self, child: _Child) -> bool:
        loaded = await child.report()
        if loaded is None or loaded.get("event") != "loaded":
            code = await child.stop(10)
            error = loaded.get("error", "") if loaded is not None else ""
            if self.stopping.is_set():
                return False
            if self.current is not None:
                keeps = (
                    f"the runner started at {self.current.started_at} keeps running "
                    "the code it loaded then"
                )
            else:
                keeps = "no runner is running"
            _say(f"reload failed; {keeps}. Fix the code and save to try again.")
            _say(_indent(error) if error else f"    the new runner exited with code {code}")
            return False
        self.roots = [Path(p) for p in loaded.get("files", [])] or self.roots
        checked = await child.report()
        if checked is None or self.stopping.is_set():
            code = await child.stop(10)
            if not self.stopping.is_set():
                _say(f"the new runner exited with code {code} while checking runs in flight")
            return False
        previous = self.current
        if previous is not None:
            self.current = None
            await previous.stop(self.drain_timeout + 10)
        child.go()
        ready = await child.report()
        if ready is None or self.stopping.is_set():
            code = await child.stop(10)
            if not self.stopping.is_set():
                _say(
                    f"the new runner exited with code {code} before it was ready (its error "
                    "is above); no runner is running until a watched file changes"
                )
            return False
        child.started_at = time.strftime("%H:%M:%S")
        self.current = child
        jobs = [str(j) for j in loaded.get("jobs", [])]
        if previous is None and not self.reloaded:
            self.banner(jobs, str(loaded.get("try", "")))
        else:
            _say(
                f"code reloaded at {child.started_at}: the runner serves {', '.join(jobs)} "
                "(the previous runner drained and stopped)"
            )
        self.reloaded = True
        self._report_runs(checked)
        return True

    def _report_runs(self, checked: dict[str, Any]) -> None:
        count = int(checked.get("checked", 0))
        blocked = checked.get("blocked", [])
        newest = f" (the {CHECK_LIMIT} newest checked)" if checked.get("more") else ""
        if count and not blocked:
            _say(f"{_runs(count)} in flight replay{'s' if count == 1 else ''} on this code{newest}")
        elif blocked:
            fine = count - len(blocked)
            _say(
                f"{len(blocked)} of {_runs(count)} in flight do{'es' if len(blocked) == 1 else ''}"
                f" not fit this code{newest}: each blocks at its next wake-up and goes on once "
                f"the code fits its history again ({fine} replay on it):"
            )
            for problem in blocked:
                _say(_indent(str(problem.get("problem", ""))))
        for run_id in checked.get("unblocked", []):
            _say(f"blocked run {run_id!r} replays on this code: it goes on")


def child_env(args: argparse.Namespace, url: str) -> dict[str, str]:
    """The runner child's settings, as the JETLANE_* variables ``jetlane runner`` reads
    (in the environment, not on the command line, where others could read a password)."""
    env = dict(os.environ)
    settings: dict[str, Any] = {
        "JETLANE_NATS_URL": url,
        "JETLANE_PREFIX": args.prefix,
        "JETLANE_STREAM": args.stream,
        "JETLANE_JOBS": args.jobs,
        "JETLANE_CONCURRENCY": args.concurrency,
        "JETLANE_ACK_WAIT": args.ack_wait,
        "JETLANE_DRAIN_TIMEOUT": args.drain_timeout,
        "JETLANE_METRICS_PORT": args.metrics_port,
        "JETLANE_METRICS_HOST": args.metrics_host,
        "JETLANE_REPLICAS": args.replicas,
        "JETLANE_LOG_LEVEL": args.log_level,
        "JETLANE_LOG_JSON": "1" if args.log_json else None,
        "JETLANE_REPLAY_ALWAYS": None if args.cache_runs else "1",
    }
    for flag in ("user", "password", "token", "creds", "nkey_seed"):
        settings["JETLANE_NATS_" + flag.upper()] = getattr(args, flag)
    settings["JETLANE_JS_API_PREFIX"] = getattr(args, "js_api_prefix", None)
    for flag in ("tls_ca", "tls_cert", "tls_key"):
        settings["JETLANE_NATS_" + flag.upper()] = getattr(args, flag)
    for var, value in settings.items():
        if value is None or value is False:
            env.pop(var, None)
        else:
            env[var] = str(value)
    # Python trusts a cached .pyc whose source has the same size and modification second:
    # an edit within the same second would load the old code. Children write none.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
