"""The benchmark suite runs end to end and reports every workload (never how fast)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("floor", "W1", "W2", "W3", "W4", "W5", "W6")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_bench_reports_every_workload(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--rounds", "1", "--results", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = tmp_path.glob("*.json")
    data = json.loads(result.read_text())
    keys = {fig["key"] for fig in data["figures"]}
    for workload in WORKLOADS:
        assert any(key.startswith(f"{workload}.") for key in keys), workload
    for fig in data["figures"]:
        assert fig["samples"], fig["key"]
        assert fig["median"] is not None, fig["key"]
        if fig["floor"] is not None:
            assert fig["ratio_to_floor"] is not None, fig["key"]
    assert data["machine"]["loadavg"]["before"]
    for workload in WORKLOADS:
        assert f"\n{workload}." in done.stdout  # the table has a row for it
