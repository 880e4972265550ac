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
get ``-2``, ``-3``, ... in rank order (``assign_ids``); ``audit.stages.locate`` then places
the ``cue`` at the size of the evidence (the ID keeps naming the discover-time cell).

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

from audit.cues import Cue, cue_descriptor


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

    def confirmed(self, min_lift: float) -> bool:
        """The lift is at least ``min_lift`` and conclusive: ``lift - 3 se > 0``."""
        if self.lift is None or self.lift < min_lift:
            return False
        return self.se is not None and self.lift - 3 * self.se > 0

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
    threshold (None when not measured); ``level``: high (both), medium (one) or low,
    never high when ``limits`` (why not, in words) is not empty; ``text``: the judgement
    in plain words.
    """

    agreement: float | None
    n_images: int
    lift: float | None
    agrees: bool | None
    confirmed: bool | None
    level: str
    text: str | None = None
    limits: tuple[str, ...] = ()

    def to_json(self) -> dict:
        """The record as its ``summary.json`` object (a ``dict`` of its fields)."""
        return {**dataclasses.asdict(self), "limits": list(self.limits)}

    @classmethod
    def from_json(cls, data: dict | None) -> "FindingTrust | None":
        """The record of a ``to_json`` ``data`` (unknown keys ignored), or None when ``data`` is not a dict."""
        if not isinstance(data, dict):
            return None
        values = {"agreement": None, "n_images": 0, "lift": None, "agrees": None, "confirmed": None, "level": "low"}
        values = {**values, **_fields(cls, data)}
        values["limits"] = tuple(values.get("limits") or ())
        return cls(**values)


@dataclass(frozen=True)
class PropertyTest:
    """A global-cue hypothesis tested by intervention (``audit.interventions``).

    ``property`` (a name of ``audit.properties.MEASURES``) differs between the finding's
    members and clean images by ``effect`` (standardised mean difference, members minus
    clean); ``direction`` ``"lower"``/``"higher"``; ``shift`` names the intervention that
    moves clean images that way (``strength`` its parameter), ``test`` counts the clean
    images moved to the finding's predicted class by it against a placebo shift of the
    same size in the opposite direction (``Intervention``: ``rate`` shift, ``random_rate``
    placebo).
    """

    property: str
    effect: float
    direction: str
    shift: str | None = None
    strength: float | None = None
    test: Intervention | None = None

    def to_json(self) -> dict:
        """The test as its ``summary.json`` object."""
        return {"property": self.property, "effect": self.effect, "direction": self.direction,
                "shift": self.shift, "strength": self.strength, "test": _json(self.test)}

    @classmethod
    def from_json(cls, data: dict | None) -> "PropertyTest | None":
        """The test of a ``to_json`` ``data`` (unknown keys ignored), or None when ``data`` is not a dict."""
        if not isinstance(data, dict):
            return None
        return cls(**{**_fields(cls, data), "test": Intervention.from_json(data.get("test"))})


@dataclass(frozen=True)
class CueSlice:
    """The slice a confirmed cue defines on the whole data set (``audit.stages.link``).

    Over the readable images labelled ``label`` (the class the cue argues for, or the
    victims' class): ``n_with`` / ``n_without`` images carry / lack the cue by the cue
    detector, ``accuracy_with`` / ``accuracy_without`` the model's accuracy on each
    (None for an empty side); ``detector`` says how the cue is detected and
    ``check`` the detector's agreement with pasting the cue on a sample (share of pasted
    images it flags, and of their random-region controls it does not).
    """

    label: str
    n_with: int
    n_without: int
    accuracy_with: float | None
    accuracy_without: float | None
    detector: str
    check: dict | None = field(default=None, hash=False)

    def to_json(self) -> dict:
        """The slice as its ``summary.json`` object (a ``dict`` of its fields)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> "CueSlice | None":
        """The slice of a ``to_json`` ``data`` (unknown keys ignored), or None when ``data`` is not a dict."""
        return cls(**_fields(cls, data)) if isinstance(data, dict) else None


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

    ``kind``: ``"error"`` (a group of misclassified / low-confidence images of a confusion
    pair) or ``"strategy"`` (correct predictions of one class, ``true_label ==
    predicted_label``, whose evidence is a confirmed cue). Link sets ``related``
    (``(id, relation)`` pairs, relation ``same_cue`` or ``missing_cue``), ``cue_slice`` and
    ``story`` (1 = the best-ranked group of linked findings: one cue, one story);
    verify sets ``properties`` (global-cue tests) and ``detector`` (the cue's detector on
    target-layer channels, ``audit.interventions.RegionTest.detector``; kept in memory only).
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
    kind: str = "error"
    related: tuple[tuple[str, str], ...] = ()
    properties: tuple[PropertyTest, ...] = ()
    cue_slice: CueSlice | None = None
    story: int | None = None
    detector: dict | None = field(default=None, hash=False, compare=False, repr=False)   # not in summary.json

    @property
    def size(self) -> int:
        """Number of members."""
        return len(self.members)

    @property
    def best_lift(self) -> float | None:
        """The largest lift of any intervention test (region or property); None when none ran."""
        lifts = [t.test.lift for t in self.properties if t.test is not None and t.test.lift is not None]
        region = self.verification.best_lift if self.verification is not None else None
        lifts += [region] if region is not None else []
        return max(lifts) if lifts else None

    def confirmed(self, min_lift: float, min_property_lift: float) -> bool:
        """Confirmed by intervention: every region test that ran (occlusion: hiding the cue undoes
        the prediction; transplant: pasting it causes it) with a conclusive lift of at least
        ``min_lift`` (``Intervention.confirmed``: ``lift - 3 se > 0``), or a property test with one
        of at least ``min_property_lift``. A region that only pastes well (a genuine feature
        of the predicted class, as in a natural confusion) is not a confirmed cue."""
        v = self.verification
        region = [t for t in (v.occlusion, v.transplant) if t is not None and t.n] if v is not None and v.verified \
            else []
        return (bool(region) and all(t.confirmed(min_lift) for t in region)
                or any(p.test is not None and p.test.confirmed(max(min_lift, min_property_lift))
                       for p in self.properties))

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
        out["kind"] = self.kind
        out["related"] = [{"id": i, "relation": r} for i, r in self.related]
        out["properties"] = _json(self.properties)
        out["cue_slice"] = _json(self.cue_slice)
        out["story"] = self.story
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
        values["kind"] = data.get("kind") or "error"
        values["related"] = tuple((str(r["id"]), str(r.get("relation"))) if isinstance(r, dict) else (str(r), "")
                                  for r in data.get("related") or ())
        values["properties"] = tuple(p for p in map(PropertyTest.from_json, data.get("properties") or ()) if p)
        values["cue_slice"] = CueSlice.from_json(data.get("cue_slice"))
        return cls(**{"id": str(data.get("id")), "true_label": str(data.get("true_label")),
                      "predicted_label": str(data.get("predicted_label")), **values})


# ---------------------------------------------------------------- cues and stable IDs

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
