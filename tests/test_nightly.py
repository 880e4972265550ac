"""Nightly operation: stable finding IDs, baseline matching, triage, gates, history, compare, logs."""
from __future__ import annotations

import json
import multiprocessing
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.config import resolve
from audit.errors import UsageError
from audit.findings import Finding, assign_ids, cue_descriptor, stable_id
from audit.nightly import baseline as nightly_baseline
from audit.nightly import history as nightly_history
from audit.nightly import triage as nightly_triage
from audit.nightly.baseline import apply_baseline, match
from audit.nightly.runs import Run
from audit.stages.gate import merge_pairs, pair_rates, summarize
from tests.conftest import audit_command

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- stable IDs

def _blob_maps(rng: np.random.Generator, n: int, shape=(32, 40), size=4, where=None) -> np.ndarray:
    """``n`` maps, each a small bright blob at a random place (``where``: a fixed ``(y, x)``), on noise."""
    h, w = shape
    maps = rng.uniform(0, 0.002, (n, h, w)).astype(np.float32)
    for m in maps:
        y, x = where if where is not None else (rng.integers(0, h - size), rng.integers(0, w - size))
        m[y:y + size, x:x + size] += 1.0
    return maps


def _findings_with_maps(maps_list, pairs):
    maps = np.concatenate(maps_list)
    findings, start = [], 0
    for m, (true, predicted) in zip(maps_list, pairs):
        rows = list(range(start, start + len(m)))
        findings.append(Finding(id="F-tmp", true_label=true, predicted_label=predicted,
                                members=tuple(map(str, rows)), rows=tuple(rows)))
        start += len(m)
    return findings, maps, {r: r for r in range(len(maps))}


def test_cue_descriptor_locates_and_measures_focus():
    rng = np.random.default_rng(0)
    corner = cue_descriptor(_blob_maps(rng, 10, where=(2, 2)))
    assert corner.cell == "top-left" and corner.x < 0.2 and corner.y < 0.2
    blobs = cue_descriptor(_blob_maps(rng, 30))
    assert blobs.cell == "centre"  # blobs anywhere average out to the centre
    uniform = cue_descriptor(np.ones((5, 32, 40), np.float32))
    assert uniform.focus == pytest.approx(0.1, abs=0.01)
    assert blobs.focus > 3 * uniform.focus
    empty = cue_descriptor(np.zeros((3, 8, 8), np.float32))  # all-zero maps count as uniform
    assert empty.cell == "centre" and empty.focus == pytest.approx(6 / 64, abs=1e-4)  # 6 of 64 cells


def test_ids_are_stable_across_member_sets_and_differ_by_pair_and_place():
    ids = []
    for seed in (1, 2):  # other images, other sizes: the same cue
        rng = np.random.default_rng(seed)
        f, maps, at = _findings_with_maps([_blob_maps(rng, 20 + seed * 7), _blob_maps(rng, 12, where=(1, 30))],
                                          [("pool", "bathroom"), ("pool", "bathroom")])
        ids.append([x.id for x in assign_ids(f, maps, at)])
    assert ids[0] == ids[1]
    assert ids[0][0] == stable_id("pool", "bathroom", "centre") and ids[0][0] != ids[0][1]
    assert stable_id("pool", "bathroom", "centre") != stable_id("bathroom", "pool", "centre")


def test_id_collisions_within_a_run_are_numbered_in_order():
    rng = np.random.default_rng(3)
    f, maps, at = _findings_with_maps([_blob_maps(rng, 10), _blob_maps(rng, 8), _blob_maps(rng, 9)],
                                      [("a", "b"), ("a", "b"), ("b", "a")])
    f = assign_ids(f, maps, at)
    base = stable_id("a", "b", "centre")
    assert [x.id for x in f] == [base, f"{base}-2", stable_id("b", "a", "centre")]
    assert f[1].cue.id == f"{base}-2"


# ----------------------------------------------------------------------------- matching

def _entry(fid, x=0.5, y=0.5, focus=0.4, pair=("pool", "bathroom"), members=(), score=0.3, cue_id=None, **extra):
    """A finding as summary.json lists it."""
    return {"id": fid, "true_label": pair[0], "predicted_label": pair[1], "score": score,
            "members": list(members), "rows": [],
            "cue": {"x": x, "y": y, "focus": focus, "cell": "centre", "id": cue_id or fid}, **extra}


