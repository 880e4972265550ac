"""Nightly operation: what turns one audit into a night of a series. No TensorFlow here.

* ``runs``: a finished run folder as the nightly steps read it;
* ``baseline``: matching this run's findings to the previous night's (stable IDs,
  ``status`` new / persisting, resolved findings);
* ``triage``: ``triage.yaml`` acknowledging or suppressing finding IDs;
* ``history``: ``history.parquet``, one row per run and confusion pair;
* ``compare``: ``audit compare RUN_A RUN_B``.

``prepare`` reads and checks the baseline and the triage file before any work; the
pipeline's finish step (``audit.pipeline``) applies them.
"""
from __future__ import annotations

from dataclasses import dataclass

from audit.nightly.baseline import resolve_baseline
from audit.nightly.runs import Run
from audit.nightly.triage import read_triage_entries


@dataclass(frozen=True)
class Inputs:
    """What the nightly steps need, read and checked before any work.

    Attributes
    ----------
    baseline : Run or None
        The baseline run folder (``baseline.run_dir``), or None.
    triage : dict
        Finding ID -> its triage entry in force (``read_triage``).
    expired : tuple of dict
        Triage entries whose ``expires`` date has passed (reported, no longer applied).
    """

    baseline: Run | None
    triage: dict[str, dict]
    expired: tuple[dict, ...] = ()


def prepare(config) -> Inputs:
    """Read and check the baseline and the triage file of ``config`` (``UsageError`` before any work)."""
    triage, expired = read_triage_entries(config.triage.path)
    return Inputs(baseline=resolve_baseline(config), triage=triage, expired=tuple(expired))
