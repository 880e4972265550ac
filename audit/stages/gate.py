"""Gate: metrics, per-pair error rates, gates and findings into ``summary.json`` (the stable contract).

Gates come from config (``gates.*``; ``null`` disables one). The run's status is
``fail`` when any gate fails, and the CLI then exits with code 1.

* ``max_error_rate``: ``1 - accuracy`` over the readable images.
* ``max_finding_score``: the highest score of a finding not suppressed by triage.
* ``max_new_finding_score``: the highest score of a ``new`` finding neither
  acknowledged nor suppressed (without a baseline every finding is new).
* ``max_pair_error_rate_increase``: the largest rise of a confusion pair's error
  rate over the baseline's (only with a baseline).
* ``min_verification_lift``: the largest verified causal lift (``causal``) of a
  finding not suppressed; fails when it reaches the threshold, i.e. when a cue is
  confirmed by intervention with at least that lift.
* ``max_unreadable_rate`` (on by default, 0.05): the share of images that could not
  be read.
* ``soundness``: the soundness checks (``audit.soundness``) named here fail the run
  when they warn; each is a gate ``soundness.<check>`` (value 1 when it warns).

The summary also carries the ``verdict`` in words (``audit.verdict``) and every
soundness check's record; they say what was found and whether the audit is sound,
whatever the gates decide.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from audit.config import Config
from audit.findings import Finding
from audit.soundness import soundness
from audit.verdict import verdict

SCHEMA_VERSION = 2


def pair_rates(predictions: pd.DataFrame) -> list[dict]:
    """Every off-diagonal confusion pair with at least one image: ``true_label, predicted_label,
    n_true`` (readable images labelled ``true_label``), ``n_confused`` (of those predicted
    ``predicted_label``) and ``error_rate = n_confused / n_true`` (0..1); sorted by pair. ``predictions``: the
    predict stage's table (``label``, ``predicted``, ``error``)."""
    valid = predictions[predictions["error"].isna()]
    labels = valid["label"].astype(str)
    n_true = labels.value_counts()
    confused = valid[labels != valid["predicted"].astype(str)]
    counts = confused.groupby([confused["label"].astype(str), confused["predicted"].astype(str)]).size()
    return [{"true_label": t, "predicted_label": p, "n_true": int(n_true[t]), "n_confused": int(n),
             "error_rate": round(float(n) / int(n_true[t]), 6)} for (t, p), n in sorted(counts.items())]


def merge_pairs(current: list[dict], baseline: list[dict] | None, n_true: dict[str, int]) -> list[dict]:
    """This run's pairs plus the baseline's (``n_confused`` 0 here), each with ``baseline_error_rate``:
    the baseline's rate, 0.0 for a pair the baseline did not confuse, None without a baseline.

    ``current`` and ``baseline`` are ``pair_rates`` lists (``baseline`` None: no baseline);
    ``n_true`` counts this run's readable images per label, for pairs only the baseline has."""
    here = {(p["true_label"], p["predicted_label"]): p for p in current}
    before = {(p["true_label"], p["predicted_label"]): p for p in baseline or []}
    out = []
    for key in sorted(set(here) | set(before)):
        p = dict(here.get(key) or {"true_label": key[0], "predicted_label": key[1], "n_true": int(n_true.get(key[0], 0)),
                                   "n_confused": 0, "error_rate": 0.0})
        p["baseline_error_rate"] = None if baseline is None else float(before[key]["error_rate"]) if key in before else 0.0
        out.append(p)
    return out


def verification_lift(finding: Finding) -> float:
    """The verified causal lift (``causal``) of ``finding``, 0 when it was not verified."""
    verified = finding.verification is not None and finding.verification.verified
    return float(finding.causal or 0.0) if verified else 0.0


