"""Soak benchmark: a month of nights into one history (issue 18, item 4).

Runs ``--nights`` (default 30) nightly audits of the demo into ``--work``, each
``audit demo --baseline latest --triage triage.yaml`` into ``night-NN/`` with one
shared ``history.parquet`` beside them. The model alternates every ``--period``
nights between the demo's biased model (rails on 87% of bathrooms) and a cleaner
one (``--clean-rate``, 5%), so the rails finding appears, persists, resolves and
comes back. ``triage.yaml`` acknowledges the first night's top finding with an
``expires`` date the harness moves: tomorrow until night ``--expire``, then today
(an entry is ignored from its ``expires`` day on), so the acknowledgement lapses.

After every night it times the trend section (``audit.report.trend.section`` on a
freshly loaded run, best of 3); after the last night it recounts from the run
folders and checks that

* ``history.parquet`` holds, per night, exactly the rows ``summary.json`` implies
  (one per confusion pair; its ``n_confused``, ``error_rate`` and ``n_findings``);
* ``audit compare`` of the last two nights agrees with the last summary's
  ``status`` of each finding and its ``resolved`` list;
* finding IDs are stable: every biased night's top finding carries one ID;
* triage: the acknowledgement shows while in force and not after it expired.

Acceptance: all checks hold; trend time at night 30 <= 1.5x night 2's.

    python benchmarks/soak.py [--nights 30] [--work /tmp/soak] [--out benchmarks/results]
        [--set key=value ...]   (passed to every night, e.g. to drop trust for speed)

Writes ``soak.json`` and ``soak.md`` into ``--out``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.nightly.compare import compare  # noqa: E402
from audit.report.assets import Assets  # noqa: E402
from audit.report.loading import Run  # noqa: E402
from audit.report.trend import section as trend_section  # noqa: E402

LIMIT_RATIO = 1.5


def night_dir(work: Path, night: int) -> Path:
    return work / f"night-{night:02d}"


def biased(night: int, period: int) -> bool:
    """Whether ``night`` (from 1) audits the biased model: ``period`` nights on, ``period`` off."""
    return ((night - 1) // period) % 2 == 0


def write_triage(path: Path, finding_id: str | None, in_force: bool) -> None:
    today = _dt.datetime.now(_dt.timezone.utc).date()
    expires = today + _dt.timedelta(days=1) if in_force else today
    entries = {} if finding_id is None else {finding_id: {"action": "acknowledge", "reason": "soak: known rails",
                                                          "expires": expires.isoformat()}}
    path.write_text(json.dumps({"findings": entries}) + "\n")   # JSON is YAML


def run_night(args, night: int, triage: Path) -> dict:
    out = night_dir(args.work, night)
    shutil.rmtree(out, ignore_errors=True)
    rate = [] if biased(night, args.period) else ["--rail-rate", str(args.clean_rate)]
    cmd = [sys.executable, "-m", "audit.cli", "demo", "--cache", str(args.cache), "--out", str(out), *rate,
           "--set", f"run_id=night-{night:02d}", "--triage", str(triage), "--quiet",
           *(["--baseline", "latest"] if night > 1 else [])]
    for item in args.set:
        cmd += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"night {night} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return {"night": night, "biased": biased(night, args.period), "exit": done.returncode,
            "run_seconds": round(seconds, 1), "summary": json.loads((out / "summary.json").read_text())}


def trend_seconds(run_dir: Path, repeats: int = 3) -> tuple[float, int]:
    """Best-of time of the trend section on a freshly loaded run, and how many nights it plots."""
    best, nights = float("inf"), 0
    for _ in range(repeats):
        run = Run.load(run_dir)
        start = time.perf_counter()
        trend_section(run, Assets(run_dir, "single"))
        best = min(best, time.perf_counter() - start)
        nights = int(run.history["run_id"].nunique()) if run.history is not None else 0
    return best, nights


def recount(work: Path, nights: list[dict]) -> dict:
    """Checks of the history, compare, IDs and triage against the run folders."""
    history = pd.read_parquet(work / "history.parquet")
    problems = []
    for n in nights:
        s = n["summary"]
        rows = history[history["run_id"] == s["run_id"]]
        pairs = s.get("pairs") or []
        if len(rows) != max(len(pairs), 1):
            problems.append(f"{s['run_id']}: {len(rows)} history rows for {len(pairs)} pairs")
        for p in pairs:
            row = rows[(rows["true_label"] == p["true_label"]) & (rows["predicted_label"] == p["predicted_label"])]
            n_findings = sum((f["true_label"], f["predicted_label"]) == (p["true_label"], p["predicted_label"])
                             for f in s["findings"])
            if len(row) != 1 or int(row["n_confused"].iloc[0]) != p["n_confused"] \
                    or abs(float(row["error_rate"].iloc[0]) - p["error_rate"]) > 1e-12 \
                    or int(row["n_findings"].iloc[0]) != n_findings:
                problems.append(f"{s['run_id']} {p['true_label']}->{p['predicted_label']}: history differs")
    a, b = night_dir(work, nights[-2]["night"]), night_dir(work, nights[-1]["night"])
    diff = compare(a, b)
    last = nights[-1]["summary"]
    statuses = {f["id"]: f.get("status") for f in last["findings"]}
    want_new = sorted(i for i, st in statuses.items() if st == "new")
    got_new = sorted(f["id"] for f in diff["findings"]["new"])
    want_resolved = sorted(f["id"] for f in last.get("resolved") or [])
    got_resolved = sorted(f["id"] for f in diff["findings"]["resolved"])
    if got_new != want_new or got_resolved != want_resolved:
        problems.append(f"compare {a.name} {b.name}: new {got_new} resolved {got_resolved}; summary says new "
                        f"{want_new} resolved {want_resolved}")
    top_ids = sorted({n["summary"]["findings"][0]["id"] for n in nights if n["biased"] and n["summary"]["findings"]})
    if len(top_ids) != 1:
        problems.append(f"the biased nights' top finding has {len(top_ids)} IDs: {top_ids}")
    return {"history_rows": int(len(history)), "history_runs": int(history["run_id"].nunique()),
            "compare": {"a": a.name, "b": b.name, "new": got_new, "persisting": len(diff["findings"]["persisting"]),
                        "resolved": got_resolved},
            "top_finding_ids": top_ids, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--period", type=int, default=4, help="nights per model before switching")
    parser.add_argument("--expire", type=int, default=12, help="the first night the acknowledgement has expired")
    parser.add_argument("--clean-rate", type=float, default=0.05)
    parser.add_argument("--work", type=Path, default=Path("/tmp/soak"))
    parser.add_argument("--cache", type=Path, default=ROOT / "reports" / ".cache" / "demo")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "history.parquet").unlink(missing_ok=True)
    triage = args.work / "triage.yaml"
    write_triage(triage, None, True)
    acknowledged, nights = None, []
    for night in range(1, args.nights + 1):
        if acknowledged is not None:
            write_triage(triage, acknowledged, night < args.expire)
        n = run_night(args, night, triage)
        n["trend_s"], n["trend_nights"] = trend_seconds(night_dir(args.work, night))
        findings = n["summary"]["findings"]
        if acknowledged is None and findings:
            acknowledged = findings[0]["id"]
        n["top"] = {k: findings[0].get(k) for k in ("id", "status", "triage", "score")} if findings else None
        n["n_findings"], n["n_resolved"] = len(findings), len(n["summary"].get("resolved") or [])
        nights.append(n)
        args.out.mkdir(parents=True, exist_ok=True)   # progress so far, in case the soak is stopped
        (args.out / "soak.json").write_text(json.dumps({"nights_done": night, "per_night": [
            {k: v for k, v in m.items() if k != "summary"} for m in nights]}, indent=2) + "\n")
        print(f"night {night:2d} ({'biased' if n['biased'] else 'clean '}): exit {n['exit']}, "
              f"{n['run_seconds']:.0f} s, {n['n_findings']} finding(s), top {n['top']}, "
              f"{n['n_resolved']} resolved, trend {n['trend_s'] * 1000:.1f} ms over {n['trend_nights']} nights",
              flush=True)
    checks = recount(args.work, nights) if len(nights) >= 2 else {"problems": ["fewer than two nights"]}
    ack_seen = [n["night"] for n in nights if n["top"] and n["top"]["triage"] == "acknowledged"]
    lapsed = [n for n in ack_seen if n >= args.expire]
    if lapsed:
        checks["problems"].append(f"acknowledged after it expired on nights {lapsed}")
    ratio = nights[-1]["trend_s"] / nights[1]["trend_s"] if len(nights) >= 2 else None
    result = {"nights": args.nights, "period": args.period, "expire": args.expire, "settings": args.set,
              "acknowledged": acknowledged, "acknowledged_on_nights": ack_seen,
              "trend_ratio_last_to_night2": None if ratio is None else round(ratio, 3), "limit_ratio": LIMIT_RATIO,
              "passed": not checks["problems"] and ratio is not None and ratio <= LIMIT_RATIO,
              "checks": checks,
              "per_night": [{k: v for k, v in n.items() if k != "summary"} for n in nights]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| night | model | exit | run s | findings | top finding | status | triage | resolved | trend ms |",
             "| ---: | --- | ---: | ---: | ---: | --- | --- | --- | ---: | ---: |"]
    for n in result["per_night"]:
        top = n["top"] or {}
        lines.append(f"| {n['night']} | {'biased' if n['biased'] else 'clean'} | {n['exit']} | {n['run_seconds']:.0f} "
                     f"| {n['n_findings']} | {top.get('id') or '—'} | {top.get('status') or '—'} "
                     f"| {top.get('triage') or '—'} | {n['n_resolved']} | {n['trend_s'] * 1000:.1f} |")
    lines += ["", f"Trend at night {args.nights} / night 2: {result['trend_ratio_last_to_night2']} "
              f"(limit {LIMIT_RATIO}). History: {checks.get('history_rows')} rows over {checks.get('history_runs')} "
              f"runs. Compare {checks.get('compare')}. Problems: {checks['problems'] or 'none'}.", ""]
    (args.out / "soak.md").write_text("\n".join(lines))
    print("\n".join(lines[-2:]))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
