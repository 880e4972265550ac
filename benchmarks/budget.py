"""``--budget``: default audits that must end within their time budget, and the demo at small budgets.

1. The production benchmark's MobileNetV2 (``benchmarks/production.py``: alpha 1.0, 224x224,
   10 classes, batch norm calibrated and head fitted on the photos, about 85% of labels agree)
   on ``--images`` JPEGs of 1-2 megapixels, audited by ``audit run --budget B`` for each of
   ``--budgets`` with the default settings (only ``data.preprocess=tf``), one process per run,
   timed from outside (Python and TensorFlow start-up included, as a cron job sees it).
   Target: wall <= budget + 5%. Each row also gives the plan's estimate, what the costly
   methods explained, the later stages' caps and what the clock skipped (``plan.skipped``).
   ``none`` in ``--budgets`` runs once without a budget, for reference.
2. The planted-cue demo (``audit demo --budget B``; its clock starts once data and model
   are ready) at each of ``--demo-budgets``: whether the plan says the budget covers the run
   (its estimate within the budget, no "too small" warning) and whether finding #1 is
   pool -> bathroom. Target: at the smallest budget the plan says covers the run, it is.

Writes ``budget.json`` and ``budget.md`` into ``--out`` and prints them; exits 1 when a target
is missed. GPU figures are not measured here.

    python benchmarks/budget.py --out benchmarks/results [--images 2000] [--budgets none,5m,10m,20m]
        [--demo-budgets 10s,20s,30s,45s,60s] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from production import MODELS, prepared  # noqa: E402

from audit.config.checks import seconds_of  # noqa: E402

OVERSHOOT = 1.05
DEMO_PAIR = ("pool", "bathroom")


def _audit(args: list[str], log: Path) -> tuple[float, int]:
    """Run ``audit <args>`` in a child process (its output into ``log``): (wall seconds, exit code)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, "-m", "audit.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                               cwd=Path(__file__).resolve().parents[1])
    return time.perf_counter() - start, code


def _plan_facts(run_dir: Path) -> dict:
    """What ``run.json``'s plan says: estimate, costly images per method, caps, skipped work."""
    record = json.loads((run_dir / "run.json").read_text())
    plan = record.get("plan") or {}
    costly = [m for m in plan.get("methods", []) if m not in plan.get("full", [])]
    return {"estimate_s": plan.get("estimate"), "caps": plan.get("caps") or {},
            "costly_images": {m: sum(g["counts"][m] for g in plan.get("groups", [])) for m in costly},
            "full_images": {m: sum(g["counts"][m] for g in plan.get("groups", [])) for m in plan.get("full", [])},
            "skipped": plan.get("skipped") or [], "stages_s": round(sum(record.get("timings", {}).values()), 1)}


