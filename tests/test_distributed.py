"""The demo audit on a real Dask cluster (scheduler + 2 workers on 127.0.0.1),
one worker killed mid-run: the findings equal the local run's."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import audit_command

ROOT = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).with_name("dask"))
SMALL_PARTS = ["--set", "predict.partition_size=24", "--set", "attribution.partition_size=6"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _findings(out: Path) -> list:
    summary = json.loads((out / "summary.json").read_text())
    return [(f["id"], f["rank"], f["true_label"], f["predicted_label"], sorted(f["members"]))
            for f in summary["findings"]]


@pytest.fixture
def cluster(tmp_path):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "scheduler.log", "w"))]
    for i in range(2):
        procs.append(subprocess.Popen([DASK, "worker", address, "--nthreads", "1", "--no-nanny",
                                       "--dashboard-address", ":0", "--name", f"w{i}"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"worker{i}.log", "w")))
    yield address, procs
    for proc in reversed(procs):   # workers first: a worker whose scheduler is gone waits to reconnect
        if proc.poll() is None:
            proc.terminate()
    for proc in reversed(procs):
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_demo_on_a_cluster_survives_a_killed_worker(cluster, tmp_path):
    address, procs = cluster
    cache = ROOT / "reports" / ".cache" / "demo"
    local = tmp_path / "local"
    result = subprocess.run(audit_command("demo", "--cache", cache, "--out", local, "--quiet", *SMALL_PARTS),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]

    remote = tmp_path / "remote"
    proc = subprocess.Popen(audit_command("demo", "--cache", cache, "--out", remote, "--quiet", *SMALL_PARTS,
                                          "--set", f"dask.scheduler={address}"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(remote.glob("chunks/predict-*/part-*[0-9].parquet"))) < 3:
        time.sleep(0.02)
    victim = procs[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (remote / "summary.json").exists(), "the run finished before the worker was killed"
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-2000:]
    assert len(list(remote.glob("chunks/predict-*/part-*[0-9].parquet"))) == 20
    assert _findings(remote) == _findings(local)
    assert _findings(local)[0][2:4] == ("pool", "bathroom")
