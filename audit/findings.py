"""Findings as frozen records: created by discover, replaced (never edited) by each later stage.

A ``Finding`` is a group of images with a shared cue. Discover creates it with its
members, scores and ``cue``; verify returns it with its ``verification`` and
``causal`` lift; trust with ``trust``; the nightly steps with ``status``, ``baseline``
and ``triage``. Each stage returns new records (``dataclasses.replace``), so which
stage owns which field is written here, and any assignment raises.
``Finding.to_json`` is the one place that knows the ``summary.json`` keys;
``Finding.from_json`` reads them back (leniently: summaries of older runs too).

Stable IDs
----------
A finding's ``id`` is ``F-`` + 8 hex digits of the SHA-1 of its confusion pair and
of the 3 x 3 grid cell that holds the centre of mass of its members' mean positive
attribution map (``cue_descriptor``). It depends neither on which images are members
nor on the model's scores, so the same cue keeps its ID across nights, retrained
models and slightly different data; findings of one pair whose cues share a cell
get ``-2``, ``-3``, ... in rank order (``assign_ids``).

Score
-----
``score = support * coherence * (1 + causal)`` (see ``audit.stages.discover``);
``rank`` numbers the findings by score, 1 = most suspicious (``ranked``).
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CUE_CELLS = (("top-left", "top", "top-right"),     # the cue's place: a cell of a 3 x 3 grid over the image
             ("left", "centre", "right"),
             ("bottom-left", "bottom", "bottom-right"))
FOCUS_SHARE = 0.1              # a cue's focus: the share of its attribution in its top 10% of pixels


def _json(record: Any) -> Any:
    """A record (or a value holding records) as JSON-ready plain values: tuples become lists."""
    if hasattr(record, "to_json"):
        return record.to_json()
    if isinstance(record, (list, tuple)):
        return [_json(v) for v in record]
    if isinstance(record, dict):
        return {k: _json(v) for k, v in record.items()}
    return record


def _fields(cls: type, data: dict) -> dict:
    """The entries of ``data`` that are fields of ``cls`` (unknown keys of newer or older runs are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class Cue:
    """Where a finding's cue sits (``cue_descriptor``) and the finding's content ``id``.

    ``x``, ``y``: centre of mass of the members' mean positive map, fractions of the image
    width and height (0 = left / top); ``focus``: share of each member's positive
    attribution in its top ``FOCUS_SHARE`` of cells, averaged (0.1 uniform .. 1 one spot);
    ``cell``: name of the 3 x 3 cell holding ``(x, y)``; ``id``: the content ID the finding
    got from ``assign_ids`` (kept when baseline matching renames the finding).
    """

    x: float
    y: float
    focus: float
    cell: str
    id: str | None = None

    def to_json(self) -> dict:
        """The cue as its ``summary.json`` object."""
        return {"x": self.x, "y": self.y, "focus": self.focus, "cell": self.cell, "id": self.id}

    @classmethod
    def from_json(cls, data: dict | None) -> "Cue | None":
        """The record of a ``to_json`` ``data`` (unknown keys ignored), or None when ``data`` is not a dict."""
        return cls(**_fields(cls, data)) if isinstance(data, dict) else None


@dataclass(frozen=True)
class Intervention:
    """One intervention test of a cue (occlusion or transplant), counted over ``n`` images.

    ``flipped`` / ``rate``: images (share) whose prediction changed as the test expects
    with the top-attributed region; ``random_flipped`` / ``random_rate``: the same with a
    random region of equal area; ``lift = rate - random_rate`` (mean paired difference)
    and ``se`` its standard error. Rates, lift and se are ``None`` when ``n`` is 0.
    """

    n: int = 0
    flipped: int = 0
    rate: float | None = None
    random_flipped: int = 0
    random_rate: float | None = None
    lift: float | None = None
    se: float | None = None

    def to_json(self) -> dict:
        """The record as its ``summary.json`` object (a ``dict`` of its fields)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> "Intervention | None":
        """The record of a ``to_json`` ``data`` (unknown keys ignored), or None when ``data`` is not a dict."""
        return cls(**_fields(cls, data)) if isinstance(data, dict) else None


@dataclass(frozen=True)
class Verification:
    """The verify stage's result for one finding (``audit.stages.verify``).

    ``verified`` False: not tested, ``reason`` says why. Otherwise ``members_tested``
    members had a region, over ``rounds`` rounds; ``mean_area`` is the regions' mean share
    of the image; ``occlusion`` and ``transplant`` are the two tests; ``reason`` is set when
    no member could be tested.
    """

    verified: bool
    reason: str | None = None
    members_tested: int | None = None
    rounds: int | None = None
    mean_area: float | None = None
    occlusion: Intervention | None = None
    transplant: Intervention | None = None

    def to_json(self) -> dict:
        """The result as its ``summary.json`` object (``verified`` and ``reason`` only when not verified)."""
        if not self.verified:
            return {"verified": False, "reason": self.reason}
        out = {"verified": True, "members_tested": self.members_tested, "rounds": self.rounds,
               "mean_area": self.mean_area, "occlusion": _json(self.occlusion), "transplant": _json(self.transplant)}
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_json(cls, data: dict | None) -> "Verification | None":
        """The record of a ``to_json`` ``data`` (unknown keys ignored), or None when ``data`` is not a dict."""
        if not isinstance(data, dict):
            return None
        values = _fields(cls, data)
        for test in ("occlusion", "transplant"):
            values[test] = Intervention.from_json(data.get(test))
        return cls(**{"verified": bool(data.get("verified")), **values})

    @property
    def best_lift(self) -> float | None:
        """The larger of the two tests' lifts (None when not verified or neither ran)."""
        lifts = [t.lift for t in (self.occlusion, self.transplant) if t is not None and t.lift is not None]
        return max(lifts) if self.verified and lifts else None


@dataclass(frozen=True)
class FindingTrust:
    """The trust stage's judgement of one finding (``audit.stages.trust``).

    ``agreement``: members' mean Spearman between methods (over ``n_images``);
    ``lift``: best verification lift; ``agrees`` / ``confirmed``: each against its
    threshold (None when not measured); ``level``: high (both), medium (one) or low.
    """

    agreement: float | None
    n_images: int
    lift: float | None
    agrees: bool | None
    confirmed: bool | None
    level: str

    def to_json(self) -> dict:
        """The record as its ``summary.json`` object (a ``dict`` of its fields)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> "FindingTrust | None":
        """The record of a ``to_json`` ``data`` (unknown keys ignored), or None when ``data`` is not a dict."""
        if not isinstance(data, dict):
            return None
        values = {"agreement": None, "n_images": 0, "lift": None, "agrees": None, "confirmed": None, "level": "low"}
        return cls(**{**values, **_fields(cls, data)})


@dataclass(frozen=True)
class Finding:
    """A group of images that share a cue: one entry of ``summary.json``'s ``findings``.

    Discover sets the identity and evidence: ``id``, ``true_label`` / ``predicted_label``
    (the confusion pair), ``members`` (manifest paths, most central first) and their
    prediction ``rows``, the counts ``n_errors`` (misclassified members) and ``n_low_confidence``
    (correct but low-margin ones), ``support``, ``coherence``, per-member ``centrality``,
    ``exemplars``, the pair's Laplacian ``eigenvalues`` and ``eigengap_k``, and ``cue``.
    Verify sets ``verification`` and ``causal`` (clipped best lift, 0 until verified);
    ``score`` and ``rank`` follow from them (``ranked``). Trust sets ``trust``; the
    nightly steps set ``status`` (new / persisting), ``baseline`` (the matched baseline
    finding), ``triage`` (acknowledged / suppressed / None) and ``triage_note``.
    """

    id: str
    true_label: str
    predicted_label: str
    members: tuple[str, ...]
    rows: tuple[int, ...]
    rank: int = 0
    score: float = 0.0
    n_errors: int = 0
    n_low_confidence: int = 0
    support: float = 0.0
    coherence: float = 0.0
    causal: float = 0.0
    centrality: tuple[float, ...] = ()
    exemplars: tuple[str, ...] = ()
    eigenvalues: tuple[float, ...] = ()
    eigengap_k: int | None = None
    cue: Cue | None = None
    verification: Verification | None = None
    status: str = "new"
    baseline: dict | None = field(default=None, hash=False)
    triage: str | None = None
    triage_note: dict | None = field(default=None, hash=False)
    trust: FindingTrust | None = None

    @property
    def size(self) -> int:
        """Number of members."""
        return len(self.members)

    @property
    def pair(self) -> tuple[str, str]:
        """The confusion pair ``(true_label, predicted_label)``."""
        return self.true_label, self.predicted_label

    def to_json(self) -> dict:
        """The finding as ``summary.json`` writes it (the stable keys, in their order)."""
        out = {"id": self.id, "rank": self.rank, "true_label": self.true_label,
               "predicted_label": self.predicted_label, "size": self.size, "score": self.score,
               "members": list(self.members), "rows": list(self.rows), "n_errors": self.n_errors,
               "n_low_confidence": self.n_low_confidence, "support": self.support, "coherence": self.coherence,
               "causal": self.causal, "centrality": list(self.centrality), "exemplars": list(self.exemplars),
               "eigenvalues": list(self.eigenvalues), "eigengap_k": self.eigengap_k, "cue": _json(self.cue),
               "verification": _json(self.verification), "status": self.status}
        if self.baseline is not None:
            out["baseline"] = dict(self.baseline)
        out["triage"] = self.triage
        if self.triage_note is not None:
            out["triage_note"] = dict(self.triage_note)
        out["trust"] = _json(self.trust)
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Finding":
        """A finding from its ``summary.json`` entry ``data`` (a dict); missing keys take their defaults."""
        values = _fields(cls, data)
        for name in ("members", "exemplars"):
            values[name] = tuple(str(v) for v in data.get(name) or ())
        values["rows"] = tuple(int(v) for v in data.get("rows") or ())
        for name in ("centrality", "eigenvalues"):
            values[name] = tuple(data.get(name) or ())
        values["cue"] = Cue.from_json(data.get("cue"))
        values["verification"] = Verification.from_json(data.get("verification"))
        values["trust"] = FindingTrust.from_json(data.get("trust"))
        values["status"] = data.get("status") or "new"
        return cls(**{"id": str(data.get("id")), "true_label": str(data.get("true_label")),
                      "predicted_label": str(data.get("predicted_label")), **values})


# ---------------------------------------------------------------- cues and stable IDs

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


def stable_id(true_label: str, predicted_label: str, cell: str) -> str:
    """``F-`` + 8 hex digits of the SHA-1 of ``true_label``, ``predicted_label`` and ``cell`` (a ``CUE_CELLS``
    name), joined by newlines."""
    digest = hashlib.sha1("\n".join([true_label, predicted_label, cell]).encode()).hexdigest()[:8]
    return f"F-{digest}"


def assign_ids(findings: list[Finding], maps: np.ndarray, map_of: dict[int, int]) -> list[Finding]:
    """Each finding with its ``cue`` (``cue_descriptor`` of its members' maps) and stable ``id``.

    Parameters
    ----------
    findings : list of Finding
        Each pair's findings best-scored first (the order decides ``-2``, ``-3``).
    maps, map_of : np.ndarray, dict
        float ``[m, H, W]`` maps of the selected images; a prediction row id to its index in ``maps``.
    """
    seen: dict[str, int] = {}
    out = []
    for f in findings:
        cue = cue_descriptor(maps[[map_of[int(r)] for r in f.rows]])
        base = stable_id(f.true_label, f.predicted_label, cue.cell)
        seen[base] = seen.get(base, 0) + 1
        fid = base if seen[base] == 1 else f"{base}-{seen[base]}"
        out.append(dataclasses.replace(f, id=fid, cue=dataclasses.replace(cue, id=fid)))
    return out


def finding_score(finding: Finding) -> float:
    """The score of ``finding``: ``support * coherence * (1 + causal)`` (``causal`` None counts as 0)."""
    return float(finding.support) * float(finding.coherence) * (1.0 + float(finding.causal or 0.0))


def ranked(findings: list[Finding]) -> list[Finding]:
    """The ``findings`` scored (rounded to 6 digits), sorted by score (ties by id) and numbered from rank 1."""
    scored = [dataclasses.replace(f, score=round(finding_score(f), 6)) for f in findings]
    scored.sort(key=lambda f: (-f.score, f.id))
    return [dataclasses.replace(f, rank=rank) for rank, f in enumerate(scored, start=1)]
