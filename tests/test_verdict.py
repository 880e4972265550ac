"""The verdict in words and the soundness warnings: the misleading cases of issue 15, through
the CLI (``audit.cli.main`` in-process: one TensorFlow import for all), and the checks by hand."""
from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from audit import soundness
from audit.verdict import verdict
from tests.conftest import CLASSES, SHAPE, build_model

FAST = ["--set", "attribution.methods=[gradcam, occlusion]", "--set", "internals.enabled=false"]


def _audit(capsys, case, out, *args):
    from audit import cli

    argv = ["run", "--model", str(case / "model.keras"), "--data", str(case / "manifest.csv"),
            "--classes", str(case / "classes.txt"), "--out", str(out), *map(str, args)]
    capsys.readouterr()
    code = cli.main(argv)
    printed, err = capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None
    return subprocess.CompletedProcess(argv, code, printed, err), summary


def _checks(summary):
    return {c["check"]: c for c in summary["soundness"]}


def test_confirmed_cue_is_said_in_words_whatever_the_gates(audit_case, tmp_path, capsys):
    result, summary = _audit(capsys, audit_case, tmp_path / "run", "--set", "internals.enabled=false",
                             "--set", "verify.budget=5")   # room to test the finding by intervention
    assert result.returncode == 0, result.stderr
    v = summary["verdict"]
    top = summary["findings"][0]
    # the verdict follows the trust stage's judgement of the top finding, whichever it is on this machine
    if top["trust"]["confirmed"]:
        assert v["state"] == "cue_found" and v["text"].startswith("Spurious cue found: red ")
        assert "confirmed by intervention" in v["text"]
    else:
        assert v["state"] == "suspicious" and "not confirmed by intervention" in v["text"]
    assert v["sound"] and top["id"] in v["findings"] and ": red " in v["text"] and " called green (" in v["text"]
    assert v["text"] in result.stdout.splitlines()
    assert summary["schema_version"] == 2 and summary["created"] and summary["report"].endswith("index.html")
    assert set(summary["metrics"]["per_class"]) == set(CLASSES)
    html = (tmp_path / "run" / "index.html").read_text()
    assert html.index('id="verdict"') < html.index('id="gate-status"') and f'data-state="{v["state"]}"' in html
    assert "all 1 gate passed (the exit code; the verdict above is what was found)" in html
    md = (tmp_path / "run" / "summary.md").read_text()
    assert f"**{v['title']}: red " in md
    cases = ET.parse(tmp_path / "run" / "junit.xml").getroot().iter("testcase")
    verdict_case = next(c for c in cases if c.get("name") == "verdict")
    assert v["title"] in verdict_case.findtext("system-out")


def test_near_chance_model_is_not_sound(audit_case, tmp_path, capsys):
    build_model("logits", input_shape=SHAPE).save(tmp_path / "untrained.keras")
    result, summary = _audit(capsys, audit_case, tmp_path / "run", "--model", tmp_path / "untrained.keras",
                             "--set", "gates.soundness=[chance]", *FAST)
    chance = _checks(summary)["chance"]
    assert not chance["ok"] and "near chance" in chance["message"]
    assert not summary["verdict"]["sound"] and chance["message"] in summary["verdict"]["warnings"]
    assert result.returncode == 1 and "warning: audit not sound: accuracy" in result.stdout
    assert {g["name"]: g["passed"] for g in summary["gates"]}["soundness.chance"] is False
    html = (tmp_path / "run" / "index.html").read_text()
    assert 'id="soundness"' in html and "This audit is not sound" in html


def test_wrong_class_order_is_named(audit_case, tmp_path, capsys):
    (tmp_path / "sorted.txt").write_text("\n".join(sorted(CLASSES)) + "\n")   # the sorted-names mistake
    result, summary = _audit(capsys, audit_case, tmp_path / "run", "--classes", tmp_path / "sorted.txt", *FAST)
    order = _checks(summary)["class_order"]
    assert not order["ok"] and order["order"] == CLASSES, order
    assert "the class order looks wrong" in order["message"] and "output order: red, green, blue" in order["message"]
    assert not summary["verdict"]["sound"] and result.returncode == 0   # warned; gated only when asked


def test_unreadable_data_set_fails_the_default_gate(audit_case, tmp_path, capsys):
    manifest = pd.read_csv(audit_case / "manifest.csv")
    manifest["path"] = [f"missing/{i}.png" for i in range(len(manifest))]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    result, summary = _audit(capsys, audit_case, tmp_path / "run", "--data", tmp_path / "manifest.csv", *FAST)
    assert result.returncode == 1, result.stderr
    assert summary["metrics"]["n_unreadable"] == len(manifest)
    assert not _checks(summary)["unreadable"]["ok"] and "nothing was audited" in _checks(summary)["unreadable"]["message"]
    assert summary["verdict"]["state"] == "nothing_found" and not summary["verdict"]["sound"]
    assert "gate failed: max_unreadable_rate = 1.0 (threshold 0.05)" in result.stdout


