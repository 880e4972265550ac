"""``audit run --mlflow URI`` against MLflow's local file store (a file:// URI in tmp)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import audit_command

ROOT = Path(__file__).resolve().parents[1]


def _run(case: Path, out: Path, uri: str, allow_file_store: bool, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(ROOT), **({"MLFLOW_ALLOW_FILE_STORE": "true"} if allow_file_store else {}))
    return subprocess.run(audit_command("run", "--model", case / "model.keras", "--data", case / "manifest.csv",
                                        "--classes", case / "classes.txt", "--out", out,
                                        "--set", "trust.enabled=false", "--set", "internals.enabled=false",
                                        *extra, "--mlflow", uri),
                          cwd=out.parent, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow
def test_mlflow_logs_metrics_finding_tags_and_the_report(audit_case, tmp_path):
    import mlflow

    uri = (tmp_path / "mlruns").as_uri()
    result = _run(audit_case, tmp_path / "run", uri, True, "--set", "gates.max_error_rate=0.9")
    assert result.returncode == 0, result.stderr
    assert "mlflow: logged as run " in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        [logged] = client.search_runs([e.experiment_id for e in client.search_experiments()])
        artifacts = sorted(a.path for a in client.list_artifacts(logged.info.run_id))
    finally:
        del os.environ["MLFLOW_ALLOW_FILE_STORE"]
    m, tags = logged.data.metrics, logged.data.tags
    assert logged.info.run_name == summary["run_id"]
    assert m["accuracy"] == summary["metrics"]["accuracy"] and m["n_images"] == 91
    assert m["n_findings"] == len(summary["findings"]) >= 1
    assert m["top_score"] == max(f["score"] for f in summary["findings"])
    gate = summary["gates"][0]
    assert m["gate.max_error_rate"] == gate["value"] and m["gate.max_error_rate.passed"] == 1.0
    assert tags["cnn_audit.findings"] == ",".join(f["id"] for f in summary["findings"])
    assert tags["cnn_audit.status"] == "pass"
    top = summary["findings"][0]
    assert tags[f"finding.{top['id']}"].startswith(f"{top['true_label']} -> {top['predicted_label']}, {top['size']} images")
    assert artifacts == ["index.html", "summary.json", "summary.md"]


def test_a_tracking_uri_mlflow_cannot_use_stops_before_any_work(audit_case, tmp_path):
    result = _run(audit_case, tmp_path / "run", "nosuch://tracker", True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("audit: error: --mlflow nosuch://tracker: "), lines
    assert not (tmp_path / "run" / "summary.json").exists()
