"""End-to-end: `audit run` through the CLI in a subprocess on the generated
planted-cue case of conftest (unlike the demo: 3 classes, 28x36 images, a nested
base model, no softmax)."""
from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest

from tests.conftest import audit_command


def _audit(*args, cwd):
    return subprocess.run(audit_command(*args), cwd=cwd, capture_output=True, text=True, timeout=600)


def test_run_writes_summary_per_contract(audit_case, tmp_path):
    out = tmp_path / "run"
    result = _audit("run", "--model", audit_case / "model.keras", "--data", audit_case / "manifest.csv",
                    "--classes", audit_case / "classes.txt", "--out", out, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"run_id", "status", "metrics", "findings", "gates"}
    assert summary["status"] == "pass" and [g["name"] for g in summary["gates"]] == ["max_unreadable_rate"]

    predictions = pd.read_parquet(out / "predictions.parquet")
    assert len(predictions) == 91 and summary["metrics"]["n_images"] == 91
    broken = predictions.set_index("path").loc["imgs/broken.png"]
    assert summary["metrics"]["n_unreadable"] == 1 and "broken.png" in broken["error"] and pd.isna(broken["predicted"])
    valid = predictions[predictions["error"].isna()]
    assert summary["metrics"]["accuracy"] == pytest.approx((valid["predicted"] == valid["label"]).mean(), abs=1e-6)
    assert set(predictions.columns) >= {"row", "path", "label", "predicted", "confidence", "margin", "probs", "cue"}

    findings = summary["findings"]
    assert [f["rank"] for f in findings] == list(range(1, len(findings) + 1))
    assert [f["score"] for f in findings] == sorted((f["score"] for f in findings), reverse=True)
    manifest_paths = set(pd.read_csv(audit_case / "manifest.csv")["path"])
    for f in findings:
        assert set(f["members"]) <= manifest_paths and f["size"] == len(f["members"])

    top = findings[0]
    cued = set(predictions.query("cue == 1 and predicted == 'green'")["path"])
    assert (top["true_label"], top["predicted_label"]) == ("red", "green")
    assert len(set(top["members"]) & cued) >= 0.8 * len(top["members"])
    assert len(set(top["members"]) & cued) >= 0.5 * len(cued)

    html = (out / "index.html").read_text()
    assert top["id"] in html


def test_gate_failure_exits_1(audit_case, tmp_path):
    result = _audit("run", "--model", audit_case / "model.keras", "--data", audit_case / "manifest.csv",
                    "--classes", audit_case / "classes.txt", "--out", tmp_path / "run",
                    "--set", "gates.max_error_rate=0.01", "--quiet", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "fail" and summary["gates"][0]["name"] == "max_error_rate"


@pytest.mark.parametrize("args, message", [
    (["--model", "{case}/nope.keras"], "audit: error: --model {case}/nope.keras: no such file"),
    (["--model", "{case}/model.keras", "--set", "select.margin=2"], "audit: error: `select.margin` must be"),
    (["--model", "{case}/model.keras", "--classes", "{case}/two.txt"],
     "audit: error: {case}/two.txt: 4 classes but the model has 3 outputs"),
])
def test_bad_input_exits_2_with_one_line(audit_case, tmp_path, args, message):
    (audit_case / "two.txt").write_text("red\ngreen\nblue\nextra\n")
    args = [a.format(case=audit_case) for a in args]
    result = _audit("run", "--data", audit_case / "manifest.csv", "--out", tmp_path / "run", *args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(message.format(case=audit_case)), result.stderr
    assert not (tmp_path / "run" / "summary.json").exists()
