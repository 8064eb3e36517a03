"""The start `jetlane dev` suggests is one that its job accepts (issue 11: it used to fail)."""

from __future__ import annotations

import json
import shlex

import jobs.approval
import jobs.batch_etl
import jobs.rolling_deploy

from jetlane import registry
from jetlane.cli.examples import example_input, try_start


def test_the_suggested_start_fits_the_job() -> None:
    names = ("approval", "batch-etl", "rolling-deploy")
    served = {n: j for n, j in registry().items() if n in names}
    assert set(served) == {"approval", "batch-etl", "rolling-deploy"}
    command = shlex.split(try_start(served, "nats://127.0.0.1:4222"))
    job = served[command[2]]
    job.validate_input(json.loads(command[command.index("--input") + 1]))
    for each in served.values():
        job_input = example_input(each)
        each.validate_input(job_input)  # every example job gets an input it accepts
    assert jobs.approval and jobs.batch_etl and jobs.rolling_deploy
