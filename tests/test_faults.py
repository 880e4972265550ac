"""Fault injection: SIGTERM, a stale or live lock, damaged chunks, a full disk.

Each case interrupts or damages a real run of the planted-cue case, then asserts
that nothing completed was lost and that the rerun's summary.json equals the one of
an uninterrupted run (``reference``).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import audit_command

pytestmark = pytest.mark.slow


def _args(case, out):
    return ["run", "--model", case / "model.keras", "--data", case / "manifest.csv", "--classes",
            case / "classes.txt", "--out", out, "--set", "run_id=faults", "--set", "attribution.partition_size=4",
            "--set", "predict.partition_size=16"]


def _run(case, out, timeout=600):
    return subprocess.run(audit_command(*_args(case, out)), capture_output=True, text=True, timeout=timeout)


def _summary(out: Path) -> dict:
    """summary.json without what differs between two runs of the same inputs (timestamps, the report's path
    in its own run folder)."""
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("created", None)
    summary.pop("report", None)
    return summary


def _start(case, out) -> subprocess.Popen:
    return subprocess.Popen(audit_command(*_args(case, out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout=300) -> None:
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the run ended before {what} (exit {proc.returncode}): {err[-2000:]}")
        time.sleep(0.01)


def _parts(out: Path, stage: str) -> list[str]:
    """The committed partition outputs of ``stage`` (each has its record, written last)."""
    suffix = ".json" if stage == "attribute" else ".parquet"
    return sorted(p.name.replace(".files.json", suffix) for p in out.glob(f"chunks/{stage}-*/part-*.files.json"))


def _temporaries(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name)


@pytest.fixture(scope="module")
def reference(audit_case, tmp_path_factory):
    """An uninterrupted run of the case: the summary every faulted run must end with."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = _run(audit_case, out)
    assert done.returncode == 0, done.stderr
    return out