def _finding(fid, **kwargs):
    return Finding.from_json(_entry(fid, **kwargs))


@pytest.mark.parametrize("other, matched", [
    (dict(x=0.55, y=0.45), True),                       # centre drifted a little
    (dict(x=0.8, y=0.5), False),                        # centre moved
    (dict(focus=0.15), False),                          # same place, diffuse instead of compact
    (dict(focus=0.5), True),                            # focus within a factor sqrt(2)
    (dict(pair=("bathroom", "pool")), False),           # other pair
    (dict(x=0.9, members=[f"m{i}" for i in range(8)]), True),  # far, but the same images
])
def test_match_by_pair_cue_and_overlap(other, matched):
    base = _finding("F-aaaaaaaa", members=[f"m{i}" for i in range(10)])
    new = _finding("F-bbbbbbbb", **{"members": [f"n{i}" for i in range(10)], **other})
    assert match([new], [base], 0.15, 0.5, 0.5) == ({0: 0} if matched else {})


def test_match_is_one_to_one_closest_first():
    old = [_finding("F-1", x=0.50), _finding("F-2", x=0.60)]
    new = [_finding("F-3", x=0.58), _finding("F-4", x=0.49)]
    assert match(new, old, 0.15, 0.5, 0.5) == {1: 0, 0: 1}


def test_apply_baseline_marks_status_inherits_ids_and_lists_resolved():
    baseline = Run(Path("night1"), {"run_id": "night1", "findings": [
        _entry("F-rails", x=0.5), _entry("F-gone", x=0.1, y=0.1, pair=("a", "b"))]})
    # the second: content ID equal to a baseline ID, but a different (diffuse) cue
    findings = [_finding("F-rails2", x=0.52), _finding("F-rails", x=0.5, focus=0.1), _finding("F-x", pair=("c", "d"))]
    out, resolved = apply_baseline(findings, baseline, 0.15, 0.5, 0.5)
    assert [(f.id, f.status) for f in out] == [("F-rails", "persisting"), ("F-rails-2", "new"), ("F-x", "new")]
    assert out[0].baseline["id"] == "F-rails"
    assert [r["id"] for r in resolved] == ["F-gone"]
    assert [f.status for f in findings] == ["new"] * 3 and findings[0].id == "F-rails2"   # records are not edited
    # idempotent: finishing again starts from each finding's own content ID
    again, _ = apply_baseline(out, baseline, 0.15, 0.5, 0.5)
    assert [f.id for f in again] == ["F-rails", "F-rails-2", "F-x"]
    plain, resolved = apply_baseline(again, None, 0.15, 0.5, 0.5)
    assert resolved == [] and {f.status for f in plain} == {"new"} and plain[0].id == "F-rails2"
    assert plain[0].baseline is None


# ----------------------------------------------------------------------------- triage

def _triage(tmp_path, text):
    path = tmp_path / "triage.yaml"
    path.write_text(text)
    return path


def test_triage_reads_actions_and_drops_expired(tmp_path):
    path = _triage(tmp_path, """
findings:
  F-1a2b3c4d: {action: acknowledge, reason: known, owner: alice, expires: 2030-01-01}
  F-00000000: {action: suppress}
  F-11111111: {action: suppress, expires: 2020-01-01}
""")
    entries = nightly_triage.read_triage(path)
    assert entries["F-1a2b3c4d"] == {"status": "acknowledged", "reason": "known", "owner": "alice",
                                    "expires": "2030-01-01"}
    assert entries["F-00000000"]["status"] == "suppressed" and "F-11111111" not in entries
    findings = nightly_triage.apply_triage([_finding("F-1a2b3c4d"), _finding("F-22222222")], entries)
    assert [f.triage for f in findings] == ["acknowledged", None]
    assert findings[0].triage_note["owner"] == "alice" and findings[1].triage_note is None
    assert nightly_triage.read_triage(_triage(tmp_path, "")) == {}


