"""The wire protocol (v1), public: every message a run's log holds, and how to read it.

What ``Client.history()`` yields (``Message``) and what ``RunStatus.error`` holds
(``ErrorInfo``) live here, with the input and journal bodies as frozen msgspec
Structs, their ``Jetlane-Kind`` names, and ``encode``/``decode``. The README's
"wire protocol" section documents each kind with an example::

    from jetlane import wire

    async for message in client.history(run_id):
        if isinstance(message.body, wire.StepFailed):
            print(message.body.step, message.body.error.message)
"""

from __future__ import annotations

from ._history import INPUT_KINDS as INPUT_KINDS
from ._history import JOB_NAME as JOB_NAME
from ._history import JOURNAL_KINDS as JOURNAL_KINDS
from ._history import KIND_HEADER as KIND_HEADER
from ._history import RUN_ID as RUN_ID
from ._history import TERMINAL as TERMINAL
from ._history import VERSION as VERSION
from ._history import VERSION_HEADER as VERSION_HEADER
from ._history import Body as Body
from ._history import Cancel as Cancel
from ._history import ErrorInfo as ErrorInfo
from ._history import Event as Event
from ._history import EventReceived as EventReceived
from ._history import Input as Input
from ._history import Invalid as Invalid
from ._history import Journal as Journal
from ._history import Message as Message
from ._history import Pause as Pause
from ._history import Resume as Resume
from ._history import RunBlocked as RunBlocked
from ._history import RunCancelled as RunCancelled
from ._history import RunCompleted as RunCompleted
from ._history import RunFailed as RunFailed
from ._history import SleepCompleted as SleepCompleted
from ._history import Start as Start
from ._history import StepCompleted as StepCompleted
from ._history import StepFailed as StepFailed
from ._history import Timer as Timer
from ._history import TimerSet as TimerSet
from ._history import ValuesRecorded as ValuesRecorded
from ._history import WaitStarted as WaitStarted
from ._history import WaitTimedOut as WaitTimedOut
from ._history import check_job_name as check_job_name
from ._history import check_run_id as check_run_id
from ._history import decode as decode
from ._history import encode as encode
from ._history import kind_of as kind_of

__all__ = [
    "INPUT_KINDS",
    "JOB_NAME",
    "JOURNAL_KINDS",
    "KIND_HEADER",
    "RUN_ID",
    "TERMINAL",
    "VERSION",
    "VERSION_HEADER",
    "Body",
    "Cancel",
    "ErrorInfo",
    "Event",
    "EventReceived",
    "Input",
    "Invalid",
    "Journal",
    "Message",
    "Pause",
    "Resume",
    "RunBlocked",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "SleepCompleted",
    "Start",
    "StepCompleted",
    "StepFailed",
    "Timer",
    "TimerSet",
    "ValuesRecorded",
    "WaitStarted",
    "WaitTimedOut",
    "check_job_name",
    "check_run_id",
    "decode",
    "encode",
    "kind_of",
]
