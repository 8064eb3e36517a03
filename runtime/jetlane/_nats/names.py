"""Names: every subject and resource name jetlane uses, from a prefix and a stream name."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .._core.errors import ConfigError

_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass(frozen=True)
class Names:
    """Subjects and resource names; ``prefix`` and ``stream`` are configurable."""

    prefix: str = "jetlane"
    stream: str = "JETLANE"

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix) or not _PREFIX.fullmatch(self.stream):
            raise ConfigError("prefix and stream names must be 1-32 of A-Z a-z 0-9 _ -")

    def inbox(self, run_id: str) -> str:
        return f"{self.prefix}.run.{run_id}.in"

    def journal(self, run_id: str) -> str:
        return f"{self.prefix}.run.{run_id}.out"

    def run(self, run_id: str) -> str:
        return f"{self.prefix}.run.{run_id}.>"

    def timer(self, run_id: str, token: str) -> str:
        return f"{self.prefix}.timer.{run_id}.{token}"

    def fired(self, run_id: str) -> str:
        """Where a run's schedules fire, in the timers stream (sourced into its inbox)."""
        return f"{self.prefix}.fired.{run_id}"

    @property
    def timers_stream(self) -> str:
        return f"{self.stream}_TIMERS"

    @property
    def timer_subjects(self) -> list[str]:
        return [f"{self.prefix}.timer.>", f"{self.prefix}.fired.>"]

    def dead_letter(self, run_id: str) -> str:
        return f"{self.prefix}.dlq.{run_id}"

    def lease(self, run_id: str) -> str:
        return f"{self.prefix}.lease.{run_id}"

    def waiting(self, run_id: str) -> str:
        """A run nobody can advance now (its job unserved, or blocked), kept to be woken."""
        return f"{self.prefix}.waiting.{run_id}"

    @property
    def waiting_stream(self) -> str:
        return f"{self.stream}_WAITING"

    def wake(self, job_name: str, build: str | None = None) -> str:
        """Where runners serving ``job_name`` hear "a waiting run of yours can go on";
        with ``build``, only the runners of that build (runs pinned to it)."""
        if build is not None:
            return f"{self.prefix}.api.build.{build}.wake.{job_name}"
        return f"{self.prefix}.api.wake.{job_name}"

    @property
    def jobs_subject(self) -> str:
        """Where every runner answers "which jobs do you serve?" (no queue group)."""
        return f"{self.prefix}.api.jobs"

    def run_inputs_and_journal(self, run_id: str) -> str:
        """Both subjects of one run: the scope of the journal's fence."""
        return f"{self.prefix}.run.{run_id}.*"

    @property
    def all_inboxes(self) -> str:
        return f"{self.prefix}.run.*.in"

    @property
    def all_runs(self) -> str:
        return f"{self.prefix}.run.>"

    @property
    def subjects(self) -> list[str]:
        return [f"{self.prefix}.run.>", f"{self.prefix}.dlq.>"]

    def index(self, run_id: str) -> str:
        return f"{self.prefix}.index.{run_id}"

    @property
    def index_stream(self) -> str:
        return f"{self.stream}_INDEX"

    @property
    def lease_stream(self) -> str:
        return f"{self.stream}_LEASES"

    @property
    def consumer(self) -> str:
        return f"{self.prefix}-runners"

    def parse(self, subject: str) -> tuple[str, str] | None:
        """(run id, direction) of a stored run subject, or None."""
        parts = subject.split(".")
        if len(parts) < 4 or parts[0] != self.prefix or parts[1] != "run":
            return None
        return parts[2], parts[3]
