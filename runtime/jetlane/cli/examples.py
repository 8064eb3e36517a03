"""Example inputs made from a job's input type: the start ``jetlane dev`` suggests."""

from __future__ import annotations

import json
import typing
from typing import Any

import msgspec

from .._core.definition import Job
from .._core.errors import InputError


def try_start(jobs: dict[str, Job], url: str) -> str:
    """A ``jetlane start`` that works with one of ``jobs`` (an input made from its type)."""
    for name in sorted(jobs):
        example = example_input(jobs[name])
        if example is _NO_EXAMPLE:
            continue
        flag = f" --input '{json.dumps(example)}'" if example is not None else ""
        return f"jetlane start {name}{flag} --nats {url} --wait"
    name = min(jobs)
    return f"jetlane jobs {name} --nats {url}  (its input schema), then jetlane start {name} ..."


_NO_EXAMPLE: Any = object()
_PLACEHOLDERS: dict[Any, Any] = {str: "example", int: 1, float: 1.0, bool: True}


def example_input(job: Job) -> Any:
    """A small input the job accepts (None when it takes none), or ``_NO_EXAMPLE``."""
    candidates: list[Any] = [None]
    kind = job.input_type
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        hints = typing.get_type_hints(kind)
        required = [f.name for f in msgspec.structs.fields(kind) if f.required]
        example: dict[str, Any] = {}
        for field in required:
            hint = hints.get(field)
            origin, args = typing.get_origin(hint), typing.get_args(hint)
            if origin is list:
                example[field] = [_PLACEHOLDERS.get(args[0], "example")] if args else []
            elif origin is dict:
                example[field] = {}
            else:
                example[field] = _PLACEHOLDERS.get(hint, "example")
        candidates.append(example)
    for candidate in candidates:
        try:
            job.validate_input(candidate)
        except InputError:
            continue
        return candidate
    return _NO_EXAMPLE
