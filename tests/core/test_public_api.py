"""The public surface: a change to it is a decision, so this test fails when it drifts."""

from __future__ import annotations

import jetlane

PUBLIC = {
    "ChildFailed",
    "ChildTimeout",
    "Client",
    "ConfigError",
    "ConnectError",
    "ConnectOptions",
    "Context",
    "DecodeError",
    "Event",
    "EventTimeout",
    "Failure",
    "InputError",
    "JetlaneError",
    "Job",
    "Log",
    "Names",
    "NonDeterminismError",
    "NonRetryableError",
    "OrchestratorOnly",
    "PayloadTooLarge",
    "Plugins",
    "RetryPolicy",
    "RunAlreadyExists",
    "RunEnded",
    "RunFailedError",
    "RunHandle",
    "RunNotFound",
    "RunStatus",
    "Runner",
    "RunnerConfig",
    "StepError",
    "StepFailed",
    "StepTimeout",
    "StreamMismatch",
    "Unavailable",
    "connect",
    "define_job",
    "job",
    "registry",
    "step",
    "wire",
}


def test_all_is_pinned() -> None:
    assert set(jetlane.__all__) == PUBLIC
    assert len(jetlane.__all__) == len(PUBLIC)


def test_every_public_name_exists_and_none_is_private() -> None:
    for name in jetlane.__all__:
        assert not name.startswith("_")
        assert getattr(jetlane, name) is not None


def test_the_error_tree() -> None:
    for name in (
        "ConfigError",
        "DecodeError",
        "InputError",
        "PayloadTooLarge",
        "RunAlreadyExists",
        "RunEnded",
        "RunNotFound",
        "ConnectError",
        "StreamMismatch",
        "NonDeterminismError",
        "RunFailedError",
        "StepError",
    ):
        assert issubclass(getattr(jetlane, name), jetlane.JetlaneError), name
    assert issubclass(jetlane.StepFailed, jetlane.StepError)
    assert issubclass(jetlane.EventTimeout, jetlane.StepError)
    assert issubclass(jetlane.EventTimeout, TimeoutError)
    assert issubclass(jetlane.ChildFailed, jetlane.StepError)
    assert issubclass(jetlane.ChildTimeout, jetlane.StepError)
    assert issubclass(jetlane.ChildTimeout, TimeoutError)
    # raised by user code, so deliberately outside jetlane's tree
    assert not issubclass(jetlane.NonRetryableError, jetlane.JetlaneError)


def test_errors_are_named_by_their_public_path() -> None:
    assert str(jetlane.StepFailed) == "<class 'jetlane.StepFailed'>"
    assert issubclass(jetlane.StepTimeout, jetlane.JetlaneError)
    assert issubclass(jetlane.StepTimeout, TimeoutError)


def test_the_wire_types_are_public() -> None:
    from jetlane import wire

    assert set(wire.__all__) >= {"Message", "ErrorInfo", "Start", "StepFailed", "decode"}
    assert all(not name.startswith("_") for name in wire.__all__)
    status_error = jetlane.RunStatus.__annotations__["error"]
    assert "ErrorInfo" in str(status_error)


def test_every_client_method_is_documented_with_its_arguments() -> None:
    """docs/client.md documents every public Client method (a heading and its
    signature's parameter names) and every RunHandle shortcut."""
    import inspect
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "client.md").read_text()
    public = [n for n, f in inspect.getmembers(jetlane.Client) if callable(f) and n[0] != "_"]
    assert public
    for name in public:
        assert f"### {name}\n" in text, f"docs/client.md has no section for Client.{name}"
        section = text.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        for param in inspect.signature(getattr(jetlane.Client, name)).parameters:
            if param != "self":
                assert param in section, f"Client.{name}: {param!r} is not documented"
    for name in [n for n in vars(jetlane.RunHandle) if n[0] != "_" and n != "client"]:
        assert f"run.{name}" in text or f"`{name}`" in text, f"RunHandle.{name} undocumented"
    assert "jetlane.connect(" in text
