"""Figures, goals and the small statistics the suite reports."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Literal


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


@dataclass(frozen=True)
class Goal:
    """What issue 5 asks of a figure: ``op value``, of the figure or of its ratio to the floor."""

    op: Literal["<=", ">="]
    value: float
    on_ratio: bool = False

    def met(self, figure: float, ratio: float | None) -> bool | None:
        subject = ratio if self.on_ratio else figure
        if subject is None:
            return None
        return subject <= self.value if self.op == "<=" else subject >= self.value

    def describe(self, unit: str) -> str:
        return f"{self.op} {self.value:g}{'x floor' if self.on_ratio else ' ' + unit}"


@dataclass
class Figure:
    """One reported number: a sample per round, summarized by its median."""

    workload: str
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    floor: str | None = None  # the key of the floor figure this one is compared to
    goal: Goal | None = None
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.workload}.{self.name}"

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def low(self) -> float:
        return min(self.samples) if self.samples else float("nan")

    @property
    def high(self) -> float:
        return max(self.samples) if self.samples else float("nan")
