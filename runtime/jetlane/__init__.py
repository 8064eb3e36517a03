"""jetlane: durable execution for Python on NATS JetStream."""

from __future__ import annotations

from . import wire as wire
from ._client import Client as Client
from ._client import RunHandle as RunHandle
from ._client import connect as connect
from ._connection import ConnectOptions as ConnectOptions
from ._context import Context as Context
from ._context import Plugins as Plugins
from ._definition import Job as Job
from ._definition import RetryPolicy as RetryPolicy
from ._definition import define_job as define_job
from ._definition import job as job
from ._definition import registry as registry
from ._errors import ConfigError as ConfigError
from ._errors import ConnectError as ConnectError
from ._errors import DecodeError as DecodeError
from ._errors import EventTimeout as EventTimeout
from ._errors import InputError as InputError
from ._errors import JetlaneError as JetlaneError
from ._errors import NonDeterminismError as NonDeterminismError
from ._errors import NonRetryableError as NonRetryableError
from ._errors import OrchestratorOnly as OrchestratorOnly
from ._errors import PayloadTooLarge as PayloadTooLarge
from ._errors import RunAlreadyExists as RunAlreadyExists
from ._errors import RunFailedError as RunFailedError
from ._errors import RunNotFound as RunNotFound
from ._errors import StepError as StepError
from ._errors import StepFailed as StepFailed
from ._errors import StepTimeout as StepTimeout
from ._errors import StreamMismatch as StreamMismatch
from ._log import Log as Log
from ._names import Names as Names
from ._runner import Runner as Runner
from ._runner import RunnerConfig as RunnerConfig
from ._status import RunStatus as RunStatus
from ._steps import step as step

__all__ = [
    "Client",
    "ConfigError",
    "ConnectError",
    "ConnectOptions",
    "Context",
    "DecodeError",
    "EventTimeout",
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