@pytest.mark.parametrize("text, key", [
    ("findings: [F-1]", "`findings`"),
    ("finding: {}", "`finding`"),
    ("findings:\n  F-1a: {action: ignore}", "`findings.F-1a.action`"),
    ("findings:\n  bad-id: {action: suppress}", "`findings.bad-id`"),
    ("findings:\n  F-1a: suppress", "`findings.F-1a`"),
    ("findings:\n  F-1a: {action: suppress, why: x}", "`findings.F-1a.why`"),
    ("findings:\n  F-1a: {action: suppress, expires: soon}", "`findings.F-1a.expires`"),
    ("findings:\n  F-1a: {action: suppress, owner: 3}", "`findings.F-1a.owner`"),
    ("findings: {F-1a: [", "not valid YAML"),
])
def test_triage_errors_name_the_file_and_key(tmp_path, text, key):
    path = _triage(tmp_path, text)
    with pytest.raises(UsageError) as info:
        nightly_triage.read_triage(path)
    message = str(info.value)
    assert message.startswith(str(path)) and key in message and "\n" not in message
    with pytest.raises(UsageError, match="no such triage file"):
        nightly_triage.read_triage(tmp_path / "missing.yaml")


# ----------------------------------------------------------------------------- gates

def _predictions(pairs: dict[tuple[str, str], int], n_per_class: int = 10) -> pd.DataFrame:
    rows = []
    for label in ("a", "b", "c"):
        wrong = [(p, n) for (t, p), n in pairs.items() if t == label]
        predicted = [p for p, n in wrong for _ in range(n)]
        predicted += [label] * (n_per_class - len(predicted))
        rows += [{"row": len(rows) + i, "path": f"{label}{i}", "label": label, "predicted": p, "error": None}
                 for i, p in enumerate(predicted)]
    return pd.DataFrame(rows)


SELECTION = pd.DataFrame({"reason": ["misclassified", "low_confidence", "contrast"]})


def _config(**gates):
    return resolve(None, [f"gates.{k}={v}" for k, v in gates.items()], {"run_id": "r2", "out": "unused"})


def test_pair_rates_and_merge():
    rates = pair_rates(_predictions({("a", "b"): 3, ("b", "c"): 1}))
    assert rates == [{"true_label": "a", "predicted_label": "b", "n_true": 10, "n_confused": 3, "error_rate": 0.3},
                     {"true_label": "b", "predicted_label": "c", "n_true": 10, "n_confused": 1, "error_rate": 0.1}]
    merged = merge_pairs(rates, [{"true_label": "c", "predicted_label": "a", "error_rate": 0.2},
                                 {"true_label": "a", "predicted_label": "b", "error_rate": 0.1}], {"a": 10, "b": 10, "c": 10})
    assert [(p["true_label"], p["n_confused"], p["baseline_error_rate"]) for p in merged] == [
        ("a", 3, 0.1), ("b", 1, 0.0), ("c", 0, 0.2)]
    assert all(p["baseline_error_rate"] is None for p in merge_pairs(rates, None, {}))


def test_gates_respect_status_triage_and_baseline():
    predictions = _predictions({("a", "b"): 4})
    verified = {"verified": True}
    findings = [_finding("F-new", score=0.5, status="new", triage="acknowledged", causal=0.9, verification=verified),
                _finding("F-sup", score=0.9, status="new", triage="suppressed", causal=1.0, verification=verified),
                _finding("F-old", score=0.4, status="persisting", triage=None),
                _finding("F-open", score=0.2, status="new", triage=None, causal=0.3, verification=verified)]
    baseline = Run(Path("b"), {"run_id": "b", "findings": []},
                           [{"true_label": "a", "predicted_label": "b", "error_rate": 0.1}])
    config = _config(max_new_finding_score=0.25, max_finding_score=0.45, max_pair_error_rate_increase=0.25,
                     min_verification_lift=0.95, max_error_rate=0.2)
    summary = summarize(config, predictions, SELECTION, findings, baseline, [])
    gates = {g["name"]: (g["passed"], g["value"]) for g in summary["gates"]}
    assert gates == {"max_error_rate": (True, pytest.approx(4 / 30, abs=1e-6)),
                     "max_finding_score": (False, 0.5),          # the suppressed 0.9 is ignored
                     "max_new_finding_score": (True, 0.2),       # acknowledged and persisting ignored
                     "max_pair_error_rate_increase": (False, pytest.approx(0.3)),
                     "min_verification_lift": (True, 0.9),       # the suppressed lift 1.0 is ignored
                     "max_unreadable_rate": (True, 0.0)}         # on by default
    assert summary["status"] == "fail"
    assert summary["baseline"] == {"run_id": "b", "run_dir": "b"}
    assert summary["pairs"][0]["baseline_error_rate"] == 0.1
    # without a baseline there is no increase to gate; every finding defaults to new
    plain = [_finding("F-1", score=0.3)]
    summary = summarize(_config(max_pair_error_rate_increase=0.1, max_new_finding_score=0.25), predictions,
                        SELECTION, plain)
    assert [g["name"] for g in summary["gates"]] == ["max_new_finding_score", "max_unreadable_rate"]
    assert summary["status"] == "fail" and plain[0].status == "new" and summary["baseline"] is None


