"""A finished run folder as the nightly steps need it: its summary and per-pair error rates."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from audit import artifacts
from audit.errors import UsageError
from audit.stages.gate import pair_rates


@dataclass
class Run:
    """A finished run folder as the nightly steps need it: its summary and per-pair error rates.

    Attributes
    ----------
    run_dir : Path
        The run folder.
    summary : dict
        Its ``summary.json``.
    pairs : list of dict
        Per confusion pair: counts and error rate (``audit.stages.gate.pair_rates``).
    """

    run_dir: Path
    summary: dict
    pairs: list[dict] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        """The summary's ``run_id``, else the folder's name."""
        return str(self.summary.get("run_id") or self.run_dir.name)


def read_run(run_dir: str | Path, what: str = "run folder") -> Run:
    """Read a finished run folder ``run_dir``; a folder that is not one is a ``UsageError`` naming it as ``what``.

    Pairs come from ``summary.json``'s ``pairs``, or for older runs from their predictions.
    """
    run_dir = Path(run_dir)
    path = run_dir / artifacts.SUMMARY
    if not path.is_file():
        raise UsageError(f"{run_dir}: not a finished {what} (no {artifacts.SUMMARY})")
    try:
        summary = artifacts.read_json(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("findings"), list):
        raise UsageError(f"{path}: not a summary.json (no findings list)")
    pairs = summary.get("pairs")
    if not isinstance(pairs, list):
        predictions = run_dir / artifacts.PREDICTIONS
        pairs = pair_rates(artifacts.read_table(predictions))  # older runs if predictions.is_file() else []
    return Run(run_dir, summary, [p for p in pairs if isinstance(p, dict)])

