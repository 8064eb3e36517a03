"""jetlane: durable execution for Python on NATS JetStream."""

from __future__ import annotations

from . import wire as wire
from ._client import Client as Client
from ._client import RunHandle as RunHandle
from ._client import connect as connect
from ._core.context import Context as Context
from ._core.context import Plugins as Plugins
from ._core.definition import Job as Job
from ._core.definition import RetryPolicy as RetryPolicy
from ._core.definition import define_job as define_job
from ._core.definition import job as job
from ._core.definition import registry as registry
from ._core.errors import ChildFailed as ChildFailed
from ._core.errors import ChildTimeout as ChildTimeout
from ._core.errors import ConfigError as ConfigError
from ._core.errors import ConnectError as ConnectError
from ._core.errors import DecodeError as DecodeError
from ._core.errors import EventTimeout as EventTimeout
from ._core.errors import Failure as Failure
from ._core.errors import InputError as InputError
from ._core.errors import JetlaneError as JetlaneError
from ._core.errors import NonDeterminismError as NonDeterminismError
from ._core.errors import NonRetryableError as NonRetryableError
from ._core.errors import OrchestratorOnly as OrchestratorOnly
from ._core.errors import PayloadTooLarge as PayloadTooLarge
from ._core.errors import RunAlreadyExists as RunAlreadyExists
from ._core.errors import RunEnded as RunEnded
from ._core.errors import RunFailedError as RunFailedError
from ._core.errors import RunNotFound as RunNotFound
from ._core.errors import StepError as StepError
from ._core.errors import StepFailed as StepFailed
from ._core.errors import StepTimeout as StepTimeout
from ._core.errors import StreamMismatch as StreamMismatch
from ._core.errors import Unavailable as Unavailable
from ._core.received import Event as Event
from ._core.status import RunStatus as RunStatus
from ._core.steps import step as step
from ._nats.connection import ConnectOptions as ConnectOptions
from ._nats.log import Log as Log
from ._nats.names import Names as Names
from ._runner import Runner as Runner
from ._runner import RunnerConfig as RunnerConfig

__all__ = [
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
]

# Tracebacks and reprs name an error by its public path (jetlane.StepFailed), not
# the private module it lives in. Errors only: msgspec and typing resolve other
# classes' string annotations through their module, which must stay the real one.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and issubclass(_obj, BaseException):
        _obj.__module__ = __name__
