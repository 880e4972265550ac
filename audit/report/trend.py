"""The trend section: confusion-pair error rates and findings over the nights.

Reads ``history.parquet`` in the run folder's parent (written by the nightly job):
one row per (run, confusion pair) with ``run_id, created, true_label,
predicted_label, n_true, n_confused, error_rate, n_findings, top_score, accuracy,
status``. Runs are ordered by ``created``. A pair without a row in a run counts as
0 errors that night (the history records the pairs a run confused). Shown when
the file has at least one row.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from audit.report import plots
from audit.report.assets import Assets
from audit.report.fmt import finite
from audit.report.loading import Run

REQUIRED = ("run_id", "created", "true_label", "predicted_label", "error_rate")
MAX_LINES = 8        # pairs drawn in the error-rate plot
MAX_ROWS = 20        # pairs listed in the table
ARROW = "\u2192"


def section(run: Run, assets: Assets) -> dict | None:
    """Error rates (0..1) of the most confused pairs and findings per run, as plots and a table; None
    without history rows (a note on the run when columns are missing).

    Parameters
    ----------
    run : Run
        The loaded run folder (its ``history``).
    assets : Assets
        Where the plots go.
    """
    h = run.history
    if h is None or h.empty:
        return None
    missing = [c for c in REQUIRED if c not in h.columns]
    if missing:
        run.notes.append(f"history.parquet lacks column(s) {', '.join(missing)}: no trend")
        return None
    h = h.assign(run_id=h["run_id"].astype(str), created=h["created"].astype(str),
                 pair=h["true_label"].astype(str) + ARROW + h["predicted_label"].astype(str),
                 error_rate=pd.to_numeric(h["error_rate"], errors="coerce"))
    order = h.groupby("run_id")["created"].min().sort_values(kind="stable")
    runs = order.index.tolist()
    rates = h.pivot_table(index="pair", columns="run_id", values="error_rate", aggfunc="max")
    rates = rates.reindex(columns=runs).fillna(0.0)
    last = runs[-1]
    prev = runs[-2] if len(runs) > 1 else None
    ranked = rates.assign(_last=rates[last], _max=rates.max(axis=1)).sort_values(
        ["_last", "_max"], ascending=False, kind="stable").index.tolist()
    per_run = h.groupby("run_id")
    findings = (per_run["n_findings"].sum() if "n_findings" in h.columns else pd.Series(0, index=runs))
    accuracy = (per_run["accuracy"].first() if "accuracy" in h.columns else pd.Series(np.nan, index=runs))
    findings = pd.to_numeric(findings.reindex(runs), errors="coerce").fillna(0)
    accuracy = pd.to_numeric(accuracy.reindex(runs), errors="coerce")
    lines = {p: rates.loc[p].tolist() for p in ranked[:MAX_LINES]}
    table = []
    for p in ranked[:MAX_ROWS]:
        now = float(rates.at[p, last])
        before = float(rates.at[p, prev]) if prev else None
        nights_found = int((h[(h["pair"] == p)].get("n_findings", pd.Series(dtype=float)).fillna(0) > 0).sum())
        table.append({"pair": p, "last": now, "previous": before,
                      "delta": None if before is None else now - before,
                      "max": float(rates.loc[p].max()), "nights_with_findings": nights_found})
    current = str(run.summary.get("run_id") or run.run.get("run_id") or "")
    return {
        "n_runs": len(runs), "first": runs[0], "last": last, "n_pairs": len(ranked),
        "includes_current": current in runs, "current": current,
        "rates": assets.image("trend-error-rates", plots.trend_lines(runs, lines, "error rate")),
        "findings": assets.image("trend-findings", plots.trend_bars(runs, findings.tolist(), accuracy.tolist())),
        "table": table, "findings_last": int(findings.iloc[-1]),
        "accuracy_last": finite(accuracy.iloc[-1]), "max_lines": MAX_LINES,
    }
