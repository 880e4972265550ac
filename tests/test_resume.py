"""Resumable runs: a finished run is not recomputed; a killed run resumes from its chunks."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import audit_command


def _args(case, out):
    return ["run", "--model", case / "model.keras", "--data", case / "manifest.csv", "--classes",
            case / "classes.txt", "--out", out, "--set", "run_id=resume", "--set", "attribution.partition_size=4",
            "--set", "predict.partition_size=16"]


def _summary(out):
    """summary.json without its time stamp and the report's path in its own run folder."""
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("created", None)
    summary.pop("report", None)
    return summary


@pytest.mark.slow
def test_sigkill_during_attribution_then_resume(audit_case, tmp_path):
    reference = tmp_path / "reference"
    done = subprocess.run(audit_command(*_args(audit_case, reference)), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    again = subprocess.run(audit_command(*_args(audit_case, reference)), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert "[predict]" not in again.stdout  # no stage, so no model pass, ran

    out = tmp_path / "killed"
    proc = subprocess.Popen(audit_command(*_args(audit_case, out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("chunks/attribute-*/part-00000.files.json")):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"
    stored = sorted(p.name.replace(".files.json", ".json") for p in out.glob("chunks/attribute-*/part-*.files.json"))
    assert stored

    resumed = subprocess.run(audit_command(*_args(audit_case, out)), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "reusing 6 of 6 predict chunks" in resumed.stdout
    assert f"reusing {len(stored)} of " in resumed.stdout and stored[0] in resumed.stdout
    assert _summary(out) == _summary(reference)
