"""Link: one cue, one story.

A verified finding with a conclusive cue carries a *cue detector*
(``audit.interventions.RegionTest.detector``): the target-layer channels whose
spatial maximum rises when its region is pasted onto clean images. Its score on an
image is the mean standardised ``presence`` of those channels (the predict stage
stores ``presence`` for every image), its threshold the midpoint between the
median scores of the pasted images and of their random-region controls; ``check``
records how well it separates them (a detector that flags fewer than
``MIN_CHECK`` of the pasted images, or of the controls' complement, is not used).

With it, on the whole data set:

* ``cue_slice``: the readable images labelled with the class the cue argues for
  (the finding's predicted class), split by the detector: accuracy with and
  without the cue; a strategy's members become all the class's correct
  predictions that carry it (clustering may have cut them into several groups),
  and a strategy whose grown members are mostly a better-ranked strategy's of the
  same class (more than ``discovery.max_overlap``) is that finding again: dropped;
* ``same_cue``: another finding with the same predicted class whose members carry
  the cue at least ``link.min_share`` of the time (the victims and the strategy);
* ``missing_cue``: a group of the cue's own class called something else whose
  members carry it at most ``link.max_missing_share`` of the time, when the class
  does worse without the cue than with it (the cue's absence is the cause).

Links are recorded on both findings (``related``). A strategy linked to no error
whose class does as well without the cue as with it (by less than
``strategies.min_gap``) is dropped: the model has other evidence, so the cue is no
shortcut. ``ranked_by_group`` then orders
the findings so that each cue's story stays together: groups of linked findings by
their best score; inside a group the error groups carrying the cue (the harm
already done), then the strategy (the risk that explains them), then the groups
the cue's absence explains, each best first.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from audit import artifacts
from audit.config import Config
from audit.findings import CueSlice, Finding, finding_score

MIN_CHECK = 0.6


def scores(detector: dict, presence: np.ndarray) -> np.ndarray:
    """``detector`` (``RegionTest.detector``) scores ``[n]`` of images with channel ``presence`` ``[n, c]``."""
    channels = detector["channels"]
    return ((presence[:, channels] - detector["mean"]) / detector["scale"]).mean(axis=1)


def link(config: Config, run_dir: Path, predictions: pd.DataFrame, findings: list[Finding]) -> list[Finding]:
    """The ``findings`` with ``cue_slice`` and ``related`` set, ordered by ``ranked_by_group``.

    ``config``: ``link.*``; ``run_dir``: the run folder (stored target-layer presence);
    ``predictions``: the predict stage's table.
    """
    if not config.link.enabled:
        return findings
    rows, presence = artifacts.read_cams(run_dir, "presence")
    if not len(rows):
        return findings
    at = {int(r): i for i, r in enumerate(rows)}
    table = predictions[predictions["error"].isna()]
    label = table["label"].astype(str).to_numpy()
    right = (table["predicted"].astype(str).to_numpy() == label)
    known = np.array([int(r) in at for r in table["row"]])
    index = np.array([at.get(int(r), 0) for r in table["row"]])
    findings = list(findings)
    related: dict[str, list[tuple[str, str]]] = {f.id: list(f.related) for f in findings}
    dropped: set[str] = set()
    for k, f in enumerate(findings):
        if f.detector is None or not _conclusive(config, f):
            continue
        threshold = float((np.median(f.detector["top"]) + np.median(f.detector["random"])) / 2)
        check = {"n": int(len(f.detector["top"])), "threshold": round(threshold, 4),
                 "pasted_flagged": round(float(np.mean(f.detector["top"] >= threshold)), 4),
                 "controls_clear": round(float(np.mean(f.detector["random"] < threshold)), 4)}
        if min(check["pasted_flagged"], check["controls_clear"]) < MIN_CHECK:
            findings[k] = dataclasses.replace(f, cue_slice=None)
            continue
        flagged_all = scores(f.detector, presence) >= threshold
        flagged = {int(r) for r, v in zip(rows, flagged_all) if v}
        mine = known & (label == f.predicted_label)
        carry = mine & flagged_all[index]
        cue_slice = CueSlice(label=f.predicted_label, n_with=int(carry.sum()), n_without=int((mine & ~carry).sum()),
                             accuracy_with=_rate(right[carry]), accuracy_without=_rate(right[mine & ~carry]),
                             detector=f"{len(f.detector['channels'])} target-layer channels that pasting the cue "
                                      f"switches on", check=check)
        findings[k] = f = dataclasses.replace(f, cue_slice=cue_slice)
        if f.kind == "strategy":   # its members: every correct prediction of the class that carries the cue
            findings[k] = f = _grown(f, table, carry & right, int(mine.sum()))
            mine_rows = set(f.rows)
            if any(g.kind == "strategy" and g.true_label == f.true_label and g.id not in dropped
                   and len(mine_rows & set(g.rows)) > config.discovery.max_overlap * len(mine_rows)
                   for g in findings[:k]):
                dropped.add(f.id)   # the same cue as a better-ranked strategy of the class: one finding
                continue
        worse_without = (cue_slice.accuracy_with or 0) > (cue_slice.accuracy_without or 0)
        for g in findings:
            if g.id == f.id or not g.rows:
                continue
            share = float(np.mean([int(r) in flagged for r in g.rows]))
            relation = None
            if g.predicted_label == f.predicted_label and share >= config.link.min_share:
                relation = "same_cue"
            elif (g.true_label == f.predicted_label and g.kind == "error" and worse_without
                  and share <= config.link.max_missing_share):
                relation = "missing_cue"
            if relation:
                for a, b in ((f.id, g.id), (g.id, f.id)):
                    if (b, relation) not in related[a]:
                        related[a].append((b, relation))
    by_id = {f.id: f for f in findings}   # with their slices: a root is a finding with a working detector
    out = []
    for f in findings:
        related[f.id] = [(i, r) for i, r in related[f.id] if i not in dropped]
        if f.id in dropped or f.kind == "strategy" and not related[f.id] and not _shortcut(config, f):
            continue   # a cue the class does as well without, explaining no error: not a shortcut
        f = dataclasses.replace(f, related=tuple(related[f.id]))
        roots = [by_id[i] for i, r in f.related
                 if r == "missing_cue" and i in by_id and by_id[i].predicted_label == f.true_label
                 and by_id[i].cue_slice is not None and f.cue_slice is None]
        if roots and f.cue is not None and roots[0].cue is not None and roots[0].cue.text:
            text = f"without the cue {roots[0].predicted_label} relies on ({roots[0].cue.text})"
            f = dataclasses.replace(f, cue=dataclasses.replace(f.cue, text=text))
        out.append(f)
    return ranked_by_group(out)


def _grown(finding: Finding, table: pd.DataFrame, members: np.ndarray, n_class: int) -> Finding:
    """A confirmed strategy whose members become all the correct predictions its cue detector
    flags (``members``: a mask over ``table``): clustering may have cut the cue's images into
    several groups, the detector sees them all. Support follows (half a member each)."""
    if members.sum() <= finding.size:
        return finding
    keep = set(finding.rows)
    rows = table["row"].to_numpy()[members]
    order = sorted(range(len(rows)), key=lambda i: (int(rows[i]) not in keep, int(rows[i])))
    paths = table["path"].astype(str).to_numpy()[members]
    return dataclasses.replace(finding, rows=tuple(int(rows[i]) for i in order),
                               members=tuple(str(paths[i]) for i in order),
                               centrality=tuple(finding.centrality) + (min(finding.centrality, default=0.0),)
                               * (len(rows) - finding.size),
                               support=round(0.5 * len(rows) / max(n_class, 1), 6))


def _shortcut(config: Config, finding: Finding) -> bool:
    """A strategy linked to no error is kept when its slice shows the class does at least
    ``strategies.min_gap`` worse without the cue (or when no slice could be measured)."""
    s = finding.cue_slice
    if s is None or s.accuracy_with is None or s.accuracy_without is None:
        return True
    return s.accuracy_with - s.accuracy_without >= config.strategies.min_gap


def _conclusive(config: Config, finding: Finding) -> bool:
    """A region cue confirmed by intervention (a detector is only built from pasted regions)."""
    return finding.confirmed(config.trust.min_lift, float("inf"))


def _rate(hits: np.ndarray) -> float | None:
    return round(float(np.mean(hits)), 4) if len(hits) else None


def ranked_by_group(findings: list[Finding]) -> list[Finding]:
    """``findings`` numbered from rank 1: groups of linked findings by their best score; inside a
    group, error findings carrying the cue, then strategies, then the groups its absence
    explains (linked by ``missing_cue`` only), each best first. ``story`` numbers the groups
    (a finding linked to none is a story of its own)."""
    by_id = {f.id: f for f in findings}
    group: dict[str, int] = {}
    for f in sorted(findings, key=lambda f: (-finding_score(f), f.id)):
        if f.id in group:
            continue
        stack, group[f.id] = [f.id], len(group)
        while stack:
            for other, _ in by_id[stack.pop()].related:
                if other in by_id and other not in group:
                    group[other] = group[f.id]
                    stack.append(other)
    best: dict[int, float] = {}
    for f in findings:
        best[group[f.id]] = max(best.get(group[f.id], -1.0), finding_score(f))
    missing = {f.id for f in findings if f.related and all(r == "missing_cue" for _, r in f.related)}
    order = sorted(findings, key=lambda f: (-best[group[f.id]], group[f.id], f.id in missing, f.kind == "strategy",
                                            -finding_score(f), f.id))
    stories = {g: i for i, g in enumerate(dict.fromkeys(group[f.id] for f in order), start=1)}
    return [dataclasses.replace(f, score=round(finding_score(f), 6), rank=i, story=stories[group[f.id]])
            for i, f in enumerate(order, start=1)]
