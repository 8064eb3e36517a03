"""deploy/nats-values.yaml read the way the NATS Helm chart turns it into nats.conf.

The chart renders ``config.merge`` as JSON (which nats.conf accepts) and unquotes
strings written ``<< ... >>``, so ``password: << $JETLANE_RUNNER_PASSWORD >>`` becomes
a reference the server resolves from its environment. Tests build real servers from
this, so the permissions they prove are the ones the deployment ships.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

VALUES = Path(__file__).resolve().parent.parent / "deploy" / "nats-values.yaml"
ACCOUNT = "JETLANE"
_RAW = re.compile(r'"<<\s+(.*?)\s+>>"')


def load_values() -> dict[str, Any]:
    import yaml

    values: dict[str, Any] = yaml.safe_load(VALUES.read_text())
    return values


def users(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The account's users by name (``user``), as the values declare them."""
    entries = values["config"]["merge"]["accounts"][ACCOUNT]["users"]
    return {entry["user"]: entry for entry in entries}


def password_variable(user: dict[str, Any]) -> str:
    """The environment variable the server reads ``user``'s password from."""
    found = re.fullmatch(r"<<\s+\$(\w+)\s+>>", user["password"])
    assert found, f"user {user['user']}: the password must be a << $VAR >> reference"
    return found.group(1)


def render(config: dict[str, Any]) -> str:
    """nats.conf lines for ``config`` as the chart writes them (JSON, ``<< >>`` unquoted),
    without the outer braces, to append to a configuration file."""
    text = _RAW.sub(r"\1", json.dumps(config, indent=2))
    return text.strip()[1:-1] + "\n"


def server_environment(passwords: dict[str, str], values: dict[str, Any]) -> dict[str, str]:
    """The variables the server's container gets from Secret jetlane-nats-users."""
    return {password_variable(user): passwords[name] for name, user in users(values).items()}
