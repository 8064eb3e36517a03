"""nats-py's errors, translated into jetlane's error tree: here and nowhere else.

Like httpx's ``map_httpcore_exceptions``: every call into nats-py that can
fail on the wire runs inside ``nats_errors(what)``, so that nothing above the
NATS room ever sees (or imports) a nats exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import nats.errors
import nats.js.errors

from .._core.errors import JetlaneError, NatsTimeout, NoResponders, Unavailable


@contextlib.contextmanager
def nats_errors(what: str) -> Iterator[None]:
    """Run a nats-py call; its errors come out as ``Unavailable`` (and subclasses)."""
    try:
        yield
    except JetlaneError:
        raise
    except nats.errors.NoRespondersError:
        raise NoResponders(f"nobody answers: {what}") from None
    except nats.errors.TimeoutError as exc:
        raise NatsTimeout(f"NATS did not answer in time: {what}") from exc
    except nats.js.errors.APIError as exc:
        raise Unavailable(f"JetStream refused {what}: {exc.description} ({exc.err_code})") from exc
    except nats.errors.Error as exc:
        raise Unavailable(f"NATS failed {what}: {exc}") from exc
