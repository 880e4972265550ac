"""A finding's cue: where it sits (``cue_descriptor``, ``located``), as a frozen ``Cue`` record.

``Cue`` is part of a ``audit.findings.Finding``; ``cue_descriptor`` gives the coarse,
model-independent place that the stable IDs hash; ``audit.stages.describe`` adds the
cue in words from the verification's measured facts; ``located`` (called by
``audit.stages.locate``) then places the cue at the size of the evidence: the
members' top-attributed regions, each with the box the report's montage crops.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from audit.maps import peak_part, top_regions

CUE_CELLS = (("top-left", "top", "top-right"),     # the cue's place: a cell of a 3 x 3 grid over the image
             ("left", "centre", "right"),
             ("bottom-left", "bottom", "bottom-right"))
FOCUS_SHARE = 0.1              # a cue's focus: the share of its attribution in its top 10% of pixels
MIN_BOX = 1 / 3                # a member's cue box spans at least this share of the image side (some context)


@dataclass(frozen=True)
class Cue:
    """Where a finding's cue sits (``cue_descriptor``) and the finding's content ``id``.

    ``x``, ``y``: centre of mass of the members' mean positive map, fractions of the image
    width and height (0 = left / top); ``focus``: share of each member's positive
    attribution in its top ``FOCUS_SHARE`` of cells, averaged (0.1 uniform .. 1 one spot);
    ``cell``: name of the 3 x 3 cell holding ``(x, y)``; ``id``: the content ID the finding
    got from ``assign_ids`` (kept when baseline matching renames the finding).
    The cue in words (``audit.stages.describe``): ``type`` local (a region) or global (an
    image property); ``where`` (a corner, edge, centre or anywhere); ``area`` (the causal
    region's share of the image); ``colour`` (its distinctive colour name); for a global
    cue its ``property`` and ``direction`` (``"lower"``/``"higher"`` than the clean images);
    ``text``, the one-line description.
    Where the cue was located (``located``): ``source``, the evidence that placed
    ``x``, ``y``, ``cell``, ``focus`` and ``boxes`` (``"verified region"``: the region rule
    the verification confirmed, ``"<method> map"``: that attribution method's map, or
    ``"not located: ..."``; None: the discover-time map, before locating); ``boxes``: per
    member, in the finding's ``members`` order, ``(top, left, bottom, right)`` of the square
    around its located region, fractions of the image height and width (end exclusive),
    or None where its map has no positive value.
    """

    x: float
    y: float
    focus: float
    cell: str
    id: str | None = None
    type: str = "local"
    where: str | None = None
    area: float | None = None
    colour: str | None = None
    property: str | None = None
    direction: str | None = None
    text: str | None = None
    source: str | None = None
    boxes: tuple[tuple[float, float, float, float] | None, ...] = ()

    def to_json(self) -> dict:
        """The cue as its ``summary.json`` object (the words and the location's source only where measured)."""
        out = {"x": self.x, "y": self.y, "focus": self.focus, "cell": self.cell, "id": self.id, "type": self.type}
        for name in ("where", "area", "colour", "property", "direction", "text", "source"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.source is not None:
            out["boxes"] = [list(b) if b is not None else None for b in self.boxes]
        return out

    @classmethod
    def from_json(cls, data: dict | None) -> "Cue | None":
        """The record of a ``to_json`` ``data`` (unknown keys ignored), or None when ``data`` is not a dict."""
        if not isinstance(data, dict):
            return None
        values = {k: v for k, v in data.items() if k in _NAMES}
        values["boxes"] = tuple(tuple(float(v) for v in b) if isinstance(b, (list, tuple)) and len(b) == 4 else None
                                for b in data.get("boxes") or ())
        return cls(**values)



_NAMES = {f.name for f in dataclasses.fields(Cue)}


def cue_descriptor(maps: np.ndarray) -> Cue:
    """A coarse, model-independent description of where a finding's cue sits.

    Parameters
    ----------
    maps : np.ndarray
        float ``[n, H, W]``, the members' attribution maps (any resolution; the
        pipeline passes them pooled to ``discovery.grid`` cells). Each member's positive
        part is L1-normalised, so every member weighs the same; an all-zero map counts
        as uniform.

    Returns
    -------
    Cue
        With ``x``, ``y`` (centre of mass of the members' mean map, fractions of the
    width and height), ``cell`` (the 3 x 3 cell holding it: an odd grid keeps the image
    centre, where cues placed anywhere average out, off cell borders) and ``focus`` (the
    members' mean share of their positive attribution in their own top ``FOCUS_SHARE`` of
    cells: ``FOCUS_SHARE`` for a uniform map, 1 when it all sits there; high for a small
    object such as rails, low for a whole scene, wherever the object sits).
    """
    positive = np.maximum(np.asarray(maps, np.float64), 0.0)
    n, h, w = positive.shape
    total = positive.reshape(n, -1).sum(axis=1)[:, None, None]
    normed = np.where(total > 0, positive / np.where(total > 0, total, 1.0), 1.0 / (h * w))
    mean = normed.mean(axis=0)
    ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    x = float((mean.sum(axis=0) * xs).sum())
    y = float((mean.sum(axis=1) * ys).sum())
    top = max(1, int(round(FOCUS_SHARE * h * w)))
    focus = float(-np.sort(-normed.reshape(n, -1), axis=1)[:, :top].sum(axis=1).mean())
    col, row = (min(int(v * 3), 2) for v in (x, y))
    return Cue(x=round(x, 4), y=round(y, 4), focus=round(focus, 4), cell=CUE_CELLS[row][col])


def located(cue: Cue, cells: np.ndarray, max_area: float, source: str) -> Cue:
    """``cue`` placed at the members' top-attributed regions of ``cells``, with each member's box.

    A member's region is its top region (``audit.maps.top_regions``: the cells of at
    least half the peak cell, at most ``max_area`` of the image: what verification
    hides) cut to its part holding the peak (``audit.maps.peak_part``). ``x``, ``y``: the
    mean of the members' region centres; ``cell``: the 3 x 3 cell holding it; ``focus``:
    ``cue_descriptor``'s, over the members with a positive map; ``boxes``: per member the
    square of side ``max(MIN_BOX, the region's height and width)`` centred on the region's
    box, kept inside the image.

    Parameters
    ----------
    cue : Cue
        The finding's cue (its words and ``id`` are kept).
    cells : np.ndarray
        float ``[n, G, G]``: the members' maps in ``members`` order, area-pooled to ``G x G``
        cells (all zero for a member without a map).
    max_area : float
        Largest region, share 0..1 of the image (``verify.max_area``).
    source : str
        The evidence the maps are, e.g. ``"verified region"`` or ``"occlusion map"``.

    Returns
    -------
    Cue
        With ``x``, ``y``, ``cell``, ``focus``, ``source`` and ``boxes`` set; when no member
        has a positive map, the position is kept and ``source`` says it was not located.
    """
    cells = np.maximum(np.asarray(cells, np.float64), 0.0)
    n, g, _ = cells.shape
    regions = top_regions(cells, g, max_area) if n else []
    centres, boxes = [], []
    for values, mask in zip(cells, regions):
        if mask is None:
            boxes.append(None)
            continue
        ys, xs = np.nonzero(peak_part(values, mask))
        centres.append(((ys.mean() + 0.5) / g, (xs.mean() + 0.5) / g))
        boxes.append(_square(ys.min() / g, xs.min() / g, (ys.max() + 1) / g, (xs.max() + 1) / g))
    if not centres:
        return dataclasses.replace(cue, source=f"not located: no member has a positive {source}",
                                   boxes=(None,) * n)
    y, x = np.mean(centres, axis=0)
    col, row = (min(int(v * 3), 2) for v in (x, y))
    focus = cue_descriptor(cells[cells.reshape(n, -1).max(axis=1) > 0]).focus
    return dataclasses.replace(cue, x=round(float(x), 4), y=round(float(y), 4), cell=CUE_CELLS[row][col],
                               focus=focus, source=source, boxes=tuple(boxes))


def _square(top: float, left: float, bottom: float, right: float) -> tuple[float, float, float, float]:
    """The square box (fractions) of side ``max(MIN_BOX, height, width)`` centred on a region's box, inside
    the image."""
    side = min(1.0, max(MIN_BOX, bottom - top, right - left))
    cy, cx = (top + bottom) / 2, (left + right) / 2
    top, left = (float(np.clip(c - side / 2, 0.0, 1.0 - side)) for c in (cy, cx))
    return round(top, 4), round(left, 4), round(top + side, 4), round(left + side, 4)
