"""A finding's cue: where it sits (``cue_descriptor``), as a frozen ``Cue`` record.

``Cue`` is part of a ``audit.findings.Finding``; ``cue_descriptor`` gives the coarse,
model-independent place that the stable IDs hash; ``audit.stages.describe`` adds the
cue in words from the verification's measured facts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

CUE_CELLS = (("top-left", "top", "top-right"),     # the cue's place: a cell of a 3 x 3 grid over the image
             ("left", "centre", "right"),
             ("bottom-left", "bottom", "bottom-right"))
FOCUS_SHARE = 0.1              # a cue's focus: the share of its attribution in its top 10% of pixels


@dataclass(frozen=True)
class Cue:
    """Where a finding's cue sits (``cue_descriptor``) and the finding's content ``id``.

    ``x``, ``y``: centre of mass of the members' mean positive map, fractions of the image
    width and height (0 = left / top); ``focus``: share of each member's positive
    attribution in its top ``FOCUS_SHARE`` of cells, averaged (0.1 uniform .. 1 one spot);
    ``cell``: name of the 3 x 3 cell holding ``(x, y)``; ``id``: the content ID the finding
    got from ``assign_ids`` (kept when baseline matching renames the finding).
    The cue in words (``audit.cues.described``): ``type`` local (a region) or global (an
    image property); ``where`` (a corner, edge, centre or anywhere); ``area`` (the causal
    region's share of the image); ``colour`` (its distinctive colour name); for a global
    cue its ``property`` and ``direction`` (``"lower"``/``"higher"`` than the clean images);
    ``text``, the one-line description.
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

    def to_json(self) -> dict:
        """The cue as its ``summary.json`` object (the words only where measured)."""
        out = {"x": self.x, "y": self.y, "focus": self.focus, "cell": self.cell, "id": self.id, "type": self.type}
        for name in ("where", "area", "colour", "property", "direction", "text"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_json(cls, data: dict | None) -> "Cue | None":
        """The record of a ``to_json`` ``data`` (unknown keys ignored), or None when ``data`` is not a dict."""
        return cls(**{k: v for k, v in data.items() if k in _NAMES}) if isinstance(data, dict) else None



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