# ----------------------------------------------------------------------------- history

def _rows(run_id, n=2):
    summary = {"run_id": run_id, "status": "pass", "metrics": {"accuracy": 0.9},
               "findings": [_entry("F-1", pair=("a", "b"), score=0.4)],
               "pairs": [{"true_label": "a", "predicted_label": "b", "n_true": 10, "n_confused": 2,
                          "error_rate": 0.2}] * (n - 1) + [{"true_label": "b", "predicted_label": "a", "n_true": 10,
                                                           "n_confused": 1, "error_rate": 0.1}]}
    return nightly_history.history_rows(summary, "2026-11-22T03:00:00+00:00", Path("x") / run_id)


def test_history_appends_and_replaces_a_rerun(tmp_path):
    path = tmp_path / "history.parquet"
    nightly_history.append_history(path, _rows("n1"))
    nightly_history.append_history(path, _rows("n2"))
    nightly_history.append_history(path, _rows("n1", n=1))  # re-run of n1: its rows replaced
    again = _rows("n3", n=1).assign(run_dir=_rows("n2")["run_dir"][0])  # a new run ID in the folder of n2
    nightly_history.append_history(path, again)
    table = pd.read_parquet(path)
    assert sorted(table["run_id"]) == ["n1", "n3"]
    assert list(table.columns)[:11] == ["run_id", "created", "true_label", "predicted_label", "n_true", "n_confused",
                                        "error_rate", "n_findings", "top_score", "accuracy", "status"]
    n2 = _rows("n2").set_index("true_label")
    assert n2.loc["a", "top_score"] == 0.4 and n2.loc["b", "n_findings"] == 0
    assert not list(tmp_path.glob("*.tmp"))


def test_history_without_pairs_keeps_the_run():
    rows = nightly_history.history_rows({"run_id": "r", "status": "pass", "metrics": {"accuracy": 1.0}, "findings": [],
                                 "pairs": []}, "t")
    assert len(rows) == 1 and rows["true_label"].isna().all() and rows["accuracy"][0] == 1.0


def _append_many(path: str, worker: int) -> None:
    for i in range(5):
        nightly_history.append_history(Path(path), _rows(f"w{worker}-{i}"))


def test_history_concurrent_appends_lose_nothing(tmp_path):
    path = tmp_path / "history.parquet"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    table = pd.read_parquet(path)
    assert sorted(set(table["run_id"])) == sorted(f"w{w}-{i}" for w in range(4) for i in range(5))
    assert len(table) == 40


def test_unreadable_history_is_left_alone(tmp_path):
    path = tmp_path / "history.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(nightly_history.HistoryError, match="history.parquet: cannot read the history"):
        nightly_history.append_history(path, _rows("n1"))
    assert path.read_bytes() == b"not parquet"


# ----------------------------------------------------------------------------- compare (no TensorFlow)

def _run_folder(path: Path, run_id: str, findings: list[dict], pairs: list[dict], accuracy: float) -> Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({
        "run_id": run_id, "status": "pass", "metrics": {"n_images": 100, "accuracy": accuracy},
        "findings": findings, "gates": [{"name": "max_error_rate", "passed": True, "value": 1 - accuracy,
                                         "threshold": 0.3}], "pairs": pairs}))
    return path


