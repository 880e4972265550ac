"""Baseline matching: this night's findings against the previous night's.

Finding IDs are derived from content (``audit.findings.assign_ids``: the
confusion pair and the grid cell of the cue's centre). A run is matched to its
baseline pair by pair: a finding and a baseline finding of the same pair match
when their cues look alike: centres (``cue.x``, ``cue.y``, fractions of the
image) at most ``baseline.tolerance`` apart and focus (``cue.focus``, how
concentrated the members' maps are) within a factor ``2 **
baseline.focus_tolerance``; or when their members overlap by at least
``baseline.min_overlap`` (Jaccard of the manifest paths). Candidate couples are
taken greedily, most alike first (then largest overlap), each finding at most
once. A matched finding is ``persisting`` and takes the baseline's ID, so a
cue keeps its ID over nights even when its centre drifts across a cell border;
an unmatched one is ``new`` (its own ID, with ``-2``, ``-3``, ... should that ID
be taken by a baseline finding); baseline findings left unmatched are
``resolved``. Without a baseline every finding is ``new``.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from audit import artifacts
from audit.errors import UsageError
from audit.findings import Finding
from audit.nightly.history import history_path, read_history
from audit.nightly.runs import Run, read_run


def resolve_baseline(config) -> Run | None:
    """The baseline run of ``config``'s ``baseline.run_dir`` (``latest``: the newest other finished run in the
    history; None when there is none or no baseline is set).

    Raises
    ------
    UsageError
        When the baseline is the run folder itself or not a finished run folder.
    """
    where = config.baseline.run_dir
    if where is None:
        return None
    if where == "latest":
        path = history_path(config)
        runs = read_history(path) if path is not None and path.is_file() else pd.DataFrame()
        here = str(config.run_dir.resolve())
        runs = runs[(runs["run_id"] != config.run_id) & runs["run_dir"].notna() & (runs["run_dir"] != here)
                    ] if len(runs) else runs
        runs = runs[[Path(d).joinpath(artifacts.SUMMARY).is_file() for d in runs["run_dir"]]] if len(runs) else runs
        if not len(runs):
            return None
        where = runs.sort_values(["created", "run_id"]).iloc[-1]["run_dir"]
    if Path(where).resolve() == config.run_dir.resolve():
        raise UsageError(f"--baseline {where}: is the run folder itself; give the previous run's folder")
    return read_run(where, "baseline run folder")


def _distance(a: Finding, b: Finding, tolerance: float, focus_tolerance: float) -> float:
    """How unlike two cues are: the larger of centre distance / ``tolerance`` and |log2 focus
    ratio| / ``focus_tolerance`` (alike when at most 1). Without cues: 0 for equal IDs, else inf."""
    if a.cue is None or b.cue is None:
        return 0.0 if a.id == b.id else math.inf
    try:
        centre = math.hypot(float(a.cue.x) - float(b.cue.x), float(a.cue.y) - float(b.cue.y))
        focus = abs(math.log2(max(float(a.cue.focus), 1e-6) / max(float(b.cue.focus), 1e-6)))
    except (TypeError, ValueError):
        return 0.0 if a.id == b.id else math.inf
    return max(centre / tolerance if tolerance > 0 else (0.0 if centre == 0 else math.inf),
               focus / focus_tolerance if focus_tolerance > 0 else (0.0 if focus == 0 else math.inf))


def _overlap(a: Finding, b: Finding) -> float:
    ma, mb = set(a.members), set(b.members)
    return len(ma & mb) / len(ma | mb) if ma | mb else 0.0


def match(findings: list[Finding], baseline: list[Finding], tolerance: float, focus_tolerance: float,
          min_overlap: float) -> dict[int, int]:
    """Index of the matched baseline finding for each matched finding (see the module docstring).

    Parameters
    ----------
    findings, baseline : list of Finding
        This night's findings and the baseline's.
    tolerance : float
        Largest distance between cue centres, fraction (0..1) of the image.
    focus_tolerance : float
        Largest ``|log2|`` ratio of the cues' focus.
    min_overlap : float
        Smallest Jaccard overlap (0..1) of members that matches on its own.

    Returns
    -------
    dict of int to int
        Index into ``findings`` -> index into ``baseline``.
    """
    couples = []
    for i, f in enumerate(findings):
        for j, b in enumerate(baseline):
            if f.pair != b.pair:
                continue
            distance, overlap = _distance(f, b, tolerance, focus_tolerance), _overlap(f, b)
            if distance <= 1.0 or overlap >= min_overlap:
                couples.append((distance if distance <= 1.0 else math.inf, -overlap, i, j))
    matched: dict[int, int] = {}
    taken: set[int] = set()
    for _, _, i, j in sorted(couples):
        if i not in matched and j not in taken:
            matched[i] = j
            taken.add(j)
    return matched


def baseline_findings(run: Run) -> list[Finding]:
    """The findings of the finished ``run``, as records."""
    return [Finding.from_json(f) for f in run.summary["findings"] if isinstance(f, dict)]


def apply_baseline(findings: list[Finding], baseline: Run | None, tolerance: float, focus_tolerance: float,
                   min_overlap: float) -> tuple[list[Finding], list[dict]]:
    """The findings with their ``status`` (and ``id`` / ``baseline`` when matched), and the resolved
    baseline findings (``id, true_label, predicted_label, size, score``).

    Parameters
    ----------
    findings : list of Finding
        This night's findings (each restarts from its content ID).
    baseline : Run or None
        The baseline run; None: every finding is ``new``.
    tolerance, focus_tolerance, min_overlap : float
        As in ``match``.
    """
    # each finding starts from its own content ID, whatever an earlier matching named it
    given = [f.id for f in findings]
    findings = [dataclasses.replace(f, id=(f.cue.id if f.cue is not None and f.cue.id else f.id), status="new",
                                    baseline=None) for f in findings]
    if baseline is None:
        return _renamed_links(findings, given), []
    old = baseline_findings(baseline)
    matched = match(findings, old, tolerance, focus_tolerance, min_overlap)
    taken = {b.id for b in old} | {old[j].id for j in matched.values()}
    out = []
    for i, f in enumerate(findings):
        if i in matched:
            b = old[matched[i]]
            out.append(dataclasses.replace(f, id=b.id, status="persisting",
                                           baseline={"id": b.id, "rank": b.rank, "size": b.size, "score": b.score}))
            continue
        fid, n = f.id, 1
        while fid in taken:
            n += 1
            fid = f"{f.id}-{n}"
        taken.add(fid)
        out.append(dataclasses.replace(f, id=fid))
    used = set(matched.values())
    resolved = [{"id": b.id, "true_label": b.true_label, "predicted_label": b.predicted_label, "size": b.size,
                 "score": b.score} for j, b in enumerate(old) if j not in used]
    return _renamed_links(out, given, [f.id for f in findings]), resolved


def _renamed_links(findings: list[Finding], *names: list[str]) -> list[Finding]:
    """``findings`` whose ``related`` links follow their renaming: every earlier ID in ``names`` (lists
    parallel to ``findings``) maps to the finding's ID now."""
    now = {old: f.id for ids in names for old, f in zip(ids, findings)}
    return [dataclasses.replace(f, related=tuple((now.get(i, i), r) for i, r in f.related)) for f in findings]
