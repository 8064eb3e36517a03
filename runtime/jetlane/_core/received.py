"""What ``step.wait_for_any`` returns: the event it took."""

from __future__ import annotations

from typing import Any

import msgspec


class Event(msgspec.Struct, frozen=True):
    """An event a ``step.wait_for_any`` took: its ``type``, its ``payload``, and ``seq``,
    the sequence of the event's message in the run's log (the earliest first)."""

    type: str
    payload: Any
    seq: int
