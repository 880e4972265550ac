"""``audit compare RUN_A RUN_B``: findings new / persisting / resolved, gates, metrics, pair error rates."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from audit import artifacts
from audit.errors import UsageError
from audit.integrity import write_atomic
from audit.nightly.baseline import baseline_findings, match
from audit.nightly.runs import read_run


def compare(run_a: str | Path, run_b: str | Path, tolerance: float = 0.15, focus_tolerance: float = 0.5,
            min_overlap: float = 0.5) -> dict:
    """The diff of two run folders: findings new / persisting / resolved, gates, metrics, pairs.

    Parameters
    ----------
    run_a, run_b : str or Path
        The earlier and the later finished run folder.
    tolerance, focus_tolerance, min_overlap : float
        Finding matching, as in ``audit.nightly.baseline.match`` (the ``baseline.*`` settings).

    Raises
    ------
    UsageError
        When a folder is not a finished run.
    """
    a, b = read_run(run_a), read_run(run_b)
    old = [f for f in a.summary["findings"] if isinstance(f, dict)]
    new = [f for f in b.summary["findings"] if isinstance(f, dict)]
    matched = match(baseline_findings(b), baseline_findings(a), tolerance, focus_tolerance, min_overlap)
    used = set(matched.values())

    def brief(f: dict) -> dict:
        return {"id": f.get("id"), "true_label": f.get("true_label"), "predicted_label": f.get("predicted_label"),
                "size": f.get("size"), "score": f.get("score"), "triage": f.get("triage")}

    persisting = []
    for i, j in sorted(matched.items()):
        f, g = new[i], old[j]
        persisting.append({**brief(f), "id_a": g.get("id"), "size_a": g.get("size"), "score_a": g.get("score"),
                           "size_change": _delta(f.get("size"), g.get("size")),
                           "score_change": _delta(f.get("score"), g.get("score"))})
    metrics = {}
    ma, mb = a.summary.get("metrics") or {}, b.summary.get("metrics") or {}
    for key in sorted(set(ma) | set(mb)):
        metrics[key] = {"a": ma.get(key), "b": mb.get(key), "change": _delta(mb.get(key), ma.get(key))}
    rates_a = {(p["true_label"], p["predicted_label"]): p for p in a.pairs}
    rates_b = {(p["true_label"], p["predicted_label"]): p for p in b.pairs}
    pairs = []
    for key in sorted(set(rates_a) | set(rates_b)):
        ra = (rates_a.get(key) or {}).get("error_rate")
        rb = (rates_b.get(key) or {}).get("error_rate")
        ra = 0.0 if ra is None and key in rates_b else ra
        rb = 0.0 if rb is None and key in rates_a else rb
        pairs.append({"true_label": key[0], "predicted_label": key[1], "error_rate_a": ra, "error_rate_b": rb,
                      "change": _delta(rb, ra)})
    pairs.sort(key=lambda p: -abs(p["change"] or 0.0))
    return {
        "a": {"run_id": a.run_id, "run_dir": str(a.run_dir), "status": a.summary.get("status")},
        "b": {"run_id": b.run_id, "run_dir": str(b.run_dir), "status": b.summary.get("status")},
        "findings": {
            "new": [brief(f) for i, f in enumerate(new) if i not in matched],
            "persisting": persisting,
            "resolved": [brief(g) for j, g in enumerate(old) if j not in used],
        },
        "gates": {"a": a.summary.get("gates") or [], "b": b.summary.get("gates") or []},
        "metrics": metrics,
        "pairs": pairs,
    }


def _delta(b: Any, a: Any) -> float | None:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return None
    return round(float(b) - float(a), 6)


def compare_markdown(diff: dict) -> str:
    """The ``diff`` of ``compare`` as markdown (also what ``audit compare`` prints)."""
    a, b = diff["a"], diff["b"]
    lines = [f"# Compare {a['run_id']} -> {b['run_id']}", "",
             f"status: {a['status']} -> {b['status']}  ", f"A: {a['run_dir']}  ", f"B: {b['run_dir']}", "",
             "## Findings", ""]
    groups = diff["findings"]
    if not any(groups.values()):
        lines.append("no findings in either run")
    for f in groups["new"]:
        lines.append(f"- new {f['id']}: {f['true_label']} -> {f['predicted_label']}, {f['size']} images, "
                     f"score {_num(f['score'])}" + (f" ({f['triage']})" if f.get("triage") else ""))
    for f in groups["persisting"]:
        renamed = f" (was {f['id_a']})" if f["id_a"] != f["id"] else ""
        lines.append(f"- persisting {f['id']}{renamed}: {f['true_label']} -> {f['predicted_label']}, "
                     f"size {f['size_a']} -> {f['size']}, score {_num(f['score_a'])} -> {_num(f['score'])}")
    for f in groups["resolved"]:
        lines.append(f"- resolved {f['id']}: {f['true_label']} -> {f['predicted_label']}, was {f['size']} images, "
                     f"score {_num(f['score'])}")
    lines += ["", "## Gates", ""]
    gates_a = {g.get("name"): g for g in diff["gates"]["a"]}
    if not diff["gates"]["b"] and not gates_a:
        lines.append("no gates configured")
    for g in diff["gates"]["b"]:
        before = gates_a.get(g.get("name"))
        was = f" (A: {_num(before.get('value'))})" if before else ""
        lines.append(f"- {g.get('name')}: {'pass' if g.get('passed') else 'FAIL'}, {_num(g.get('value'))} "
                     f"vs threshold {_num(g.get('threshold'))}{was}")
    lines += ["", "## Metrics", "", "| metric | A | B | change |", "| --- | --- | --- | --- |"]
    for key, m in diff["metrics"].items():
        lines.append(f"| {key} | {_num(m['a'])} | {_num(m['b'])} | {_signed(m['change'])} |")
    lines += ["", "## Error rate per confusion pair", ""]
    if diff["pairs"]:
        lines += ["| true -> predicted | A | B | change |", "| --- | --- | --- | --- |"]
    else:
        lines.append("no confusions in either run")
    for p in diff["pairs"]:
        lines.append(f"| {p['true_label']} -> {p['predicted_label']} | {_num(p['error_rate_a'])} | "
                     f"{_num(p['error_rate_b'])} | {_signed(p['change'])} |")
    return "\n".join(lines) + "\n"


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.4g}"


def write_compare(diff: dict, out: Path) -> tuple[Path, Path]:
    """Write ``compare.json`` and ``compare.md`` of ``diff`` into the folder ``out``; return their paths."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out / "compare.json", out / "compare.md"
        artifacts.write_json(json_path, diff)
        write_atomic(md_path, compare_markdown(diff))
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write the comparison ({exc.strerror})") from None
    return json_path, md_path
