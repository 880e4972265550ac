"""Plan: how many selected images of each group every attribution method explains.

The attribute stage first explains one small batch of the selection (``PROBE``
images, at most ``attribution.batch_size``) with every method (the probe: its
maps are kept, like any other chunk's) and times each method per image; a costly
method batches its own passes (IG's steps, occlusion's patches), so a few images
measure it. The plan then spends the attribution time where it matters:

* groups: each confusion pair of the selection, most suspicious first (its error
  rate ``errors(true -> predicted) / images(true)`` above the rate expected if
  errors fell evenly on the other classes, ``error rate / (K - 1)``; then size),
  then each class's contrast images;
* inside a group, images in a stratified order: ranked (misclassified by
  confidence, then low-confidence by margin), then visited along the golden-ratio
  sequence, so that every prefix spreads over the ranking; a method explains a
  prefix of that order, the probe's images being the first ones;
* full methods (the first method, which drives discovery and verification, and
  any method at most ``CHEAP`` times the cheapest one's measured cost) explain
  every selected image, group by group, before the costly methods get any time;
* costly methods (all the same images, so that trust compares them on one set)
  explain a sample per group: first ``FIRST_SAMPLE`` images in every group, most
  suspicious first, then up to ``attribution.sample_per_pair``; at most
  ``attribution.sample_total`` images in all, so that their cost does not grow
  with the number of pairs (about 170 forward-pass equivalents per image at 224 px,
  against 1 for predict).

Without ``run.budget`` only the sample cap applies. With it, the attribution time
is the budget minus what the run already spent, minus the stages after
attribution (estimated from their model-pass counts, ``later_seconds``), minus a
``MARGIN`` share of the budget. When they and the attribution without a budget do
not fit together, and those stages would take more than ``LATER_SHARE`` of what is
left (or more than what the full methods leave of it), their sample sizes are capped
(``later_caps``:
``trust.sample``, ``trust.sanity_sample``, ``verify.max_samples``,
``internals.steps``, ``internals.max_images``, scaled down alike; ``internals.findings``
0 when they get less than a quarter of their estimate), and the plan says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from audit.config import Config
from audit.stages.later import later_caps, later_seconds, with_caps

PROBE = 8              # images of the probe batch (at most attribution.batch_size)
CHEAP = 3.0            # a method within this factor of the cheapest method's cost explains every image
FIRST_SAMPLE = 8       # costly methods' first round per group: a few maps of each pair beside the first method's
MARGIN = 0.05          # share of the budget kept unplanned (estimates are estimates)
GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class Group:
    """One group of the selection the plan allocates images to.

    Attributes
    ----------
    name : str
        ``"true -> predicted"`` for a confusion pair, ``"class (contrast)"`` for contrast images.
    rows : tuple of int
        Its prediction row ids in stratified order (every prefix is a stratified sample).
    why : str
        Its priority in words, e.g. "error rate 37% (expected 4%)".
    """

    name: str
    rows: tuple[int, ...]
    why: str


@dataclass(frozen=True)
class Plan:
    """What each method explains, why, and the time it is expected to take.

    Attributes
    ----------
    methods : tuple of str
        The configured methods, in ``attribution.methods`` order.
    full : tuple of str
        The methods that explain every selected image (the rest explain a sample).
    costs : tuple of (str, float)
        Measured seconds per image of each method on the probe batch.
    groups : tuple of Group
        In priority order.
    counts : tuple of tuple of int
        ``counts[g][m]``: images of group ``g`` method ``m`` explains (a prefix of its rows).
    budget : float or None
        ``run.budget`` in seconds.
    spent : float
        Seconds the run had spent when the plan was made.
    attribute : float
        Estimated seconds of the attribution left to do.
    later : tuple of (str, float)
        Estimated seconds of each stage after attribution.
    caps : tuple of (str, int)
        Settings of those stages capped to fit the budget (``later_caps``), e.g. ``("trust.sample", 8)``.
    """

    methods: tuple[str, ...]
    full: tuple[str, ...]
    costs: tuple[tuple[str, float], ...]
    groups: tuple[Group, ...]
    counts: tuple[tuple[int, ...], ...]
    budget: float | None
    spent: float
    attribute: float
    later: tuple[tuple[str, float], ...]
    caps: tuple[tuple[str, int], ...] = ()

    @property
    def estimate(self) -> float:
        """Seconds the whole run is expected to take: spent + attribution + later stages."""
        return self.spent + self.attribute + sum(s for _, s in self.later)

    def rows(self, method: str) -> np.ndarray:
        """int64 ``[n]``: the prediction rows ``method`` explains (sorted)."""
        j = self.methods.index(method)
        picked = [r for g, c in zip(self.groups, self.counts) for r in g.rows[:c[j]]]
        return np.sort(np.asarray(picked, np.int64))

    def lines(self) -> list[str]:
        """The plan in words, one line per group and a last line with the estimate."""
        out = []
        for group, count in zip(self.groups, self.counts):
            parts = ", ".join(f"{c} x {m}" for m, c in zip(self.methods, count))
            out.append(f"{group.name}: {len(group.rows)} images; {parts} ({group.why})")
        costs = ", ".join(f"{m} {s:.3g} s" for m, s in self.costs)
        budget = "no budget" if self.budget is None else f"budget {_minutes(self.budget)}"
        out.append(f"per image: {costs}; costly methods on a sample: {', '.join(self.costly) or 'none'}; "
                   f"estimated {_minutes(self.estimate)} ({budget})")
        if self.caps:
            out.append("capped to fit the budget: " + ", ".join(f"{k} {v}" for k, v in self.caps))
        if self.budget is not None and self.estimate > self.budget:
            later = ", ".join(f"{k} {_minutes(v)}" for k, v in self.later)
            out.append(f"warning: the budget is too small: before attribution {_minutes(self.spent)}, after it "
                       f"{later} (estimated)")
        return out

    @property
    def costly(self) -> tuple[str, ...]:
        """The methods that explain a sample per group."""
        return tuple(m for m in self.methods if m not in self.full)

    def to_json(self) -> dict:
        """JSON-ready record for ``run.json`` and the report."""
        return {"budget": self.budget, "spent": round(self.spent, 1), "attribute": round(self.attribute, 1),
                "later": {k: round(v, 1) for k, v in self.later}, "estimate": round(self.estimate, 1),
                "caps": dict(self.caps),
                "methods": list(self.methods), "full": list(self.full),
                "costs": {m: round(s, 5) for m, s in self.costs},
                "groups": [{"name": g.name, "images": len(g.rows), "why": g.why,
                            "counts": dict(zip(self.methods, map(int, c)))} for g, c in zip(self.groups, self.counts)]}


def plan_from_json(data: dict, ordered: list[Group]) -> Plan:
    """The ``Plan`` that ``Plan.to_json`` wrote (``data``), over the same ``groups`` (``ordered``)."""
    counts = {g["name"]: g["counts"] for g in data["groups"]}
    methods = tuple(data["methods"])
    return Plan(methods=methods, full=tuple(data["full"]), costs=tuple(data["costs"].items()),
                groups=tuple(ordered),
                counts=tuple(tuple(int(counts.get(g.name, {}).get(m, 0)) for m in methods) for g in ordered),
                budget=data["budget"], spent=data["spent"], attribute=data["attribute"],
                later=tuple(data["later"].items()), caps=tuple((data.get("caps") or {}).items()))


def groups(selection: pd.DataFrame, predictions: pd.DataFrame) -> list[Group]:
    """The selection's groups, most suspicious first, each in stratified order.

    Parameters
    ----------
    selection : pd.DataFrame
        The select stage's table: ``row``, ``reason``, ``true_label``, ``pair_label``, ``pair``,
        ``confidence``, ``margin``.
    predictions : pd.DataFrame
        The predict stage's table (``label``, ``predicted``, ``error``): the pairs' error rates.

    Returns
    -------
    list of Group
        Confusion pairs by excess error rate (descending), then size; then contrast classes.
    """
    valid = predictions[predictions["error"].isna()]
    n_classes = max(valid["label"].nunique(), 2)
    per_class = valid["label"].value_counts()
    wrong = valid[valid["label"] != valid["predicted"]]
    pair_errors = (wrong["label"] + " -> " + wrong["predicted"]).value_counts()
    expected = len(wrong) / max(len(valid), 1) / (n_classes - 1)
    ranked = []
    errors = selection[selection["reason"] != "contrast"]
    for name, part in errors.groupby("pair", sort=True):
        rate = pair_errors.get(name, 0) / max(per_class.get(part["true_label"].iloc[0], 0), 1)
        ranked.append((-(rate - expected), -len(part), name,
                       Group(name, _stratified(part), f"error rate {rate:.0%}, expected {expected:.0%}")))
    contrast = selection[selection["reason"] == "contrast"]
    for name, part in contrast.groupby("true_label", sort=True):
        ranked.append((math.inf, -len(part), name, Group(f"{name} (contrast)", _stratified(part),
                                                          "correct and confident, compared against")))
    return [g for *_, g in sorted(ranked, key=lambda t: t[:3])]


def _stratified(part: pd.DataFrame) -> tuple[int, ...]:
    """``part``'s rows ranked (misclassified by confidence descending, then low confidence by margin,
    contrast by confidence), then visited along the golden-ratio sequence: every prefix is spread."""
    order = part.assign(first=part["reason"] != "misclassified",
                        key=np.where(part["reason"] == "low_confidence", part["margin"], -part["confidence"]))
    rows = order.sort_values(["first", "key", "row"], kind="stable")["row"].to_numpy(np.int64)
    visit = np.argsort((np.arange(len(rows)) * GOLDEN) % 1.0, kind="stable")
    return tuple(int(r) for r in rows[visit])


def probe_rows(ordered: list[Group], size: int) -> np.ndarray:
    """int64 ``[<= size]``: the images the probe explains with every method: the first of each group's
    stratified order, taken group by group from the most suspicious one of ``ordered`` (so the plan keeps
    them all); ``size``: the attribution batch."""
    picked: list[int] = []
    for g in ordered:
        picked.extend(g.rows[:size - len(picked)])
    return np.asarray(picked, np.int64)


def allocate(sizes: list[int], done: list[int], costs: dict[str, float], overhead: float, full: tuple[str, ...],
             seconds: float | None, sample: int | None, min_sample: int,
             total: int | None = None) -> list[dict[str, int]]:
    """Images per group and method: pure numbers.

    Parameters
    ----------
    sizes : list of int
        Images per group, groups in priority order.
    done : list of int
        Images per group already explained by every method (the probe; a prefix of each group).
    costs : dict of str to float
        Seconds per image of each method (the keys are the methods, in order).
    overhead : float
        Seconds per image besides the methods (decoding), paid once per image explained.
    full : tuple of str
        The methods that explain every image before the costly ones get any.
    seconds : float or None
        Time available for the images not yet done; None: unlimited.
    sample : int or None
        Costly methods' cap per group (``attribution.sample_per_pair``); None: no cap.
    min_sample : int
        Costly methods' first round: this many per group, most suspicious group first, before any
        group gets more.
    total : int or None
        Costly methods' cap in all groups together, the probe's images included
        (``attribution.sample_total``); None: no cap.

    Returns
    -------
    list of dict
        Per group, ``{method: images}``; a costly method's images are among the full methods'.
    """
    left = math.inf if seconds is None else max(seconds, 0.0)
    per_full = overhead + sum(costs[m] for m in full)
    per_costly = sum(c for m, c in costs.items() if m not in full)
    covered = list(done)
    for g, n in enumerate(sizes):
        take = min(n - covered[g], _affordable(left, per_full))
        covered[g] += take
        left -= take * per_full
    sampled = list(done)
    cap = math.inf if sample is None else sample
    room = math.inf if total is None else max(total - sum(done), 0)
    for level in (min(min_sample, cap), cap):
        for g in range(len(sizes)):
            want = max(min(level, covered[g]) - sampled[g], 0)
            take = min(want, _affordable(left, per_costly), room)
            sampled[g] += take
            room -= take
            left -= take * per_costly
    return [{m: (covered[g] if m in full else sampled[g]) for m in costs} for g in range(len(sizes))]


def _affordable(left: float, per_image: float) -> float:
    if per_image <= 0 or math.isinf(left):
        return math.inf
    return math.floor(left / per_image + 1e-9)


def full_methods(methods: tuple[str, ...], costs: dict[str, float]) -> tuple[str, ...]:
    """Of ``methods`` (in ``attribution.methods`` order), the first (discovery's) and every method whose
    ``costs`` (seconds per image, measured) are within ``CHEAP`` times the cheapest one's."""
    cheapest = min(costs.values())
    return tuple(m for i, m in enumerate(methods) if i == 0 or costs[m] <= CHEAP * cheapest)


def make_plan(config: Config, selection: pd.DataFrame, predictions: pd.DataFrame, probe: dict,
              spent: float) -> Plan:
    """The plan of ``config``'s attribution from the probe's measurements.

    Parameters
    ----------
    config : Config
        ``attribution.methods``, ``attribution.sample_per_pair``, ``run.budget`` and the later
        stages' settings.
    selection, predictions : pd.DataFrame
        The select and predict stages' tables.
    probe : dict
        The probe partition's result (``audit.stages.attribute.attribute_partition``): ``rows``,
        ``seconds`` per method, ``wall`` and ``forward`` (seconds for the whole batch).
    spent : float
        Seconds the run has spent so far.

    Returns
    -------
    Plan
    """
    from audit.config.checks import seconds_of

    methods = tuple(config.attribution.methods)
    n_probe = max(len(probe["rows"]), 1)
    costs = {m: probe["seconds"][m] / n_probe for m in methods}
    overhead = max(probe["wall"] - sum(probe["seconds"].values()) - probe["forward"], 0.0) / n_probe
    forward = probe["forward"] / n_probe
    ordered = groups(selection, predictions)
    probed = set(probe["rows"])
    done = [sum(r in probed for r in g.rows) for g in ordered]
    full = full_methods(methods, costs)
    n_images = int(predictions["error"].isna().sum())
    later = later_seconds(config, n_images, len(selection), forward, costs)
    budget = seconds_of(config.run.budget)
    per_full = overhead + sum(costs[m] for m in full)
    cover = sum(len(g.rows) - d for g, d in zip(ordered, done)) * per_full   # the full methods on every image
    sizes = [len(g.rows) for g in ordered]

    def allocated(seconds: float | None) -> tuple[list[dict[str, int]], float]:
        counts = allocate(sizes, done, costs, overhead, full, seconds, config.attribution.sample_per_pair,
                          min(config.verify.max_samples, FIRST_SAMPLE), config.attribution.sample_total)
        return counts, sum((c[full[0]] - d) * per_full + sum((c[m] - d) * costs[m] for m in methods if m not in full)
                           for c, d in zip(counts, done))

    counts, work = allocated(None)   # what the attribution wants without a budget
    caps = {} if budget is None else later_caps(config, budget * (1 - MARGIN) - spent, sum(later.values()), cover,
                                                wanted=work)
    if caps:
        later = later_seconds(with_caps(config, caps), n_images, len(selection), forward, costs)
    if budget is not None:   # the full methods drive discovery: they may take trust's and internals' time
        left = budget * (1 - MARGIN) - spent
        counts, work = allocated(max(left - sum(later.values()),
                                     min(cover, left - later["verify"] - later["discover_render"])))
    return Plan(methods=methods, full=full, costs=tuple(costs.items()), groups=tuple(ordered),
                counts=tuple(tuple(c[m] for m in methods) for c in counts), budget=budget, spent=spent,
                attribute=work, later=tuple(later.items()), caps=tuple(caps.items()))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