def production_runs(work: Path, n: int, budgets: list[str]) -> list[dict]:
    """One default ``audit run`` of the MobileNetV2 set per budget (``none``: without one)."""
    model, manifest, classes, _ = prepared("mobilenetv2", n, work, reuse=True)
    rows = []
    for budget in budgets:
        run_dir = work / "budget-runs" / budget
        shutil.rmtree(run_dir, ignore_errors=True)   # a fresh run, not a resumed one
        args = ["run", "--model", str(model), "--data", str(manifest), "--classes", str(classes),
                "--set", f"data.preprocess={MODELS['mobilenetv2'][1]}", "--out", str(run_dir)]
        if budget != "none":
            args += ["--budget", budget]
        load = os.getloadavg()[0]
        wall, code = _audit(args, work / f"budget-{budget}.log")
        row = {"budget": budget, "budget_s": None if budget == "none" else seconds_of(budget), "exit": code,
               "wall_s": round(wall, 1), "load_at_start": round(load, 2), **_plan_facts(run_dir)}
        row["wall_over_budget"] = round(wall / row["budget_s"], 3) if row["budget_s"] else None
        row["met"] = code in (0, 1) and (row["budget_s"] is None or wall <= row["budget_s"] * OVERSHOOT)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def demo_runs(work: Path, budgets: list[str]) -> list[dict]:
    """``audit demo --budget B`` per budget: does the plan cover the run, is finding #1 pool -> bathroom."""
    rows = []
    for budget in budgets:
        out = work / "demo-runs" / budget
        shutil.rmtree(out, ignore_errors=True)
        wall, code = _audit(["demo", "--out", str(out), "--budget", budget], work / f"demo-{budget}.log")
        facts = _plan_facts(out)
        findings = json.loads((out / "summary.json").read_text())["findings"]
        first = findings[0] if findings else {}
        covered = facts["estimate_s"] is not None and facts["estimate_s"] <= seconds_of(budget)
        row = {"budget": budget, "exit": code, "wall_s": round(wall, 1), **facts, "plan_covers": covered,
               "finding_1": f"{first.get('true_label')} -> {first.get('predicted_label')}" if first else None,
               "pair_at_rank_1": (first.get("true_label"), first.get("predicted_label")) == DEMO_PAIR}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = ["# `--budget`: default audits within their time budget", "",
             f"{result['machine']}. MobileNetV2 224 px (the production benchmark's model), {result['images']} "
             f"JPEGs of 1-2 megapixels, default settings, `audit run --budget B` timed from outside the process "
             f"(start-up included). Target: wall <= budget x {OVERSHOOT}.", "",
             "| budget | wall s | wall/budget | met | stages s | plan estimate s | costly images | caps | skipped | "
             "load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["production"]:
        costly = ", ".join(f"{m} {c}" for m, c in r["costly_images"].items()) or "-"
        caps = ", ".join(f"{k} {v}" for k, v in r["caps"].items()) or "-"
        skipped = "; ".join(map(str, r["skipped"])) or "-"
        lines.append(f"| {r['budget']} | {r['wall_s']} | {r['wall_over_budget']} | {'yes' if r['met'] else 'NO'} | "
                     f"{r['stages_s']} | {r['estimate_s']} | {costly} | {caps} | {skipped} | {r['load_at_start']} |")
    lines += ["", "The demo (`audit demo --budget B`; its clock starts once data and model are ready):", "",
              "| budget | plan estimate s | plan covers the run | finding #1 | pool -> bathroom at #1 | stages s |",
              "|---|---|---|---|---|---|"]
    for r in result["demo"]:
        lines.append(f"| {r['budget']} | {r['estimate_s']} | {'yes' if r['plan_covers'] else 'no'} | "
                     f"{r['finding_1']} | {'yes' if r['pair_at_rank_1'] else 'no'} | {r['stages_s']} |")
    lines += ["", "Targets: " + "; ".join(result["targets"]), "", "GPU figures are not measured here."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "benchmarks" / "results"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--budgets", default="5m,10m,20m")
    parser.add_argument("--demo-budgets", default="10s,20s,30s,45s,60s")
    parser.add_argument("--work", default=None, help="folder for the photos, model and runs (shared with "
                                                      "benchmarks/production.py's --work; default: a temporary one)")
    args = parser.parse_args()
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="budget-bench-") as tmp:
            return _all(args, Path(tmp))
    return _all(args, Path(args.work))


def _all(args, work: Path) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    production = production_runs(work, args.images, args.budgets.split(","))
    demo = demo_runs(work, args.demo_budgets.split(","))
    covered = [r for r in demo if r["plan_covers"]]
    smallest = min(covered, key=lambda r: seconds_of(r["budget"])) if covered else None
    targets = [f"{r['budget']}: wall/budget {r['wall_over_budget']} {'met' if r['met'] else 'NOT met'}"
               for r in production if r["budget_s"]]
    targets.append("demo: no budget tried is covered by the plan" if smallest is None else
                   f"demo: smallest covered budget {smallest['budget']}, finding #1 {smallest['finding_1']} "
                   f"{'met' if smallest['pair_at_rank_1'] else 'NOT met'}")
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU (GPU figures not measured)",
              "images": args.images, "production": production, "demo": demo, "targets": targets}
    (out / "budget.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "budget.md").write_text(text)
    print(text)
    if not all(r["met"] for r in production) or smallest is None or not smallest["pair_at_rank_1"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