def test_findings_below_min_size_are_neither_found_nor_trusted_high(audit_case, tmp_path, capsys):
    result, summary = _audit(capsys, audit_case, tmp_path / "run", "--set", "trust.min_size=100", *FAST)
    assert result.returncode == 0, result.stderr
    assert summary["findings"] and summary["verdict"]["state"] == "suspicious"
    assert all(f["trust"]["level"] != "high" and "trust.min_size 100" in f["trust"]["text"]
               for f in summary["findings"])
    small = _checks(summary)["small_findings"]
    assert not small["ok"] and small["value"] == len(summary["findings"])


# ------------------------------------------------------------------ the checks and words by hand

def _predictions(labels, predicted, errors=None, confidence=0.9):
    n = len(labels)
    return pd.DataFrame({"label": labels, "predicted": predicted, "error": errors or [None] * n,
                         "confidence": [confidence] * n, "predicted_idx": [CLASSES.index(p) for p in predicted]})


def test_class_order_finds_the_permutation():
    labels = ["red"] * 10 + ["green"] * 10 + ["blue"] * 10
    swapped = {"red": "green", "green": "blue", "blue": "red"}
    check = soundness.check_class_order(_predictions(labels, [swapped[x] for x in labels]), 0.2)
    assert not check["ok"] and check["value"] == 1.0
    fine = soundness.check_class_order(_predictions(labels, labels[:25] + ["red"] * 5), 0.2)
    assert fine["ok"] and fine["order"] is None


def test_chance_and_uniform_outputs():
    labels = ["red"] * 6 + ["green"] * 2 + ["blue"] * 2
    majority = soundness.check_chance(_predictions(labels, ["red"] * 10), 0.1, 1.5)
    assert not majority["ok"] and "near chance (60.0%" in majority["message"]
    uniform = soundness.check_chance(_predictions(labels, labels, confidence=0.36).assign(
        probs=[np.full(3, 1 / 3)] * 10), 0.1, 1.5)
    assert not uniform["ok"] and "outputs are near uniform" in uniform["message"]
    assert soundness.check_chance(_predictions(labels, labels), 0.1, 1.5)["ok"]


def test_verdict_words_for_each_state_and_kind():
    cue = {"x": 0.8, "y": 0.2, "cell": "top-right", "focus": 0.5}
    confirmed = {"id": "F-1", "true_label": "pool", "predicted_label": "bathroom", "size": 55, "cue": cue,
                 "verification": {"verified": True, "occlusion": {"n": 32, "flipped": 32, "rate": 1.0,
                                                                  "random_rate": 0.0, "lift": 1.0}},
                 "trust": {"confirmed": True}}
    v = verdict([confirmed], [], 8)
    assert v["state"] == "cue_found" and v["text"] == (
        "Spurious cue found: pool called bathroom (55 images, cue at the top-right; confirmed by intervention: "
        "hiding it flips 100% of 32 images, a random region 0%).")
    strategy = {**confirmed, "id": "F-2", "kind": "strategy", "predicted_label": "pool", "size": 85,
                "cue": {**cue, "text": "rails"}, "trust": {"confirmed": False}}
    v = verdict([strategy], [], 8)
    assert v["state"] == "suspicious" and v["text"].startswith(
        "Suspicious groups, no cue confirmed: pool relies on rails (85 images")
    described = {**confirmed, "cue": {**cue, "cell": "centre", "where": "anywhere",
                                      "text": "a mid-sized region anywhere in the image (10% of the image)"}}
    assert verdict([described], [], 8)["text"].startswith(   # the words say where: no contradicting mean cell
        "Spurious cue found: pool with a mid-sized region anywhere in the image (10% of the image) called "
        "bathroom (55 images; confirmed")
    assert verdict([{**confirmed, "size": 4}], [], 8)["state"] == "suspicious"
    assert verdict([{**confirmed, "triage": "suppressed"}], [], 8)["text"] == \
        "Nothing found: no group of errors shares a cue (1 suppressed in triage)."
    unsound = verdict([], [{"check": "chance", "ok": False, "message": "accuracy near chance"}], 8)
    assert unsound["state"] == "nothing_found" and not unsound["sound"] and unsound["warnings"] == [
        "accuracy near chance"]


# ------------------------------------------------------------------ progress of a long stage

def test_long_stage_logs_progress_with_eta_between_updates():
    """A stage logs done/total and an ETA every heartbeat, even when no task finishes meanwhile
    (the heartbeat is 30 s in a run; shortened here)."""
    import io
    import time

    from audit import progress

    out = io.StringIO()
    log = progress.Progress("text", out=out, heartbeat=0.05)
    with log.stage("attribute") as stage:
        stage.expect(400, "image maps")
        progress.advance(100)
        time.sleep(0.3)
    lines = [line for line in out.getvalue().splitlines() if "ETA" in line]
    assert len(lines) >= 3
    assert "[attribute] 100/400 image maps (25%)" in lines[-1]
    eta = float(lines[-1].rsplit("ETA ", 1)[1].split()[0])
    assert 0.5 < eta < 5                                  # three times the time spent so far
    progress.advance(5)                                    # outside a stage: nothing counts, nothing breaks
    quiet = io.StringIO()
    with progress.Progress("bar", err=quiet, heartbeat=0.05).stage("predict"):
        time.sleep(0.15)
    assert "ETA" not in quiet.getvalue()                   # a terminal has its bar instead


