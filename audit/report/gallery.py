"""The gallery: misclassified and low-confidence images, sorted, filtered and paged in the browser.

The items travel as JSON in ``<script type="application/json" id="gallery-data">``
(Jinja's ``tojson``: ``<``, ``>``, ``&`` and ``'`` escaped as ``\\u003c``...), and
a small inline script draws one page at a time with ``textContent`` (never
``innerHTML``), so names from the data set are text, never markup. Clicking an
image opens the per-image view: the original, one overlay per attribution method
and the top-k probabilities.

The JSON is compact, so 10,000 images cost about a megabyte: one array per image
(``FIELDS``), class names, reasons and findings as indexes into lists beside it.
Thumbnails come in sprite sheets of ``PAGE_SIZE`` (one picture per page of the
default order, ``images.sheet``); an item's ``thumb`` is ``[sheet, x, y, w, h]``.

What the single-file report draws is what a reader can look at within
``report.max_bytes``: ``section`` lists the images (at most ``max_bytes / DATA_SHARE``
of JSON, by priority: finding members by finding rank, then misclassified by
confidence, then low confidence), then, once the rest of the page is known,
``fill`` spends the bytes it leaves: image views for the first
``report.max_image_views`` images (at most half of those bytes), then thumbnail
sheets page by page. The page says how many and how to get the rest
(``audit render RUN_DIR --layout folder`` draws every thumbnail and view).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from audit.report import plots
from audit.report.assets import Assets, encode
from audit.report.fmt import finite, readable_mask, str_or_none
from audit.report.images import QUALITY, sheet, strip, top_k, view_name
from audit.report.loading import Run

REASONS = ("misclassified", "low_confidence")
PAGE_SIZE = 48        # images per page, and per thumbnail sheet
SHEET_COLS = 8        # thumbnails per line of a sheet
DATA_SHARE = 4        # the item list takes at most report.max_bytes / DATA_SHARE of the single file
FIELDS = ("row", "path", "label", "predicted", "true", "other", "confidence", "margin", "reason", "finding",
          "top", "thumb")
_DATA_URI = len("data:image/jpeg;base64,")


def section(run: Run, assets: Assets) -> dict | None:
    """The gallery's items, without pictures (``fill`` draws them); None when no image is misclassified or
    low-confidence.

    Parameters
    ----------
    run : Run
        The loaded run folder.
    assets : Assets
        Where the pictures go; in the ``single`` layout the item list is capped at
        ``report.max_bytes / DATA_SHARE`` bytes of JSON.
    """
    frame = _candidates(run)
    if frame is None or frame.empty:
        return None
    finding_of: dict[int, int] = {}
    for i, f in enumerate(run.findings):
        for r in f["rows"]:
            finding_of.setdefault(int(r), i)
    rank = [run.findings[finding_of[r]]["rank"] if r in finding_of else np.inf for r in frame["row"]]
    frame = frame.assign(_rank=pd.to_numeric(pd.Series(rank, index=frame.index), errors="coerce").fillna(np.inf),
                         _mis=(frame["reason"] == "misclassified"),
                         _conf=pd.to_numeric(frame["confidence"], errors="coerce") if "confidence" in frame else np.nan)
    frame = frame.sort_values(["_rank", "_mis", "_conf"], ascending=[True, False, False], kind="stable")
    classes: dict[str, int] = {}

    def cls(name) -> int | None:
        name = str_or_none(name)
        return None if name is None else classes.setdefault(name, len(classes))

    budget = None if assets.layout == "folder" else run.config.report.max_bytes // DATA_SHARE
    items, used, pair_anchors = [], 0, {}
    anchors = {(p["true_label"], p["predicted_label"]): p["anchor"] for p in run.pairs}
    for rec in frame.itertuples(index=False):
        row = int(rec.row)
        info = run.info(row) or {}
        true, other = cls(rec.true_label), cls(rec.pair_label)
        anchor = anchors.get((str(rec.true_label), str(rec.pair_label)))
        if anchor is not None:
            pair_anchors[f"{true},{other}"] = anchor
        label, predicted = cls(info.get("label")), cls(info.get("predicted"))   # class ids in order of appearance
        top = [x for t in top_k(run, row, info=info) for x in (cls(t["label"]), round(t["p"], 3))]
        item = [row, str(info.get("path", "?")), label, predicted, true, other, _round(info.get("confidence"), 4),
                _round(info.get("margin"), 4), REASONS.index(rec.reason), finding_of.get(row), top, None]
        if budget is not None:
            used += len(json.dumps(item, ensure_ascii=False)) + 1
            if used > budget:
                break
        items.append(item)
    data = {"fields": FIELDS, "classes": list(classes), "reasons": REASONS, "items": items,
            "findings": [[f["id"], f["anchor"]] for f in run.findings], "pair_anchors": pair_anchors,
            "sheets": [], "views": {}, "errors": {}}
    return {"data": data, "n": len(items), "n_total": len(frame), "n_thumbs": 0, "n_views": 0,
            "page_size": PAGE_SIZE, "methods": run.methods, "layout": assets.layout,
            "max_image_views": run.config.report.max_image_views}


def fill(ctx: dict, run: Run, assets: Assets, spare: int | None) -> None:
    """Draw the gallery's pictures into ``ctx`` (a ``section`` result), within ``spare`` bytes of the page.

    Image views first, in item order, for at most ``report.max_image_views`` images and half of
    ``spare``; then thumbnail sheets of ``PAGE_SIZE`` items, in item order, while they fit.
    ``spare`` None (the folder layout): every view and every sheet, page by page (a page's view
    and thumbnail of one image come from one decoded original). Sets ``ctx["n_thumbs"]`` and
    ``ctx["n_views"]``.

    Parameters
    ----------
    ctx : dict
        The gallery section's context, filled in place.
    run : Run
        The loaded run folder.
    assets : Assets
        Where the pictures go.
    spare : int or None
        Bytes of the single-file report left for the gallery's pictures (base64 and JSON).
    """
    data = ctx["data"]
    items = data["items"]
    lut = plots.colour_table()
    pages = range(0, len(items), PAGE_SIZE)
    if spare is None:   # page by page: an original is decoded once for its view and its thumbnail (Run keeps 64)
        for start in pages:
            _views(run, assets, data, items[start:start + PAGE_SIZE], lut)
            _sheet(run, assets, data, items[start:start + PAGE_SIZE], start)
    else:
        spent = _views(run, assets, data, items[:min(len(items), run.config.report.max_image_views)], lut,
                       spare // 2)
        for start in pages:
            cost = _sheet(run, assets, data, items[start:start + PAGE_SIZE], start, spare - spent)
            if cost is None:
                break
            spent += cost
    ctx["n_thumbs"] = sum(1 for it in items if it[-1] is not None)
    ctx["n_views"] = len(data["views"])


def _views(run: Run, assets: Assets, data: dict, items: list, lut: np.ndarray, limit: int | None = None) -> int:
    """Draw the image views of ``items`` into ``data["views"]``, in order, until the next would take the
    single file over ``limit`` bytes (None: all); returns the bytes they take (0 without a limit)."""
    spent = 0
    for item in items:
        row = item[0]
        picture, panels = strip(run, row, lut)
        if picture is None:
            data["errors"][str(row)] = run.image_errors.get(row) or "image unavailable"
            continue
        raw, _ = encode(picture, QUALITY)
        height, width = picture.height, (picture.width - (len(panels) - 1) * plots.GAP) // len(panels)
        entry = {"src": "", "panels": panels, "width": width, "height": height}
        if limit is not None:
            cost = _DATA_URI + 4 * math.ceil(len(raw) / 3) + len(json.dumps({str(row): entry}))
            if spent + cost > limit:
                break
            spent += cost
        entry["src"] = assets.image(view_name(row), raw)
        data["views"][str(row)] = entry
    return spent


def _sheet(run: Run, assets: Assets, data: dict, page: list, start: int, limit: int | None = None) -> int | None:
    """Draw the thumbnail sheet of the gallery page of ``items[start:]`` (``page``) and point its items'
    ``thumb`` at it; returns the bytes it takes of the single file (0 without a ``limit``), or None
    (nothing drawn) when that is more than ``limit``."""
    errors, sheets = data["errors"], data["sheets"]
    picture, cells = sheet(run, [it[0] for it in page], SHEET_COLS)
    if picture is None:
        for it in page:
            errors.setdefault(str(it[0]), run.image_errors.get(it[0]) or "image unavailable")
        return 0
    raw, _ = encode(picture, QUALITY)
    cost = 0
    if limit is not None:
        cost = _DATA_URI + 4 * math.ceil(len(raw) / 3) + 3 + sum(len(json.dumps([len(sheets), *c])) for c in cells if c)
        if cost > limit:
            return None
    sheets.append(assets.image(f"gallery-{start // PAGE_SIZE}", raw))
    for it, cell in zip(page, cells):
        if cell is None:
            errors.setdefault(str(it[0]), run.image_errors.get(it[0]) or "image unavailable")
        else:
            it[-1] = [len(sheets) - 1, *cell]
    return cost


def _round(x, digits: int) -> float | None:
    v = finite(x)
    return None if v is None else round(v, digits)


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