def per_class(predictions: pd.DataFrame) -> dict[str, dict]:
    """Precision, recall and F1 (0..1) of every class over the readable rows of ``predictions`` (None where
    undefined):
    ``{class: {"n": labelled, "precision", "recall", "f1"}}``, classes sorted."""
    valid = predictions[predictions["error"].isna()]
    labels, predicted = valid["label"].astype(str).to_numpy(), valid["predicted"].astype(str).to_numpy()
    out = {}
    for name in sorted(set(labels) | set(predicted)):
        tp = int(np.sum((labels == name) & (predicted == name)))
        n_true, n_pred = int(np.sum(labels == name)), int(np.sum(predicted == name))
        precision = tp / n_pred if n_pred else None
        recall = tp / n_true if n_true else None
        f1 = (2 * precision * recall / (precision + recall) if precision and recall else
              0.0 if precision is not None and recall is not None else None)
        out[name] = {"n": n_true, "precision": _round(precision), "recall": _round(recall), "f1": _round(f1)}
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def summarize(config: Config, predictions: pd.DataFrame, selection: pd.DataFrame, findings: list[Finding],
              baseline=None, resolved: list[dict] | tuple = (), created: str | None = None,
              triage_expired: list[dict] | tuple = ()) -> dict:
    """The summary of a run (``summary.json`` without the trust figures).

    Parameters
    ----------
    config : Config
        ``run_id``, the ``gates.*`` thresholds, ``soundness.*`` and ``trust.min_size``.
    predictions, selection : pd.DataFrame
        The predict and select stage tables.
    findings : list of Finding
        Ranked, carrying their ``status`` and ``triage``.
    baseline : audit.nightly.runs.Run, optional
        The baseline run (its pairs' error rates), or None.
    resolved : list of dict
        The baseline's findings that are no longer present.
    created : str, optional
        The run's start (ISO 8601).
    triage_expired : list of dict
        Triage entries no longer in force (``id``, ``action``, ``reason``, ``owner``, ``expires``).
    """
    valid = predictions[predictions["error"].isna()]
    accuracy = float((valid["predicted"] == valid["label"]).mean()) if len(valid) else 0.0
    metrics = {
        "n_images": int(len(predictions)),
        "n_unreadable": int(predictions["error"].notna().sum()),
        "accuracy": round(accuracy, 6),
        "n_selected": int((selection["reason"] != "contrast").sum()),
        "n_misclassified": int((selection["reason"] == "misclassified").sum()),
        "n_low_confidence": int((selection["reason"] == "low_confidence").sum()),
    }
    n_true = valid["label"].astype(str).value_counts().to_dict()
    pairs = merge_pairs(pair_rates(predictions), baseline.pairs if baseline is not None else None, n_true)
    gated = [f for f in findings if f.triage != "suppressed"]
    gates = []

    def gate(name: str, value: float, passed: bool) -> None:
        gates.append({"name": name, "passed": bool(passed), "value": round(float(value), 6),
                      "threshold": getattr(config.gates, name)})

    if config.gates.max_error_rate is not None:
        value = 1.0 - accuracy
        gate("max_error_rate", value, round(value, 6) <= config.gates.max_error_rate)
    if config.gates.max_finding_score is not None:
        value = max((f.score for f in gated), default=0.0)
        gate("max_finding_score", value, value <= config.gates.max_finding_score)
    if config.gates.max_new_finding_score is not None:
        value = max((f.score for f in gated if f.status == "new" and f.triage is None), default=0.0)
        gate("max_new_finding_score", value, value <= config.gates.max_new_finding_score)
    if config.gates.max_pair_error_rate_increase is not None and baseline is not None:
        rises = [p["error_rate"] - p["baseline_error_rate"] for p in pairs if p["baseline_error_rate"] is not None]
        value = max(rises, default=0.0)
        gate("max_pair_error_rate_increase", value, round(value, 6) <= config.gates.max_pair_error_rate_increase)
    if config.gates.min_verification_lift is not None:
        value = max((verification_lift(f) for f in gated), default=0.0)
        gate("min_verification_lift", value, value < config.gates.min_verification_lift)
    if config.gates.max_unreadable_rate is not None:
        value = metrics["n_unreadable"] / metrics["n_images"] if metrics["n_images"] else 0.0
        gate("max_unreadable_rate", value, round(value, 6) <= config.gates.max_unreadable_rate)
    entries = [f.to_json() for f in findings]
    checks = soundness(config, predictions, selection, entries)
    for c in checks:
        if c["check"] in config.gates.soundness:
            gates.append({"name": f"soundness.{c['check']}", "passed": c["ok"], "value": 0.0 if c["ok"] else 1.0,
                          "threshold": 0.0})
    metrics["per_class"] = per_class(predictions)
    report = config.report.url or str(config.run_dir / "index.html")
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": config.run_id,
        "created": created,
        "report": report,
        "status": "pass" if all(g["passed"] for g in gates) else "fail",
        "verdict": verdict(entries, checks, config.trust.min_size),
        "soundness": checks,
        "metrics": metrics,
        "findings": entries,
        "gates": gates,
        "triage_expired": list(triage_expired),
        "baseline": None if baseline is None else {"run_id": baseline.run_id, "run_dir": str(baseline.run_dir)},
        "resolved": list(resolved),
        "pairs": pairs,
    }
