"""Durations as users write them, and the journal's time format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetlane import ConfigError, RetryPolicy
from jetlane._core.durations import format_time, parse_time, to_seconds, utc


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("250ms", 0.25),
        ("1h30m", 5400.0),
        (" 1h 30m ", 5400.0),
        ("1.5h", 5400.0),
        ("0s", 0.0),
        (45, 45.0),
        (0.5, 0.5),
        (timedelta(minutes=2), 120.0),
    ],
)
def test_durations_read_as_seconds(value: str | float | timedelta, seconds: float) -> None:
    assert to_seconds(value) == seconds


@pytest.mark.parametrize(
    "value",
    ["", "10", "10x", "s", "1h-5m", "-1s", "1m 2", "10mm", "1e3s", "½s", "٣s"],
)
def test_malformed_strings_are_config_errors(value: str) -> None:
    with pytest.raises(ConfigError, match="is not a duration"):
        to_seconds(value, what="sleep")


@pytest.mark.parametrize(
    "value",
    [-1, -0.5, float("nan"), float("inf"), 10**400, timedelta(days=-1), "4000d", "99999999w"],
)
def test_out_of_range_values_are_config_errors(value: object) -> None:
    with pytest.raises(ConfigError, match="out of range"):
        to_seconds(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, None, [1], b"1s"])
def test_other_types_are_config_errors(value: object) -> None:
    with pytest.raises(ConfigError):
        to_seconds(value)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_any_string_is_seconds_or_a_config_error(text: str) -> None:
    try:
        seconds = to_seconds(text)
    except ConfigError:
        return
    assert 0 <= seconds <= 366 * 86400 * 10


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 999), st.sampled_from(["ms", "s", "m", "h", "d"]))))
def test_compound_durations_add_up(parts: list[tuple[int, str]]) -> None:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    text = "".join(f"{n}{u}" for n, u in parts)
    total = sum(n * units[u] for n, u in parts)
    if not parts or total > 366 * 86400 * 10:
        with pytest.raises(ConfigError):
            to_seconds(text)
        return
    assert to_seconds(text) == pytest.approx(total)


def test_naive_datetimes_are_refused_and_aware_ones_become_utc() -> None:
    with pytest.raises(ConfigError, match="no timezone"):
        utc(datetime(2025, 1, 1))
    plus2 = timezone(timedelta(hours=2))
    assert utc(datetime(2025, 1, 1, 14, tzinfo=plus2)) == datetime(2025, 1, 1, 12, tzinfo=UTC)


def test_time_format_is_rfc3339_utc_with_milliseconds() -> None:
    at = datetime(2025, 3, 4, 5, 6, 7, 891234, tzinfo=timezone(timedelta(hours=-5)))
    assert format_time(at) == "2025-03-04T10:06:07.891Z"
    assert format_time(datetime(5, 1, 1, tzinfo=UTC)) == "0005-01-01T00:00:00.000Z"
    assert parse_time("2025-03-04T10:06:07.891Z") == datetime(
        2025, 3, 4, 10, 6, 7, 891000, tzinfo=UTC
    )


@settings(max_examples=300, deadline=None)
@given(st.datetimes(timezones=st.just(UTC)))
def test_format_then_parse_keeps_the_millisecond(at: datetime) -> None:
    back = parse_time(format_time(at))
    assert back == at.replace(microsecond=at.microsecond // 1000 * 1000)
    assert format_time(back) == format_time(at)


def test_retry_policy_delays_and_validation() -> None:
    policy = RetryPolicy(limit=3, delay="1s", backoff="exponential", max_delay=None)
    assert [policy.delay_after(n) for n in (1, 2, 3, 4)] == [1, 2, 4, None]
    assert RetryPolicy(limit=100, delay="1s").delay_after(90) == 3600
    bad: dict[str, Any]
    for bad in (
        {"limit": -1},
        {"limit": True},
        {"backoff": "fibonacci"},
        {"delay": "soon"},
        {"max_delay": -1},
    ):
        with pytest.raises(ConfigError):
            RetryPolicy(**bad)