def test_sigterm_during_attribution_stops_keeps_chunks_and_resumes(audit_case, reference, tmp_path):
    out = tmp_path / "run"
    proc = _start(audit_case, out)
    _wait_for(proc, lambda: _parts(out, "attribute"), "its first attribution chunk")
    os.kill(proc.pid, signal.SIGTERM)
    sent = time.time()
    stdout, stderr = proc.communicate(timeout=120)
    stopped = time.time() - sent
    assert proc.returncode == 143, stderr
    assert stopped < 20, f"took {stopped:.1f} s to stop"
    lines = [line for line in stderr.splitlines() if line.startswith("audit:")]
    assert lines == [f"audit: stopped by SIGTERM during attribute: completed work is kept in {out}; "
                     "the same command resumes"], stderr
    assert not (out / "summary.json").exists(), "the run finished before SIGTERM"
    stored = _parts(out, "attribute")
    assert stored and not _temporaries(out)

    resumed = _run(audit_case, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "reusing 6 of 6 predict chunks" in resumed.stdout
    assert f"reusing {len(stored)} of " in resumed.stdout and stored[-1] in resumed.stdout
    assert _summary(out) == _summary(reference)


@pytest.mark.slow
def test_stale_lock_of_a_killed_run_is_taken_over(audit_case, reference, tmp_path):
    out = tmp_path / "run"
    proc = _start(audit_case, out)
    _wait_for(proc, lambda: list(out.glob("chunks/predict-*")), "it took its lock")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = _run(audit_case, out)
    assert resumed.returncode == 0, resumed.stderr
    warnings = [line for line in resumed.stdout.splitlines() if "taking over the lock" in line]
    assert len(warnings) == 1 and f"PID {proc.pid} on {socket.gethostname()}" in warnings[0], resumed.stdout
    assert warnings[0].endswith(f"process {proc.pid} is gone")
    assert _summary(out) == _summary(reference)


@pytest.mark.slow
def test_expired_lease_is_taken_over_and_a_live_lock_refuses(audit_case, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    lock = out / ".lock"
    lock.write_text(json.dumps({"pid": 4242, "host": "node-elsewhere", "started": "2026-01-01T00:00:00+00:00"}))
    os.utime(lock, (time.time() - 3600, time.time() - 3600))   # no heartbeat for an hour
    again = _run(audit_case, out)
    assert again.returncode == 0, again.stderr
    assert "taking over the lock of a run that stopped without releasing it (PID 4242 on node-elsewhere" \
        in again.stdout and "its lease expired" in again.stdout
    assert _summary(out) == _summary(reference)

    # a holder on another host whose heartbeat is fresh (a network file system: flock does not reach it)
    lock.write_text(json.dumps({"pid": 4242, "host": "node-elsewhere", "started": "2026-01-01T00:00:00+00:00"}))
    refused = _run(audit_case, out)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"audit: error: --out {out}: another audit is writing to this run folder "
        "(PID 4242 on node-elsewhere, started 2026-01-01T00:00:00+00:00)")

    # a live holder on this host, holding the flock as a running audit does
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
        handle.flush()
        refused = _run(audit_case, out)
    assert refused.returncode == 2
    assert f"another audit is writing to this run folder (PID {os.getpid()} on" in refused.stderr
    assert _summary(out) == _summary(reference)


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "bit-flipped":
        data[-200] ^= 0x10   # inside the last map, before the zip directory
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["bit-flipped", "truncated"])
def test_damaged_chunk_is_named_by_render_and_recomputed_by_resume(audit_case, reference, tmp_path, how):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    chunk = out / "maps" / "gradcam" / "chunk-00000.npz"   # the plan's probe: the top pair's first images
    _damage(chunk, how)

    rendered = subprocess.run(audit_command("render", out), capture_output=True, text=True, timeout=300)
    assert rendered.returncode == 0, rendered.stderr
    warnings = [line for line in rendered.stderr.splitlines() if line.startswith("audit: warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(
        "audit: warning: maps/gradcam/chunk-00000.npz is damaged: "), rendered.stderr
    assert "maps/gradcam/chunk-00000.npz is damaged" in (out / "index.html").read_text(encoding="utf-8")

    resumed = _run(audit_case, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "warning: maps/gradcam/chunk-00000.npz: " in resumed.stdout
    assert "recomputing part-00000.json" in resumed.stdout
    n = len(_parts(out, "attribute"))
    assert f"reusing {n - 1} of {n} attribute chunks" in resumed.stdout
    with np.load(chunk) as got, np.load(reference / chunk.relative_to(out)) as want:   # recomputed exactly
        assert np.array_equal(got["maps"], want["maps"]) and np.array_equal(got["row"], want["row"])
    assert _summary(out) == _summary(reference)
    assert "is damaged" not in (out / "index.html").read_text(encoding="utf-8")


@contextlib.contextmanager
def _small_disk(where: Path, megabytes: int):
    """A tmpfs of ``megabytes`` mounted at ``where`` (a real full disk: ENOSPC from the kernel)."""
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; returns the filler file (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for block in (1 << 16, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * block):
                    pass
    finally:
        os.close(fd)
    return filler


def test_full_disk_while_writing_maps(audit_case, reference, tmp_path):
    with _small_disk(tmp_path / "disk", 64) as disk:
        out = disk / "run"
        proc = _start(audit_case, out)
        _wait_for(proc, lambda: _parts(out, "attribute"), "its first attribution chunk")
        filler = _fill(disk)
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 3, stderr
        lines = [line for line in stderr.splitlines() if line.startswith("audit:")]
        assert len(lines) == 1 and lines[0].startswith("audit: runtime failure: no space left on device writing "
                                                       f"{out}/"), stderr
        assert lines[0].endswith("completed work is kept; free space and run the same command again")
        assert "Traceback" not in stderr
        assert not _temporaries(out), "a failed write left its temporary file on the full disk"
        stored = _parts(out, "attribute")
        assert stored

        filler.unlink()
        resumed = _run(audit_case, out)
        assert resumed.returncode == 0, resumed.stderr
        assert f"reusing {len(stored)} of " in resumed.stdout
        assert _summary(out) == _summary(reference)


def test_full_disk_while_writing_the_report(audit_case, reference, tmp_path):
    with _small_disk(tmp_path / "disk", 64) as disk:
        out = disk / "run"
        shutil.copytree(reference, out)
        written = {name: (out / name).read_bytes() for name in ("index.html", "summary.md", "junit.xml",
                                                                "summary.json")}
        filler = _fill(disk)
        rendered = subprocess.run(audit_command("render", out), capture_output=True, text=True, timeout=300)
        assert rendered.returncode == 3, rendered.stderr
        assert rendered.stderr.strip().splitlines() == [
            f"audit: runtime failure: no space left on device writing {out / 'index.html'}: completed work is "
            "kept; free space and run the same command again"]
        assert {name: (out / name).read_bytes() for name in written} == written   # the old report is intact
        assert not _temporaries(out)

        filler.unlink()
        again = _run(audit_case, out)
        assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
        assert _summary(out) == _summary(reference)
        assert (out / "index.html").stat().st_size > 0
