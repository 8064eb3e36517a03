"""Durations as users write them: "30s", "10m", "1h30m", "2d", seconds or a timedelta."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from .errors import ConfigError

Duration = str | int | float | timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
_MAX_SECONDS = 366 * 86400.0 * 10


def to_seconds(value: Duration, *, what: str = "duration") -> float:
    """Seconds in ``value``; a clear ``ConfigError`` for anything else."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ConfigError(f"{what} must be a duration, not a bool")
    elif isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float is out of range anyway
            seconds = float("inf")
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if not text or pos != len(text):
            raise ConfigError(
                f"{what} {value!r} is not a duration: use a number of seconds, a timedelta, "
                'or a string like "30s", "10m", "1h30m", "2d"'
            )
    else:
        raise ConfigError(f"{what} must be a str, number or timedelta, not {type(value).__name__}")
    if seconds != seconds or seconds < 0 or seconds > _MAX_SECONDS:
        raise ConfigError(f"{what} {value!r} is out of range (0 to 10 years)")
    return seconds


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime; naive datetimes are refused."""
    if value.tzinfo is None:
        raise ConfigError(f"datetime {value!r} has no timezone; pass an aware datetime")
    return value.astimezone(UTC)


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with milliseconds, the journal's time format."""
    value = utc(value)
    # Not strftime("%Y"): it does not zero-pad years before 1000 on every libc.
    return (
        f"{value.year:04d}-"
        + value.strftime("%m-%dT%H:%M:%S.")
        + f"{value.microsecond // 1000:03d}Z"
    )


def parse_time(text: str) -> datetime:
    """Inverse of ``format_time`` (accepts any RFC 3339 the stdlib reads)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
