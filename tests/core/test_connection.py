"""The server version check made at connect (pure: no server needed)."""

from __future__ import annotations


def test_servers_too_old_for_jetlane_are_named() -> None:
    from jetlane._nats.connection import version_problem

    assert version_problem("2.12.0") is None
    assert version_problem("2.15.1") is None
    assert version_problem("3.0.0-beta") is None
    assert version_problem("0.0.0-unknown") is None  # nats-py was not told: cannot judge
    problem = version_problem("2.10.22")
    assert problem is not None and "2.10.22 is too old" in problem and "2.12.0" in problem
    assert version_problem("no version") is None  # cannot tell: the stream set-up will