# ------------------------------------------------------------------ export for relabelling

@pytest.mark.parametrize("fmt", ["csv", "fiftyone", "labelstudio"])
def test_export_writes_a_findings_members(tmp_path, capsys, fmt):
    from audit import cli
    from tests.test_report import F1, build_run

    run_dir = build_run(tmp_path)
    members = json.loads((run_dir / "summary.json").read_text())["findings"][0]["members"]
    assert cli.main(["export", str(run_dir), "--finding", F1, "--format", fmt]) == 0
    path = run_dir / f"export-{F1}-{fmt}{'.csv' if fmt == 'csv' else '.json'}"
    assert capsys.readouterr().out.strip() == f"export: {path}"
    if fmt == "csv":
        rows = pd.read_csv(path)
        assert rows["path"].tolist() == members and set(rows["predicted"]) == {"bathroom"}
        assert all(str(run_dir.parent) in f or f.startswith("/") for f in rows["file"])
    elif fmt == "fiftyone":
        samples = json.loads(path.read_text())
        assert [s["tags"] for s in samples] == [[F1]] * len(members)
        assert {s["ground_truth"]["label"] for s in samples} == {"pool"}
    else:
        tasks = json.loads(path.read_text())
        assert [t["data"]["path"] for t in tasks] == members
        assert tasks[0]["predictions"][0]["result"][0]["value"]["choices"] == ["bathroom"]
    assert cli.main(["export", str(run_dir), "--finding", F1[:-1] + "x"]) == 2
    assert f"(did you mean {F1}?)" in capsys.readouterr().err


# ------------------------------------------------------------------ messages

def test_expired_triage_entries_are_listed(tmp_path):
    from audit.nightly.triage import read_triage_entries
    from audit.report.outputs import summary_markdown

    path = tmp_path / "triage.yaml"
    path.write_text("findings:\n  F-11111111: {action: suppress, reason: old ticket, expires: 2020-01-01}\n")
    active, expired = read_triage_entries(path)
    assert active == {} and expired == [{"id": "F-11111111", "action": "suppress", "reason": "old ticket",
                                         "owner": None, "expires": "2020-01-01"}]
    view = {"run_id": "r", "status": "pass", "verdict": verdict([], [], 8), "soundness": [],
            "triage_expired": expired, "gates": [], "failed_gates": [], "metrics": [], "n_findings": 0,
            "top_findings": [], "changes": {"has_baseline": False}}
    assert "- triage entry F-11111111 (suppress) expired on 2020-01-01: no longer applied" in summary_markdown(view)


def test_flat_folder_and_bad_config_stop_before_tensorflow(tmp_path, capsys):
    import sys

    from PIL import Image

    from audit import cli

    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    (tmp_path / "m.keras").write_bytes(b"")
    assert cli.main(["run", "--model", str(tmp_path / "m.keras"), "--data", str(tmp_path / "flat")]) == 2
    assert "needs one subfolder per class" in capsys.readouterr().err
    before = "tensorflow" in sys.modules   # False when this test runs first in its process
    assert cli.main(["run", "--model", "x.keras", "--data", str(tmp_path), "--set", "selct.margin=1"]) == 2
    assert "unknown key `selct.margin` (did you mean `select.margin`?)" in capsys.readouterr().err
    (tmp_path / "typo.yaml").write_text("selct:\n  margin: 0.2\n")   # a misspelt section in a file
    assert cli.main(["run", str(tmp_path / "typo.yaml"), "--model", "x.keras", "--data", str(tmp_path)]) == 2
    assert "typo.yaml: unknown key `selct` (did you mean `select`?)" in capsys.readouterr().err
    assert ("tensorflow" in sys.modules) == before


def test_slack_summary_has_no_tables_and_links_the_published_report(tmp_path):
    from audit import artifacts
    from audit.report.render import render
    from tests.test_report import build_run

    run_dir = build_run(tmp_path)
    record = artifacts.read_json(run_dir / artifacts.RUN_JSON)
    record.setdefault("config", {})["report"] = {"summary_format": "slack", "url": "https://ci.example/r/1/index.html"}
    artifacts.write_json(run_dir / artifacts.RUN_JSON, record)
    render(run_dir)
    text = (run_dir / "summary.md").read_text()
    assert "|" not in text and "Report: https://ci.example/r/1/index.html" in text
    assert text.splitlines()[1].startswith("Suspicious groups, no cue confirmed: pool called bathroom")
    assert "Gates: 1 of 2 failed (accuracy)" in text
