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
"""The account of the streams and the runners."""
CLIENTS = "CLIENTS"
"""The account of every other role, which imports from ``ACCOUNT`` what it may use."""
_RAW = re.compile(r'"<<\s+(.*?)\s+>>"')


def load_values() -> dict[str, Any]:
    import yaml

    values: dict[str, Any] = yaml.safe_load(VALUES.read_text())
    return values


def users(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every account's users by name (``user``), as the values declare them."""
    accounts = values["config"]["merge"]["accounts"]
    return {entry["user"]: entry for account in accounts.values() for entry in account["users"]}


def account_of(values: dict[str, Any], user: str) -> str:
    """The account ``user`` logs in to."""
    accounts = values["config"]["merge"]["accounts"]
    (name,) = [a for a, acc in accounts.items() if user in {u["user"] for u in acc["users"]}]
    return str(name)


def api_prefix(values: dict[str, Any]) -> str:
    """The prefix under which ``CLIENTS`` imports the JetStream API (what its users pass
    as ``js_api_prefix``)."""
    imports = values["config"]["merge"]["accounts"][CLIENTS]["imports"]
    (to,) = [i["to"] for i in imports if i.get("service", {}).get("subject") == "$JS.API.INFO"]
    assert isinstance(to, str) and to.endswith(".INFO")
    return str(to).removesuffix(".INFO")


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
