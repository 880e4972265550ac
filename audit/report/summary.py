"""The summary a reader sees first: verdict, gates, headline metrics, top findings, changes since the baseline.

``summary_view(run)`` is the context of the summary section and also the
source of ``summary.md`` and ``junit.xml`` (``audit.report.outputs``), so the three
always agree.
"""
from __future__ import annotations

from audit import verdict as verdict_module
from audit.report import findings as findings_module
from audit.report.assets import Assets
from audit.report.fmt import correct_mask, finite, fmt_num, fmt_pct, readable_mask, str_or_none
from audit.report.loading import Run

TOP_FINDINGS = 5
MAX_PAIR_CHANGES = 10


def section(run: Run, assets: Assets) -> dict:
    """The summary view of ``run`` plus ``top``: the first ``TOP_FINDINGS`` finding views with their pictures
    (drawn into ``assets`` once, shared with the findings section)."""
    view = summary_view(run)
    found = findings_module.views(run, assets)
    view["top"] = [{**f, "sentence": t["sentence"], "trust_text": t["trust_text"], "trust_level": t["trust_level"]}
                   for f, t in zip(found[:TOP_FINDINGS], view["top_findings"])]
    return view


def summary_view(run: Run) -> dict:
    """Verdict, gates, metrics, top findings (no pictures) and changes since the baseline, of the loaded ``run``."""
    s = run.summary
    status = str(s.get("status") or "unknown").lower()
    gates = [{"name": str(g.get("name", "?")), "value": g.get("value"), "threshold": g.get("threshold"),
              "passed": g.get("passed")} for g in s.get("gates") or [] if isinstance(g, dict)]
    model, data = run.run.get("model") or {}, run.run.get("data") or {}
    top = []
    for f in run.findings[:TOP_FINDINGS]:
        top.append({"id": f["id"], "anchor": f["anchor"], "rank": f["rank"], "true_label": f["true_label"],
                    "predicted_label": f["predicted_label"], "size": f["size"], "score": f["score"],
                    "status": f["status"], "triage": f["triage"], "sentence": verdict_module.describe(f["raw"]),
                    "trust_text": (f["raw"].get("trust") or {}).get("text"),
                    "trust_level": (f["raw"].get("trust") or {}).get("level"),
                    "verification": findings_module.verification_text(
                        findings_module.verification(f["raw"]))})
    return {
        "verdict": verdict_of(run),
        "soundness": [c for c in s.get("soundness") or [] if isinstance(c, dict) and c.get("ok") is False],
        "triage_expired": [e for e in s.get("triage_expired") or [] if isinstance(e, dict)],
        "report": s.get("report"),
        "run_id": str(s.get("run_id") or run.run.get("run_id") or run.dir.name),
        "created": run.run.get("created"),
        "status": status if status in ("pass", "fail") else "unknown",
        "gates": gates,
        "failed_gates": [g["name"] for g in gates if g["passed"] is False],
        "model_name": _name(model.get("path")), "data_name": _name(data.get("path")),
        "metrics": _metrics(run),
        "n_findings": len(run.findings),
        "top_findings": top,
        "changes": changes(run),
        "not_computed": [str(line) for line in run.run.get("not_computed") or []],
    }


def verdict_of(run: Run) -> dict:
    """summary.json's ``verdict`` of ``run``; for a run written before it existed, the same from its findings."""
    v = run.summary.get("verdict")
    if isinstance(v, dict) and v.get("state") in verdict_module.STATES and v.get("text"):
        return v
    findings = [f for f in run.summary.get("findings") or [] if isinstance(f, dict)]
    return verdict_module.verdict(findings, run.summary.get("soundness"), run.config.trust.min_size)


def _name(path) -> str | None:
    return str(path).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] if path else None


def _metrics(run: Run) -> list[dict]:
    m = dict(run.summary.get("metrics") or {})
    pred = run.predictions
    if pred is not None:  # fall back on the predictions when the summary lacks a metric
        readable = readable_mask(pred)
        m.setdefault("n_images", len(pred))
        m.setdefault("n_unreadable", int((~readable).sum()))
        if readable.any():
            m.setdefault("accuracy", float(correct_mask(pred)[readable].mean()))
    return [
        {"label": "images", "value": fmt_num(m.get("n_images")), "key": "n_images", "warn": False},
        {"label": "unreadable", "value": fmt_num(m.get("n_unreadable")), "key": "n_unreadable",
         "warn": bool(finite(m.get("n_unreadable")))},
        {"label": "accuracy", "value": fmt_pct(m.get("accuracy")), "key": "accuracy", "warn": False},
        {"label": "selected", "value": fmt_num(m.get("n_selected")), "key": "n_selected", "warn": False},
        {"label": "findings", "value": fmt_num(len(run.findings)), "key": "n_findings", "warn": False},
    ]


def changes(run: Run) -> dict:
    """What changed since the baseline run, from ``run``'s summary.json: ``baseline``, finding ``status``,
    ``resolved`` and ``pairs`` (written by the nightly comparison); ``has_baseline`` False without one.
    Error rates are shares 0..1; ``pairs`` lists at most ``MAX_PAIR_CHANGES``, largest change first."""
    s = run.summary
    base = s.get("baseline") if isinstance(s.get("baseline"), dict) else None
    if base is None:
        return {"has_baseline": False}
    new = [f for f in run.findings if f["status"] == "new"]
    persisting = [f for f in run.findings if f["status"] == "persisting"]
    resolved = [{"id": str(r.get("id", "?")), "true_label": str(r.get("true_label", "")),
                 "predicted_label": str(r.get("predicted_label", "")), "size": r.get("size"),
                 "score": r.get("score")} for r in s.get("resolved") or [] if isinstance(r, dict)]
    anchors = {(p["true_label"], p["predicted_label"]): p["anchor"] for p in run.pairs}
    moved = []
    for p in s.get("pairs") or []:
        if not isinstance(p, dict):
            continue
        now, before = finite(p.get("error_rate")), finite(p.get("baseline_error_rate"))
        if now is None or (before is not None and abs(now - before) < 1e-9) or (before is None and now == 0):
            continue
        t, q = str(p.get("true_label", "")), str(p.get("predicted_label", ""))
        moved.append({"true_label": t, "predicted_label": q, "error_rate": now, "baseline_error_rate": before,
                      "delta": None if before is None else now - before, "anchor": anchors.get((t, q))})
    moved.sort(key=lambda p: -abs(p["delta"]) if p["delta"] is not None else -p["error_rate"])
    return {"has_baseline": True, "run_id": str_or_none(base.get("run_id")) or "?",
            "run_dir": str_or_none(base.get("run_dir")),
            "new": [_brief(f) for f in new], "persisting": [_brief(f) for f in persisting],
            "resolved": resolved, "pairs": moved[:MAX_PAIR_CHANGES], "n_pairs_changed": len(moved),
            "suppressed": sum(1 for f in run.findings if f["triage"] == "suppressed"),
            "acknowledged": sum(1 for f in run.findings if f["triage"] == "acknowledged")}


def _brief(f: dict) -> dict:
    return {k: f[k] for k in ("id", "anchor", "true_label", "predicted_label", "size", "score", "triage")}
