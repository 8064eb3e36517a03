"""The outside world of the example jobs: a record of every side effect their pretend APIs make.

A real deploy API or ticketing system keeps its state outside the runner, so a
runner started after a crash sees what the crashed one did. The pretend APIs
(``DemoDeployer``, ``DemoApprovals``) keep theirs here: in memory by default,
or, when ``JETLANE_DEMO_EFFECTS`` names a file, as JSON lines in that file,
shared by every runner process. ``make demo`` reads the file to show which
effects happened, how often, and in which runner process (``pid``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

ENV = "JETLANE_DEMO_EFFECTS"


class Effects:
    """Side effects in order, each a dict with ``effect`` and ``pid``."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self._memory: list[dict[str, Any]] = []

    @classmethod
    def from_env(cls) -> Effects:
        return cls(os.environ.get(ENV) or None)

    def record(self, effect: str, **fields: Any) -> None:
        entry = {"effect": effect, "pid": os.getpid(), **fields}
        if self.path is None:
            self._memory.append(entry)
            return
        # One write of one line with O_APPEND: runner processes never interleave lines.
        with open(self.path, "ab") as out:
            out.write(msgspec.json.encode(entry) + b"\n")

    def records(self) -> list[dict[str, Any]]:
        if self.path is None:
            return list(self._memory)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        # A line still being written has no newline yet: it is read next time.
        complete = data[: data.rfind(b"\n") + 1]
        return [msgspec.json.decode(line) for line in complete.splitlines() if line]

    def count(self, effect: str, **match: Any) -> int:
        return sum(
            r["effect"] == effect and all(r.get(k) == v for k, v in match.items())
            for r in self.records()
        )
