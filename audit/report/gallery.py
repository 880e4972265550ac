"""The gallery: misclassified and low-confidence images, sorted, filtered and paged in the browser.

The items travel as JSON in ``<script type="application/json" id="gallery-data">``
(Jinja's ``tojson``: ``<``, ``>``, ``&`` and ``'`` escaped as ``\\u003c``...), and
a small inline script draws one page at a time with ``textContent`` (never
``innerHTML``), so names from the data set are text, never markup. Clicking an
image opens the per-image view: the original, one overlay per attribution method
and the top-k probabilities.

Per-image views are drawn for every gallery image in the folder layout; in the
single-file layout for the first ``report.max_image_views`` by priority (finding
members by finding rank, then misclassified by confidence, then low confidence):
the page says how many and how to get the rest (``--layout folder``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from audit.report import plots
from audit.report.assets import Assets
from audit.report.fmt import readable_mask
from audit.report.images import image_view, thumb
from audit.report.loading import Run

REASONS = ("misclassified", "low_confidence")
PAGE_SIZE = 48
ARROW = "\u2192"


def section(run: Run, assets: Assets) -> dict | None:
    """The gallery's items (thumbnails, per-image views by priority), pages of ``PAGE_SIZE``; None when no
    image is misclassified or low-confidence.

    Parameters
    ----------
    run : Run
        The loaded run folder.
    assets : Assets
        Where the pictures go; its ``layout`` decides how many views are drawn.
    """
    frame = _candidates(run)
    if frame is None or frame.empty:
        return None
    finding_of: dict[int, dict] = {}
    for f in run.findings:
        for r in f["rows"]:
            finding_of.setdefault(int(r), f)
    frame = frame.assign(_rank=[finding_of[r]["rank"] if r in finding_of else np.inf for r in frame["row"]],
                         _mis=(frame["reason"] == "misclassified"),
                         _conf=pd.to_numeric(frame["confidence"], errors="coerce") if "confidence" in frame else np.nan)
    frame = frame.sort_values(["_rank", "_mis", "_conf"], ascending=[True, False, False], kind="stable")
    limit = None if assets.layout == "folder" else run.config.report.max_image_views
    lut = plots.colour_table()
    anchors = {p["anchor"] for p in run.pairs}
    items = []
    for i, rec in enumerate(frame.itertuples(index=False)):
        row = int(rec.row)
        with_view = limit is None or i < limit
        view = image_view(run, assets, row, lut=lut, with_pictures=with_view)
        f = finding_of.get(row)
        true, other = str(rec.true_label), str(rec.pair_label)
        pair_anchor = next((p["anchor"] for p in run.pairs
                            if p["true_label"] == true and p["predicted_label"] == other), None)
        items.append({
            "row": row, "path": view["path"], "label": view["label"], "predicted": view["predicted"],
            "confidence": view["confidence"], "margin": view["margin"], "reason": str(rec.reason),
            "pair": f"{true}{ARROW}{other}", "pair_anchor": pair_anchor if pair_anchor in anchors else None,
            "finding": f["id"] if f else None, "finding_anchor": f["anchor"] if f else None,
            "thumb": thumb(run, assets, row),
            "view": ({"src": view["strip"], "panels": view["panels"], "width": view["width"],
                      "height": view["height"]} if with_view and view["strip"] else None),
            "top": [[t["label"], t["p"]] for t in view["top"]],
            "error": view["error"] if view["strip"] is None and with_view else None,
        })
    n_views = sum(1 for it in items if it["view"])
    return {"items": items, "n": len(items), "n_views": n_views, "limit": limit,
            "page_size": PAGE_SIZE, "methods": run.methods,
            "capped": limit is not None and len(items) > limit}


def _candidates(run: Run) -> pd.DataFrame | None:
    """Rows of the gallery with ``row, reason, true_label, pair_label, confidence``, one per row."""
    sel = run.selection
    if sel is not None and {"row", "reason"} <= set(sel.columns):
        frame = sel[sel["reason"].astype(str).isin(REASONS)].copy()
        if "true_label" not in frame.columns:
            frame["true_label"] = frame["label"].astype(str)
        if "pair_label" not in frame.columns:
            frame["pair_label"] = frame.get("predicted", pd.Series("?", index=frame.index)).astype(str)
    elif run.predictions is not None:  # no selection: every misclassified readable image
        pred = run.predictions
        mis = readable_mask(pred) & (pred["label"].astype(str) != pred["predicted"].astype(str))
        frame = pred[mis].assign(reason="misclassified", true_label=pred["label"].astype(str),
                                 pair_label=pred["predicted"].astype(str))
    else:
        return None
    frame = frame.assign(row=frame["row"].astype(int), reason=frame["reason"].astype(str))
    return frame.drop_duplicates("row", keep="first")[
        ["row", "reason", "true_label", "pair_label"] + (["confidence"] if "confidence" in frame.columns else [])]

