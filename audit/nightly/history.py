"""History: one row per run and confusion pair in ``history.parquet``.

Every run appends one row per confusion pair of its ``pairs`` (see ``audit.stages.gate.pair_rates``) to ``history.parquet`` (``history.path``;
``auto``: in the run folder's parent; null: none), under a file lock: read, drop
the rows of the same run ID or run folder, concatenate, write a temporary file and rename it
over the old one. Earlier rows are never lost; a history that cannot be read is
left alone (with a warning).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import pandas as pd

from audit.integrity import write_atomic

HISTORY_COLUMNS = {
    "run_id": "string", "created": "string", "true_label": "string", "predicted_label": "string",
    "n_true": "Int64", "n_confused": "Int64", "error_rate": "float64", "n_findings": "Int64",
    "top_score": "float64", "accuracy": "float64", "status": "string", "run_dir": "string",
}


class HistoryError(Exception):
    """The history file cannot be read: it is left as it is."""


def history_path(config) -> Path | None:
    """Where ``config``'s ``history.path`` points: None (no history), ``auto`` (``history.parquet`` in the
    run folder's parent) or the file given."""
    where = config.history.path
    if where is None:
        return None
    return config.run_dir.resolve().parent / "history.parquet" if where == "auto" else Path(where)


def history_rows(summary: dict, created: str, run_dir: Path | None = None) -> pd.DataFrame:
    """One row per confusion pair of ``summary["pairs"]`` (one row with empty labels when there is none).

    Parameters
    ----------
    summary : dict
        The run's summary.json (``run_id``, ``pairs``, ``findings``, ``metrics``, ``status``).
    created : str
        The run's creation time (ISO 8601), the history's order.
    run_dir : Path, optional
        The run folder, stored resolved.

    Returns
    -------
    pd.DataFrame
        Columns ``HISTORY_COLUMNS``; ``error_rate`` and ``accuracy`` are shares 0..1.
    """
    accuracy = (summary.get("metrics") or {}).get("accuracy")
    rows = []
    for p in summary.get("pairs") or [None]:
        pair = (p["true_label"], p["predicted_label"]) if p else (None, None)
        scores = [f["score"] for f in summary["findings"] if (f["true_label"], f["predicted_label"]) == pair]
        rows.append({"run_id": summary["run_id"], "created": created, "true_label": pair[0],
                     "predicted_label": pair[1], "n_true": p["n_true"] if p else None,
                     "n_confused": p["n_confused"] if p else None, "error_rate": p["error_rate"] if p else None,
                     "n_findings": len(scores), "top_score": max(scores) if scores else None,
                     "accuracy": accuracy, "status": summary.get("status"),
                     "run_dir": str(Path(run_dir).resolve()) if run_dir is not None else None})
    return _typed(pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for column, dtype in HISTORY_COLUMNS.items():
        if column not in frame:
            frame[column] = None
        frame[column] = frame[column].astype(dtype)
    return frame[list(HISTORY_COLUMNS)]


def read_history(path: Path) -> pd.DataFrame:
    """The history table at ``path`` (columns ``HISTORY_COLUMNS``); ``HistoryError`` if it cannot be read."""
    try:
        return _typed(pd.read_parquet(path))
    except Exception as exc:  # any parquet/arrow failure: the file is not ours to overwrite
        raise HistoryError(f"{path}: cannot read the history ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); not appended") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_history(path: Path, rows: pd.DataFrame) -> None:
    """Append ``rows`` to the history at ``path``, replacing earlier rows of the same run IDs or
    run folders (a folder holds one run; under a lock; atomic replace)."""
    path = Path(path)
    with _locked(path):
        old = read_history(path) if path.exists() else None
        if old is not None:
            same = old["run_id"].isin(set(rows["run_id"].dropna())) | old["run_dir"].isin(set(rows["run_dir"].dropna()))
            old = old[~same.fillna(False).astype(bool)]
        frame = rows if old is None or not len(old) else pd.concat([old, _typed(rows.copy())], ignore_index=True)
        write_atomic(path, lambda f: frame.to_parquet(f, index=False))
