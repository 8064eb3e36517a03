"""The wire decoders: every kind round-trips, and no input makes anything but DecodeError escape."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetlane import DecodeError
from jetlane import wire as h

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
run_ids = st.from_regex(h.RUN_ID, fullmatch=True)
KINDS = sorted(h.INPUT_KINDS) + sorted(h.JOURNAL_KINDS)


def direction_of(kind: str) -> str:
    return "in" if kind in h.INPUT_KINDS else "out"


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    if tp is Any:
        return json_values
    if tp is str:
        return st.text(max_size=40)
    if tp is int:
        return st.integers(-(2**63), 2**63 - 1)
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is bool:
        return st.booleans()
    if tp is h.Parent:
        return st.builds(h.Parent, run_ids, st.text(max_size=40), st.booleans())
    if tp is h.ErrorInfo:
        return st.builds(h.ErrorInfo, st.text(max_size=20), st.text(max_size=40))
    if isinstance(tp, types.UnionType):
        return st.one_of([strategy_for(arg) for arg in typing.get_args(tp)])
    if tp is type(None):
        return st.none()
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return st.lists(json_values if item is Any else strategy_for(item), max_size=4)
    raise AssertionError(f"no strategy for {tp!r}")


def bodies(kind: str) -> st.SearchStrategy[Any]:
    cls = h.INPUT_KINDS.get(kind) or h.JOURNAL_KINDS[kind]
    fields = {f.name: strategy_for(f.type) for f in msgspec.structs.fields(cls)}
    if cls in (h.Start, h.ChildStarted):
        fields["job"] = st.from_regex(h.JOB_NAME, fullmatch=True)
    if cls in (h.ChildStarted, h.ChildEnded, h.ChildResult, h.ChildTimedOut):
        fields["run_id"] = run_ids
    if cls in (h.ChildEnded, h.ChildResult):
        fields["status"] = st.sampled_from(h.CHILD_STATUSES)
    if cls is h.Event:
        fields["type"] = st.text(min_size=1, max_size=20)
    if cls is h.Pin:
        fields["build"] = st.from_regex(h.BUILD_ID, fullmatch=True)
    if cls is h.RunStarted:
        fields["build"] = st.none() | st.from_regex(h.BUILD_ID, fullmatch=True)
    return st.builds(cls, **fields)


any_body = st.sampled_from(KINDS).flatmap(lambda k: st.tuples(st.just(k), bodies(k)))


@FAST
@given(any_body)
def test_every_kind_round_trips(case: tuple[str, Any]) -> None:
    kind, body = case
    data = h.encode(body)
    assert h.kind_of(body) == kind
    assert h.decode(kind, data, direction=direction_of(kind)) == body
    assert h.decode(kind, data) == body
    assert json.loads(data) == msgspec.to_builtins(body)


def decode_or_decode_error(kind: str | None, data: bytes, direction: str | None) -> None:
    try:
        body = h.decode(kind, data, direction=direction)
    except DecodeError as exc:
        assert str(exc)
        return
    assert kind is not None
    assert type(body) is (h.INPUT_KINDS.get(kind) or h.JOURNAL_KINDS[kind])


directions = st.sampled_from([None, "in", "out", "sideways"])
kinds = st.sampled_from([*KINDS, "", "Start", "unknown", "step_completed "]) | st.none()


@FAST
@given(kinds, st.binary(max_size=200), directions)
def test_random_bytes_raise_only_decode_error(
    kind: str | None, data: bytes, direction: str | None
) -> None:
    decode_or_decode_error(kind, data, direction)


@FAST
@given(kinds, json_values, directions)
def test_json_of_any_shape_raises_only_decode_error(
    kind: str | None, value: Any, direction: str | None
) -> None:
    decode_or_decode_error(kind, msgspec.json.encode(value), direction)


@FAST
@given(any_body, st.data())
def test_a_field_of_the_wrong_type_raises_only_decode_error(
    case: tuple[str, Any], data: st.DataObject
) -> None:
    kind, body = case
    raw = msgspec.to_builtins(body)
    if raw:
        field = data.draw(st.sampled_from(sorted(raw)))
        raw[field] = data.draw(json_values)
    decode_or_decode_error(kind, msgspec.json.encode(raw), direction_of(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_deep_nesting_and_huge_strings(kind: str) -> None:
    deep = b'{"job": "j", "type": "t", "payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    decode_or_decode_error(kind, deep, direction_of(kind))
    decode_or_decode_error(kind, b"[" * 1_000_000, direction_of(kind))
    huge = "x" * 2_000_000
    decode_or_decode_error(kind, msgspec.json.encode({"type": huge, "step": huge}), None)


def test_huge_payloads_decode_intact() -> None:
    body = h.Event(type="big", payload={"blob": "y" * 3_000_000})
    assert h.decode("event", h.encode(body), direction="in") == body


@pytest.mark.parametrize(
    ("kind", "data", "direction", "words"),
    [
        (None, b"{}", "in", "missing Jetlane-Kind"),
        ("nope", b"{}", None, "unknown kind 'nope'"),
        ("run_completed", b"{}", "in", "not allowed on .in"),
        ("start", b'{"job": "j"}', "out", "not allowed on .out"),
        ("event", b'{"type": ""}', "in", "event type is empty"),
        ("start", b'{"job": "a b"}', "in", "invalid job"),
        ("start", b'{"job": "../x"}', "in", "invalid job"),
        ("step_failed", b'{"step": "a", "attempt": 1}', "out", "missing required field `error`"),
        ("event", b"\xff\xfe", "in", "malformed"),
    ],
)
def test_refusals_say_why(kind: str | None, data: bytes, direction: str, words: str) -> None:
    with pytest.raises(DecodeError, match=words.replace("(", r"\(")):
        h.decode(kind, data, direction=direction)


def test_old_and_new_shapes_decode() -> None:
    # fields with defaults may be missing (older writers), unknown ones are ignored (newer)
    assert h.decode("cancel", b"{}", direction="in") == h.Cancel(None)
    assert h.decode("event", b'{"type": "t", "extra": [1]}', direction="in") == h.Event("t")
    failed = h.decode(
        "step_failed",
        b'{"step": "a", "attempt": 2, "error": {"type": "E", "message": "m", "code": 7}}',
        direction="out",
    )
    assert failed == h.StepFailed("a", 2, h.ErrorInfo("E", "m"), None)
    assert h.decode("timer", b'{"timer": "sleep-1-ab"}') == h.Timer("sleep-1-ab", "", "")


def test_run_ids_and_job_names_are_checked() -> None:
    from jetlane import ConfigError

    for good in ("a", "A-z_0", "x" * 128):
        assert h.check_run_id(good) == good
    for bad in ("", "a.b", "a*", "a>", "a b", "x" * 129, "é"):
        with pytest.raises(ConfigError):
            h.check_run_id(bad)
    assert h.check_job_name("rolling-deploy.v2:eu") == "rolling-deploy.v2:eu"
    for bad in ("", "a b", "a/b", "x" * 129):
        with pytest.raises(ConfigError):
            h.check_job_name(bad)


def test_message_to_json_is_plain_data() -> None:
    body = h.StepCompleted("a", 1, msgspec.Raw(b'{"k":[1,2]}'), "t", 1.0)
    msg = h.Message(3, "r1", "out", "step_completed", body, time="now")
    out = msg.to_json()
    assert json.loads(json.dumps(out)) == out
    assert out["body"]["result"] == {"k": [1, 2]} and out["seq"] == 3


def test_error_tracebacks_are_bounded_and_optional_on_the_wire() -> None:
    from jetlane._core.bounds import MAX_FRAMES, error_info

    def deep(n: int) -> None:
        if n == 0:
            raise ValueError("at the bottom")
        deep(n - 1)

    try:
        deep(200)
    except ValueError as exc:
        info = error_info(exc)
    assert info.traceback is not None and len(info.traceback) == MAX_FRAMES
    assert info.traceback[-1].function == "deep"
    encoded = h.encode(h.RunFailed(error=info))
    assert len(encoded) < 16 * 1024
    # an error without a traceback encodes as before (old readers see no new field)
    old = h.encode(h.RunFailed(error=h.ErrorInfo(type="T", message="m")))
    assert old == b'{"error":{"type":"T","message":"m"}}'
    assert h.decode("run_failed", old, direction="out") == h.RunFailed(
        error=h.ErrorInfo(type="T", message="m")
    )
