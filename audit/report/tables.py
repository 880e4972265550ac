"""Sections made of tables and plots over the whole run: the confusion matrix with one
section per confusion pair, the selection, metrics by metadata, confidence and
calibration, unreadable images, and the run metadata."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from audit import data as audit_data
from audit.report import plots
from audit.report.assets import Assets
from audit.report.fmt import correct_mask, finite, fmt_value, readable_mask, str_or_none
from audit.report.images import QUALITY, sheet
from audit.report.loading import Run

MAX_SLICE_VALUES = 20        # a metadata column with more distinct values is not sliced
PAIR_STRIP = 12              # thumbnails per confusion-pair section (one picture: a sprite sheet)
STRIP_GAP = 4               # px between the thumbnails of a pair's strip
STRIP_WIDTH = 1080           # px a pair's strip may span (the page's width): more thumbnails wrap
REASONS = ("misclassified", "low_confidence", "contrast")
_NOT_METADATA = set(audit_data.RESERVED_COLUMNS) | {"path", "label"}


# ---------------------------------------------------------------- confusion matrix and pairs

def confusion(run: Run, assets: Assets) -> dict | None:
    """The confusion-matrix section: counts and row shares (readable images), a view per confusion pair
    with a thumbnail strip, and the selection table; None without predictions.

    Parameters
    ----------
    run : Run
        The loaded run folder.
    assets : Assets
        Where the section's pictures go (``Assets.image``).
    """
    pred = run.predictions
    if pred is None:
        return None
    readable = readable_mask(pred)
    labels, predicted = pred["label"].astype(str), pred["predicted"].astype(str)
    counts = pd.crosstab(labels[readable], predicted[readable])
    unreadable = labels[~readable].value_counts()
    pair_of = {(p["true_label"], p["predicted_label"]): p for p in run.pairs}
    classes = run.classes
    rows = []
    for t in classes:
        if t not in counts.index and not unreadable.get(t, 0) and t not in labels.values:
            continue  # a class no image is labelled with gets no row
        n = int(counts.loc[t].sum()) if t in counts.index else 0
        cells = []
        for p in classes:
            c = int(counts.at[t, p]) if t in counts.index and p in counts.columns else 0
            rate = c / n if n else 0.0
            diag = t == p
            alpha = 0.0 if c == 0 else 0.10 + 0.75 * rate
            rgb = "47, 125, 79" if diag else "192, 57, 43"
            pair = pair_of.get((t, p))
            cells.append({"count": c, "rate": rate, "diag": diag, "pred": p,
                          "href": pair["anchor"] if pair else None,
                          "style": f"background-color: rgba({rgb}, {alpha:.3f})" if c else "",
                          "dark": alpha > 0.55, "n_findings": len(pair["findings"]) if pair else 0})
        rows.append({"label": t, "n": n, "cells": cells, "unreadable": int(unreadable.get(t, 0)),
                     "recall": (int(counts.at[t, t]) / n) if n and t in counts.columns else None})
    errors = pred[readable & (labels != predicted)]   # once, not per pair: 100,000 rows are common
    if "confidence" in errors.columns:
        errors = errors.assign(_c=pd.to_numeric(errors["confidence"], errors="coerce")).sort_values(
            "_c", ascending=False, kind="stable")
    by_pair = errors.groupby([errors["label"].astype(str), errors["predicted"].astype(str)], sort=False)
    sel = run.selection
    selected = None   # selected images (contrast rows aside) per (true, pair) label, counted once for all pairs
    if sel is not None and {"true_label", "pair_label", "reason"} <= set(sel.columns):
        kept = sel[sel["reason"].astype(str) != "contrast"]
        selected = kept.groupby([kept["true_label"].astype(str), kept["pair_label"].astype(str)]).size()
    pairs = [_pair_view(run, assets, p, by_pair, selected) for p in run.pairs]
    n_off = int(sum(1 for t in counts.index for p in counts.columns if t != p and counts.at[t, p]))
    return {"columns": classes, "rows": rows, "vertical": len(classes) > 8,
            "has_unreadable": bool((~readable).any()),
            "col_totals": [int(counts[p].sum()) if p in counts.columns else 0 for p in classes],
            "pairs": pairs, "n_pairs_total": n_off, "selection": _selection(run.selection)}


def _pair_view(run: Run, assets: Assets, pair: dict, by_pair, selected: pd.Series | None) -> dict:
    """The view of one confusion pair: its ``PAIR_STRIP`` most confident errors as one sprite sheet (``sheet``;
    ``by_pair``: the readable errors grouped by (label, predicted), most confident first; ``selected``: selected
    images per (true label, pair label), None without a selection)."""
    key = (pair["true_label"], pair["predicted_label"])
    hit = by_pair.get_group(key).head(PAIR_STRIP) if key in by_pair.groups else None
    strip, src, size = [], None, None
    if hit is not None and len(hit):
        rows = hit["row"].astype(int).tolist()
        picture, cells = sheet(run, rows, cols=len(rows), gap=STRIP_GAP, max_width=STRIP_WIDTH)
        if picture is not None:
            src = assets.image(f"{pair['anchor']}-strip", picture, quality=QUALITY)
            size = [int(picture.shape[1]), int(picture.shape[0])]
        confidence = hit["confidence"] if "confidence" in hit.columns else [None] * len(hit)
        strip = [{"row": r, "path": p, "confidence": finite(c), "cell": cell}
                 for r, p, c, cell in zip(rows, hit["path"].astype(str), confidence, cells)]
    n_selected = None if selected is None else int(selected.get(key, 0))
    delta = (pair["error_rate"] - pair["baseline_error_rate"]) if pair["baseline_error_rate"] is not None else None
    return {**pair, "strip": strip, "sheet": src, "sheet_size": size, "n_selected": n_selected, "delta": delta,
            "filter": f"{pair['true_label']}\u2192{pair['predicted_label']}"}


def _selection(sel: pd.DataFrame | None) -> dict | None:
    if sel is None or sel.empty or "reason" not in sel.columns:
        return None
    if "true_label" in sel.columns and "pair_label" in sel.columns:
        true, other = sel["true_label"].astype(str), sel["pair_label"].astype(str)
        pair = true + " -> " + other
        sides = dict(zip(pair, zip(true, other)))
    else:
        pair = sel["pair"].astype(str) if "pair" in sel.columns else sel["label"].astype(str) + " -> ?"
        sides = {}
    reason = sel["reason"].astype(str)
    reasons = [r for r in REASONS if (reason == r).any()] + sorted(set(reason) - set(REASONS))
    table = pd.crosstab(pair, reason)
    table = table.loc[table.sum(axis=1).sort_values(ascending=False, kind="stable").index]
    rows = [{"pair": p, "sides": sides.get(p),
             "counts": [int(table.at[p, r]) if r in table.columns else 0 for r in reasons],
             "total": int(table.loc[p].sum())} for p in table.index]
    return {"reasons": reasons, "rows": rows,
            "totals": [int((reason == r).sum()) for r in reasons], "total": len(sel)}


# ---------------------------------------------------------------- metrics by metadata

def _value_key(v: Any):
    if v is None:
        return (2, 0.0, "")
    f = finite(v) if not isinstance(v, str) else None
    return (0, f, "") if f is not None else (1, 0.0, str(v))


def slices(run: Run, assets: Assets) -> dict | None:
    """Accuracy by metadata value: one table per manifest column with at most ``MAX_SLICE_VALUES``
    distinct values (rows: labels and all; cells: n and accuracy 0..1); None without such columns.

    Parameters
    ----------
    run : Run
        The loaded run folder.
    assets : Assets
        Where the section's pictures go (``Assets.image``).
    """
    pred = run.predictions
    if pred is None:
        return None
    readable, correct = readable_mask(pred), correct_mask(pred)
    labels = pred["label"].astype(str)
    tables, skipped = [], []
    for col in [c for c in pred.columns if c not in _NOT_METADATA]:
        series = pred[col]
        try:
            n_distinct = series.nunique(dropna=False)
        except TypeError:  # lists, arrays, dicts: not a slicing key
            skipped.append({"column": col, "why": "not a scalar column"})
            continue
        if n_distinct > MAX_SLICE_VALUES:
            skipped.append({"column": col, "why": f"{n_distinct} distinct values"})
            continue
        missing = series.isna()
        values = sorted({v for v in series[~missing].tolist()}, key=_value_key)
        keys = [(fmt_value(v), (series == v) & ~missing) for v in values]
        if missing.any():
            keys.append(("(missing)", missing))
        present = set(labels[readable].unique().tolist())
        ordered = [c for c in run.classes if c in present] + sorted(present - set(run.classes))
        rows = []
        for label in ordered + [None]:  # None: all labels
            in_label = readable if label is None else readable & (labels == label)
            cells = []
            for _, mask in keys:
                m = in_label & mask
                n = int(m.sum())
                cells.append({"n": n, "acc": float(correct[m].mean()) if n else None})
            n_all = int(in_label.sum())
            rows.append({"label": label, "cells": cells, "n": n_all,
                         "acc": float(correct[in_label].mean()) if n_all else None})
        tables.append({"column": col, "value_names": [k for k, _ in keys], "rows": rows})
    if not tables and not skipped:
        return None
    return {"tables": tables, "skipped": skipped, "max_values": MAX_SLICE_VALUES}


# ---------------------------------------------------------------- confidence and calibration

def calibration(run: Run, assets: Assets) -> dict | None:
    """Confidence and calibration: histogram and reliability diagram, ECE, the filled bins (0..1) and
    the count of wrong predictions with confidence >= 0.9; None without confidences.

    Parameters
    ----------
    run : Run
        The loaded run folder.
    assets : Assets
        Where the section's pictures go (``Assets.image``).
    """
    pred = run.predictions
    if pred is None or "confidence" not in pred.columns:
        return None
    readable = readable_mask(pred)
    if not readable.any():
        return None
    correct = correct_mask(pred)
    conf = pd.to_numeric(pred["confidence"], errors="coerce")
    right, wrong = conf[correct].to_numpy(float), conf[readable & ~correct].to_numpy(float)
    cal = plots.reliability(conf[readable].to_numpy(float), correct[readable].to_numpy(bool))
    bins = [{"lo": float(cal["edges"][i]), "hi": float(cal["edges"][i + 1]), "n": int(cal["count"][i]),
             "acc": finite(cal["accuracy"][i]), "conf": finite(cal["confidence"][i])}
            for i in range(len(cal["count"])) if cal["count"][i]]
    return {"histogram": assets.image("confidence", plots.confidence_histogram(right, wrong)),
            "reliability": assets.image("reliability", plots.reliability_diagram(cal)),
            "ece": finite(cal["ece"]), "bins": bins, "n_correct": int(len(right)), "n_wrong": int(len(wrong)),
            "wrong_confident": int((wrong >= 0.9).sum()),
            "mean_confidence": finite(np.nanmean(conf[readable])) if readable.any() else None,
            "accuracy": float(correct[readable].mean())}


# ---------------------------------------------------------------- unreadable images, run metadata

def unreadable(run: Run, assets: Assets) -> dict | None:
    """The unreadable images (row, path, error); None when every image was read.

    Parameters
    ----------
    run : Run
        The loaded run folder.
    assets : Assets
        Where the section's pictures go (``Assets.image``).
    """
    pred = run.predictions
    if pred is None:
        return None
    bad = pred[~readable_mask(pred)]
    if bad.empty:
        return None
    errors = bad["error"] if "error" in bad.columns else pd.Series(None, index=bad.index)
    return {"rows": [{"row": int(r), "path": str(p), "error": str_or_none(e) or "unreadable"}
                     for r, p, e in zip(bad["row"], bad["path"], errors)]}


def meta(run: Run, assets: Assets) -> dict:
    """The run's metadata from ``run.json``: config (JSON text), versions, model, data, timings (seconds)
    and their total, classes, methods, the attribution plan (``audit.stages.plan.Plan.to_json``; None
    for an older run) and the loading notes.

    Parameters
    ----------
    run : Run
        The loaded run folder.
    assets : Assets
        Where the section's pictures go (``Assets.image``).
    """
    r = run.run
    model, data = r.get("model") or {}, r.get("data") or {}
    timings = dict(r.get("timings") or {})
    total = sum(v for v in (finite(t) for t in timings.values()) if v is not None)

    def items(d: dict) -> list[tuple[str, str]]:
        return [(str(k), v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in d.items()]

    return {
        "config": json.dumps(r.get("config") or {}, indent=2, default=str, ensure_ascii=False),
        "versions": items(r.get("versions") or {}), "model": items(model), "data": items(data),
        "timings": list(timings.items()), "total_time": total if timings else None,
        "classes": [str(c) for c in r.get("classes") or []], "methods": run.methods,
        "notes": run.notes, "plan": r.get("plan"),
    }
