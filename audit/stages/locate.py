"""Locate: place each finding's cue at the size of the evidence, not at the coarse map's peak.

Discover describes a cue by the centre of mass of its members' mean map (the
first method's, usually Grad-CAM at the target layer's few cells): stable enough
to name the finding, but too coarse to say where a small cue sits; a member whose
map is all zero even counts as the centre. This stage re-places the cue
(``audit.cues.located``: each member's top-attributed region, its centre and the
box the report's montage crops) from the best evidence the run has:

1. ``"verified region"``: the finding's region tests (``audit.stages.verify``) ran and
   every one that ran is confirmed (lift at least ``trust.min_lift``, conclusive): the
   regions are those the tests hid and pasted, by the same rule on the same maps;
2. else the finest faithful map: the first attribution method, in the order
   occlusion (a perturbation map, the test itself at patch resolution), the pixel
   methods in configured order, then Grad-CAM(++) (the target layer's cells), whose
   trust badge says faithful and not failing its sanity checks, and whose maps are
   positive for at least half of the members (``"<method> map"``);
3. else the maps discovery and verification read (``"<method> map"``: the first
   method's; a strategy's images outside the selection have the predict stage's
   Grad-CAM).

The stable ID is not changed: it names the discover-time cell.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from audit import artifacts
from audit.config import Config
from audit.cues import located
from audit.findings import Finding
from audit.maps import area_pool

COARSE = ("gradcam", "gradcam_plus_plus")   # maps at the target layer's resolution: the last resort
PERTURBATION = ("occlusion",)                # maps measured by hiding patches: the first choice


def candidates(config: Config, trusted: dict | None) -> list[str]:
    """The attribution methods that may locate a cue, finest first: those of ``config.attribution.methods``
    that the trust stage's figures ``trusted`` (``audit.stages.trust.trust``; None: not run, no method
    qualifies) badge as faithful and not failing their sanity checks."""
    if not trusted:
        return []
    badges = {m: (v or {}).get("badge") or {} for m, v in (trusted.get("methods") or {}).items()}
    good = [m for m in config.attribution.methods
            if badges.get(m, {}).get("faithful") is True and badges.get(m, {}).get("sanity") is not False]
    rank = lambda m: 0 if m in PERTURBATION else 2 if m in COARSE else 1
    return sorted(good, key=lambda m: (rank(m), config.attribution.methods.index(m)))


def region_confirmed(config: Config, finding: Finding) -> bool:
    """Whether ``finding``'s region tests ran and every one that ran is confirmed (``config``'s
    ``trust.min_lift``, conclusive)."""
    v = finding.verification
    tests = [t for t in (v.occlusion, v.transplant) if t is not None and t.n] if v is not None and v.verified else []
    return bool(tests) and all(t.confirmed(config.trust.min_lift) for t in tests)


def locate(config: Config, run_dir: Path, findings: list[Finding], trusted: dict | None,
           map_rows: np.ndarray, cells: np.ndarray) -> list[Finding]:
    """Each of ``findings`` with its ``cue`` located (see the module docstring).

    Parameters
    ----------
    config : Config
        ``attribution.methods``, ``discovery.grid``, ``verify.max_area`` and ``trust.min_lift``.
    run_dir : Path
        The run folder (the attribution maps under ``maps/``).
    findings : list of Finding
        Verified (and trust-judged) findings; their order is kept.
    trusted : dict or None
        The trust stage's figures (``methods``' badges), None when it did not run.
    map_rows, cells : np.ndarray
        int ``[m]`` prediction rows and float ``[m, G, G]`` maps pooled to ``discovery.grid``:
        the maps verification read.

    Returns
    -------
    list of Finding
        New records; a finding without a ``cue`` is returned as it is.
    """
    grid, max_area = config.discovery.grid, config.verify.max_area
    discovery = {int(r): i for i, r in enumerate(map_rows)}
    pending = [f for f in findings if f.cue is not None and not region_confirmed(config, f)]
    wanted = np.array(sorted({int(r) for f in pending for r in f.rows}), np.int64)
    pooled: dict[str, tuple[dict[int, int], np.ndarray]] = {}
    for method in candidates(config, trusted) if len(wanted) else []:
        rows, maps = artifacts.read_maps(run_dir, method, rows=wanted,
                                         each=lambda m: area_pool(np.maximum(m, 0.0), grid, grid))
        pooled[method] = ({int(r): i for i, r in enumerate(rows)}, maps)
    out = []
    for f in findings:
        if f.cue is None:
            out.append(f)
            continue
        own = _members(f.rows, discovery, cells, grid)
        if region_confirmed(config, f):
            out.append(dataclasses.replace(f, cue=located(f.cue, own, max_area, "verified region")))
            continue
        source = ("gradcam" if f.kind == "strategy" else config.attribution.methods[0], own)
        for method, (at, maps) in pooled.items():
            mine = _members(f.rows, at, maps, grid)
            if len(mine) and (mine.reshape(len(mine), -1).max(axis=1) > 0).mean() >= 0.5:
                source = (method, mine)
                break
        out.append(dataclasses.replace(f, cue=located(f.cue, source[1], max_area, f"{source[0]} map")))
    return out


def _members(rows: tuple[int, ...], at: dict[int, int], maps: np.ndarray, grid: int) -> np.ndarray:
    """float ``[n, grid, grid]``: the maps of ``rows`` from ``maps`` (indexed by ``at``: row -> index), zeros
    where a row has none."""
    out = np.zeros((len(rows), grid, grid), np.float64)
    for i, r in enumerate(rows):
        if int(r) in at:
            out[i] = maps[at[int(r)]]
    return out
