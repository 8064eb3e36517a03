"""The wire protocol (v1), public: every message a run's log holds, and how to read it.

What ``Client.history()`` yields (``Message``) and what ``RunStatus.error`` holds
(``ErrorInfo``) live here, with the input and journal bodies as frozen msgspec
Structs, their ``Jetlane-Kind`` names, and ``encode``/``decode``. The
repository's docs/protocol.md documents each kind with an example::

    from jetlane import wire

    async for message in client.history(run_id):
        if isinstance(message.body, wire.StepFailed):
            print(message.body.step, message.body.error.message)
"""

from __future__ import annotations

from ._core.history import BUILD_ID as BUILD_ID
from ._core.history import CHILD_STATUSES as CHILD_STATUSES
from ._core.history import INPUT_KINDS as INPUT_KINDS
from ._core.history import JOB_NAME as JOB_NAME
from ._core.history import JOURNAL_KINDS as JOURNAL_KINDS
from ._core.history import KIND_HEADER as KIND_HEADER
from ._core.history import RUN_ID as RUN_ID
from ._core.history import TERMINAL as TERMINAL
from ._core.history import VERSION as VERSION
from ._core.history import VERSION_HEADER as VERSION_HEADER
from ._core.history import Body as Body
from ._core.history import Cancel as Cancel
from ._core.history import ChildEnded as ChildEnded
from ._core.history import ChildResult as ChildResult
from ._core.history import ChildStarted as ChildStarted
from ._core.history import ChildTimedOut as ChildTimedOut
from ._core.history import ErrorInfo as ErrorInfo
from ._core.history import Event as Event
from ._core.history import EventReceived as EventReceived
from ._core.history import Frame as Frame
from ._core.history import Input as Input
from ._core.history import Invalid as Invalid
from ._core.history import Journal as Journal
from ._core.history import Message as Message
from ._core.history import Parent as Parent
from ._core.history import Pause as Pause
from ._core.history import Pin as Pin
from ._core.history import Resume as Resume
from ._core.history import RunBlocked as RunBlocked
from ._core.history import RunCancelled as RunCancelled
from ._core.history import RunCompleted as RunCompleted
from ._core.history import RunFailed as RunFailed
from ._core.history import RunStarted as RunStarted
from ._core.history import SleepCompleted as SleepCompleted
from ._core.history import Start as Start
from ._core.history import StepCompleted as StepCompleted
from ._core.history import StepFailed as StepFailed
from ._core.history import Timer as Timer
from ._core.history import TimerSet as TimerSet
from ._core.history import ValuesRecorded as ValuesRecorded
from ._core.history import WaitStarted as WaitStarted
from ._core.history import WaitTimedOut as WaitTimedOut
from ._core.history import check_build_id as check_build_id
from ._core.history import check_job_name as check_job_name
from ._core.history import check_run_id as check_run_id
from ._core.history import decode as decode
from ._core.history import encode as encode
from ._core.history import kind_of as kind_of
from ._core.history import pinned_build as pinned_build

__all__ = [
    "BUILD_ID",
    "CHILD_STATUSES",
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
    "ChildEnded",
    "ChildResult",
    "ChildStarted",
    "ChildTimedOut",
    "ErrorInfo",
    "Event",
    "EventReceived",
    "Frame",
    "Input",
    "Invalid",
    "Journal",
    "Message",
    "Parent",
    "Pause",
    "Pin",
    "Resume",
    "RunBlocked",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunStarted",
    "SleepCompleted",
    "Start",
    "StepCompleted",
    "StepFailed",
    "Timer",
    "TimerSet",
    "ValuesRecorded",
    "WaitStarted",
    "WaitTimedOut",
    "check_build_id",
    "check_job_name",
    "check_run_id",
    "decode",
    "encode",
    "kind_of",
    "pinned_build",
]