def test_compare_cli_prints_and_writes_the_diff(tmp_path):
    pair = {"true_label": "pool", "predicted_label": "bathroom", "n_true": 100}
    a = _run_folder(tmp_path / "a", "night1", [_entry("F-rails", score=0.31, size=55),
                                               _entry("F-bath", pair=("bathroom", "pool"), score=0.08)],
                    [{**pair, "n_confused": 53, "error_rate": 0.53}], 0.85)
    b = _run_folder(tmp_path / "b", "night2", [_entry("F-bath", pair=("bathroom", "pool"), score=0.5, size=40),
                                               _entry("F-diffuse", focus=0.12, score=0.18)],
                    [{**pair, "n_confused": 20, "error_rate": 0.2}], 0.84)
    probe = ("import sys, audit.cli; code = audit.cli.main(sys.argv[1:]); "
             "print('tensorflow loaded' if 'tensorflow' in sys.modules else 'no tensorflow'); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", probe, "compare", str(a), str(b)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no tensorflow" in result.stdout
    assert "resolved F-rails: pool -> bathroom, was 55 images" in result.stdout
    assert "new F-diffuse" in result.stdout and "persisting F-bath" in result.stdout
    assert "| pool -> bathroom | 0.53 | 0.2 | -0.33 |" in result.stdout
    diff = json.loads((b / "compare.json").read_text())
    assert [f["id"] for f in diff["findings"]["resolved"]] == ["F-rails"]
    assert diff["findings"]["persisting"][0]["score_change"] == pytest.approx(0.42)
    assert diff["metrics"]["accuracy"]["change"] == pytest.approx(-0.01)
    assert (b / "compare.md").read_text().startswith("# Compare night1 -> night2")

    out = tmp_path / "diffs"
    result = subprocess.run(audit_command("compare", a, b, "--out", out, "--quiet"), capture_output=True, text=True)
    assert result.returncode == 0 and (out / "compare.json").is_file()
    assert result.stdout.strip().splitlines() == [f"compare: {out / 'compare.json'} {out / 'compare.md'}"]

    result = subprocess.run(audit_command("compare", a, tmp_path), capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"audit: error: {tmp_path}: not a finished run folder (no summary.json)"


# ----------------------------------------------------------------------------- through the CLI

def _run_args(case: Path, out: Path, *extra) -> list[str]:
    return audit_command("run", "--model", case / "model.keras", "--data", case / "manifest.csv",
                         "--classes", case / "classes.txt", "--out", out, *extra)


@pytest.mark.slow
def test_log_format_json(audit_case, tmp_path):
    result = subprocess.run(_run_args(audit_case, tmp_path / "run", "--log-format", "json"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert records and all({"ts", "level", "stage", "event", "msg"} <= set(r) for r in records)
    ends = {r["stage"]: r for r in records if r["event"] == "end"}
    assert list(ends) == ["predict", "select", "attribute", "trust", "discover", "verify", "internals", "render"]
    assert ends["predict"]["tasks"] >= 1 and ends["predict"]["seconds"] >= 0
    assert result.stdout.startswith("status pass:")  # the result still printed, logs not on stdout
    assert (tmp_path / "history.parquet").is_file()   # every run appends to the history next to it


@pytest.mark.slow
def test_text_logs_when_not_a_terminal_and_quiet(audit_case, tmp_path):
    result = subprocess.run(_run_args(audit_case, tmp_path / "run"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    starts = [line for line in lines if line.endswith("[predict] start")]
    assert starts and starts[0][:4].isdigit() and starts[0][10] == "T"
    assert any("[attribute] done in" in line and "tasks)" in line for line in lines)
    quiet = subprocess.run(_run_args(audit_case, tmp_path / "quiet", "--quiet"), capture_output=True, text=True,
                           timeout=600)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stdout.splitlines()[0].startswith("status pass:") and "[predict]" not in quiet.stdout
    assert quiet.stderr == ""


@pytest.mark.slow
def test_progress_bars_on_a_terminal(audit_case, tmp_path):
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    result = subprocess.run(_run_args(audit_case, tmp_path / "run"), stdout=subprocess.PIPE, stderr=slave,
                            text=True, timeout=600)
    os.close(slave)
    reader.join(10)
    os.close(master)
    terminal = b"".join(chunks).decode(errors="replace")
    assert result.returncode == 0, terminal[-2000:]
    assert "\r" in terminal and "[predict] " in terminal and "tasks" in terminal
    assert any(line.strip().endswith("s") and "[render] done" in line for line in terminal.split("\r"))
    assert result.stdout.startswith("status pass:") and "[predict]" not in result.stdout


def test_bad_triage_file_stops_before_work(audit_case, tmp_path):
    triage = _triage(tmp_path, "findings:\n  F-1: {action: maybe}\n")
    result = subprocess.run(_run_args(audit_case, tmp_path / "run", "--triage", triage), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"audit: error: {triage}: `findings.F-1.action` must be acknowledge or suppress (got 'maybe')")
    assert not (tmp_path / "run").exists()
    result = subprocess.run(_run_args(audit_case, tmp_path / "run", "--baseline", tmp_path), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 2 and "not a finished baseline run folder" in result.stderr


@pytest.mark.slow
def test_gates_and_triage_reapplied_to_a_complete_run(audit_case, tmp_path):
    out = tmp_path / "run"
    first = subprocess.run(_run_args(audit_case, out, "--set", "gates.max_new_finding_score=0"),
                           capture_output=True, text=True, timeout=600)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["findings"], first.stdout
    assert first.returncode == 1 and "gate failed: max_new_finding_score" in first.stdout
    triage = _triage(tmp_path, "findings:\n" + "".join(f"  {f['id']}: {{action: acknowledge}}\n"
                                                       for f in summary["findings"]))
    again = subprocess.run(_run_args(audit_case, out, "--set", "gates.max_new_finding_score=0", "--triage", triage),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert "nothing to do" in again.stdout and "[predict] start" not in again.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert {f["triage"] for f in summary["findings"]} == {"acknowledged"}
    assert list(pd.read_parquet(tmp_path / "history.parquet")["status"].unique()) == ["pass"]


# ----------------------------------------------------------------------------- acceptance (the demo)

def _demo(out: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(audit_command("demo", "--out", out, "--cache", ROOT / "reports" / ".cache" / "demo",
                                        "--quiet", *extra), capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_demo_nightly_acceptance(demo_nights, tmp_path):
    """The README's nights (``demo_nights``): night 1 (standard model) finds the rails; night 2
    (retrained with rails on 5% of the bathrooms, baseline night 1) resolves them; night 3
    (standard model again, baseline night 2) has the rails finding new and unacknowledged, and the
    gate fails (exit 1). Acknowledged in triage.yaml, the same night passes (exit 0)."""
    nights, story = demo_nights
    nights = nights / "reports"
    assert story.returncode == 0, story.stderr[-2000:]
    rails = json.loads((nights / "night1" / "summary.json").read_text())["findings"][0]
    assert (rails["true_label"], rails["predicted_label"]) == ("pool", "bathroom")

    summary_b = json.loads((nights / "night2" / "summary.json").read_text())
    assert rails["id"] in [r["id"] for r in summary_b["resolved"]]
    assert rails["id"] not in [f["id"] for f in summary_b["findings"]]
    compared = subprocess.run(audit_command("compare", nights / "night1", nights / "night2"), capture_output=True,
                              text=True, timeout=120)
    assert compared.returncode == 0 and f"resolved {rails['id']}: pool -> bathroom" in compared.stdout

    summary_c = json.loads((nights / "night3" / "summary.json").read_text())
    top = summary_c["findings"][0]
    assert summary_c["status"] == "fail"
    assert (top["id"], top["status"], top["triage"]) == (rails["id"], "new", None) and top["score"] > 0.2
    history = pd.read_parquet(nights / "history.parquet")
    assert sorted(set(history["run_id"])) == ["night1", "night2", "night3"]

    gate = ["--baseline", nights / "night2", "--set", "gates.max_new_finding_score=0.2"]
    triage = _triage(tmp_path, "findings: {}\n")
    c = _demo(tmp_path / "c", *gate, "--triage", triage)
    assert c.returncode == 1, c.stdout + c.stderr[-2000:]
    assert "gate failed: max_new_finding_score" in c.stdout
    _triage(tmp_path, f"findings:\n  {rails['id']}:\n    action: acknowledge\n    reason: known\n")
    c = _demo(tmp_path / "c", *gate, "--triage", triage)   # the complete run: gates and triage again
    assert c.returncode == 0, c.stdout + c.stderr[-2000:]
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["findings"][0]["triage"] == "acknowledged"
    history = pd.read_parquet(tmp_path / "history.parquet")
    assert history[history["run_id"] == "c"]["status"].eq("pass").all()


def test_baseline_latest_comes_from_the_history(tmp_path):
    first = _run_folder(tmp_path / "n1", "n1", [_entry("F-1")], [], 0.9)
    second = _run_folder(tmp_path / "n2", "n2", [_entry("F-2")], [], 0.9)
    for run, created in ((first, "2026-11-20T03:00:00+00:00"), (second, "2026-11-21T03:00:00+00:00")):
        summary = json.loads((run / "summary.json").read_text())
        nightly_history.append_history(tmp_path / "history.parquet", nightly_history.history_rows(summary, created, run))
    config = resolve(None, [], {"run_id": "n3", "out": str(tmp_path / "n3"), "baseline.run_dir": "latest"})
    assert nightly_baseline.resolve_baseline(config).run_id == "n2"
    config = resolve(None, [], {"run_id": "n2b", "out": str(second), "baseline.run_dir": "latest"})
    assert nightly_baseline.resolve_baseline(config).run_id == "n1"  # never the run folder itself
    config = resolve(None, [], {"run_id": "x", "out": str(tmp_path / "other" / "x"), "baseline.run_dir": "latest"})
    assert nightly_baseline.resolve_baseline(config) is None  # no history there: the first night has no baseline
    config = resolve(None, [], {"run_id": "n2", "out": str(second), "baseline.run_dir": str(second)})
    with pytest.raises(UsageError, match="is the run folder itself"):
        nightly_baseline.resolve_baseline(config)


@pytest.mark.slow
def test_demo_rails_id_survives_other_data_and_model(demo_nights, tmp_path):
    """Another seed draws other images and trains another model: the rails finding of the README's
    night 1 keeps its ID (and is matched as persisting); so does a run on 80% of the audit images."""
    a = demo_nights[0] / "reports" / "night1"
    rails = json.loads((a / "summary.json").read_text())["findings"][0]
    other = subprocess.run(audit_command("demo", "--seed", "1", "--cache", ROOT / "reports" / ".cache" / "demo-seed1",
                                         "--out", tmp_path / "seed1", "--baseline", a, "--quiet"),
                           capture_output=True, text=True, timeout=1800)
    assert other.returncode == 0, other.stderr[-2000:]
    top = json.loads((tmp_path / "seed1" / "summary.json").read_text())["findings"][0]
    assert (top["id"], top["status"], top["true_label"], top["predicted_label"]) == (
        rails["id"], "persisting", "pool", "bathroom")

    run = json.loads((a / "run.json").read_text())
    where = demo_nights[0]   # the night ran there: its run.json paths are relative to that folder
    data = where / run["data"]["path"]
    manifest = pd.read_csv(data)
    subset = manifest.sample(frac=0.8, random_state=0)
    subset["path"] = [str(data.parent / p) for p in subset["path"]]
    subset.to_csv(tmp_path / "subset.csv", index=False)
    part = subprocess.run(audit_command("run", "--model", where / run["model"]["path"], "--data", tmp_path / "subset.csv",
                                        "--classes", where / run["config"]["data"]["classes"], "--out", tmp_path / "part",
                                        "--quiet"), capture_output=True, text=True, timeout=1800)
    assert part.returncode == 0, part.stderr[-2000:]
    top = json.loads((tmp_path / "part" / "summary.json").read_text())["findings"][0]
    assert (top["id"], top["true_label"]) == (rails["id"], "pool")  # no baseline: equal by content alone


def test_progress_reports_stages_in_every_mode():
    import io

    from audit.progress import Progress, choose_mode

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert choose_mode("text", False, Tty()) == "bar" and choose_mode("text", False, io.StringIO()) == "text"
    assert choose_mode("json", False, Tty()) == "json" and choose_mode("json", True, Tty()) == "quiet"
    outputs = {}
    for mode in ("bar", "text", "json", "quiet"):
        out, err = io.StringIO(), Tty()
        log = Progress(mode, out, err)
        with log.stage("predict") as stage:
            stage.update(1, 4)
            log("warning: one image unreadable")
            stage.update(4, 4)
        with pytest.raises(RuntimeError), log.stage("attribute"):
            raise RuntimeError("boom")
        outputs[mode] = (out.getvalue(), err.getvalue())
    assert outputs["quiet"] == ("", "")
    text = outputs["text"][0].splitlines()
    assert [line[21:] for line in text] == ["[predict] start", "warning: one image unreadable",
                                            "[predict] done in 0.0 s (4 tasks)", "[attribute] start",
                                            "[attribute] failed after 0.0 s"]
    records = [json.loads(line) for line in outputs["json"][1].splitlines()]
    assert [(r["stage"], r["event"], r["level"]) for r in records] == [
        ("predict", "start", "info"), ("predict", "log", "warning"), ("predict", "end", "info"),
        ("attribute", "start", "info"), ("attribute", "failed", "error")]
    assert records[2]["tasks"] == 4
    bar = outputs["bar"][1]
    assert "[predict] " + "#" * 24 + " 4/4 tasks" in bar and "warning: one image unreadable\n" in bar
    assert outputs["bar"][0] == ""
