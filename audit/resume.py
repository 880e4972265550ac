"""Resuming a run: content keys of the stages and the stored outputs they guard.

A stage's stored output (a partition's chunk, the trust figures, the internals
pictures) is reused only under the same key: a hash of everything it was computed
from (inputs, settings, the package's code). A killed or repeated run therefore
recomputes only what is missing or stale.

A partition's output is committed by a small record beside it, written last:
``part-NNNNN.files.json`` lists the size and SHA-256 of every file the task wrote
(its maps chunks, then the part itself). A part is reused only when its record is
there and every file still matches it; a truncated or bit-flipped file makes the
part missing, so it is recomputed (with a warning naming the file). Used by
``audit.pipeline`` and by the internals stage.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from audit import artifacts, integrity
from audit.config import Config

Log = Callable[[str], None]


def stage_keys(config: Config, record: dict) -> dict[str, str]:
    """Content keys of the stages: a stage's stored output is reused only under the same key.

    predict: model file, data, data/model settings and code; attribute: predict plus
    the selection, attribution and run (budget) settings; trust: attribute plus the trust settings;
    internals: attribute plus the settings that shape the findings and the
    ``internals`` section; run: everything in the config but its output, run id,
    scheduler and nightly settings (gates, baseline, triage, history: re-applied to a
    complete run in moments).

    Parameters
    ----------
    config : Config
        The run's settings.
    record : dict
        The run's ``run.json`` record: ``model.sha256`` and ``data.sha256`` are read.

    Returns
    -------
    dict of str to str
        ``predict``, ``attribute``, ``trust``, ``run``, ``internals``: 16 hex digits each.
    """
    settings = config.to_dict()
    code = code_version()
    predict = digest(record["model"]["sha256"], record["data"]["sha256"], settings["data"],
                      settings["model"], code)
    attribute = digest(predict, settings["select"], settings["attribution"], settings["run"], settings["seed"])
    rest = {k: v for k, v in settings.items()
            if k not in ("run_id", "out", "dask", "gates", "baseline", "triage", "history", "demo")}
    internals = digest(attribute, {k: settings[k] for k in ("discovery", "verify", "internals", "report")})
    return {"predict": predict, "attribute": attribute, "trust": digest(attribute, settings["trust"]),
            "run": digest(attribute, rest), "internals": internals}


def digest(*parts) -> str:
    """16 hex digits of the SHA-256 of ``parts`` as JSON (keys sorted, other values as ``str``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_version() -> str:
    """Hash of the package's source: a code change invalidates stored stage outputs."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for file in sorted(package.rglob("*.py")):
        digest.update(file.relative_to(package).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def chunk_paths(run_dir: Path, stage: str, key: str, n: int, suffix: str, log: Log) -> list[Path]:
    """Where the ``n`` partition outputs of ``stage`` under ``key`` are stored.

    Outputs of the stage under another key are removed (they belong to other inputs);
    a stored output whose files no longer match their record is removed (logged with the
    file and why); the number of outputs kept under this key is logged: they are reused.

    Parameters
    ----------
    run_dir : Path
        The run folder (outputs in ``chunks/<stage>-<key>/``).
    stage, key : str
        The stage's name and content key (``stage_keys``); a new attribute key also
        removes the stored maps.
    n : int
        Number of partitions.
    suffix : str
        File suffix (``.parquet``, ``.npz``, ...).
    log : callable
        Progress messages.
    """
    root = run_dir / "chunks"
    folder = root / f"{stage}-{key}"
    if not folder.exists():
        for stale in root.glob(f"{stage}-*"):
            shutil.rmtree(stale)
        if stage in ("predict", "attribute"):   # their side outputs belong to the old key too
            shutil.rmtree(run_dir / (artifacts.CAMS if stage == "predict" else artifacts.MAPS), ignore_errors=True)
        folder.mkdir(parents=True)
    paths = [folder / f"part-{i:05d}{suffix}" for i in range(n)]
    done = [p.name for p in paths if _intact(run_dir, p, log)]
    if done:
        log(f"  reusing {len(done)} of {n} {stage} chunks stored under key {key}: {', '.join(done)}")
    return paths


def files_record(path: Path) -> Path:
    """The record committing the partition output at ``path``: ``part-NNNNN.files.json``."""
    return path.with_name(path.name.split(".")[0] + ".files.json")


def _intact(run_dir: Path, path: Path, log: Log) -> bool:
    """Whether the partition output at ``path`` is complete and every file of its record matches;
    if not, the output and its record are removed, so the task recomputes them."""
    record = files_record(path)
    if path.exists() and record.exists():
        try:
            files = artifacts.read_json(record)["files"]
            for name, entry in files.items():
                integrity.verify(run_dir / name, entry)
            return True
        except integrity.Damaged as exc:
            log(f"warning: {exc.path.relative_to(run_dir) if exc.path.is_relative_to(run_dir) else exc.path}: "
                f"{exc.reason}; recomputing {path.name}")
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            log(f"warning: {record.name}: unreadable ({exc}); recomputing {path.name}")
    for stale in (record, path):
        stale.unlink(missing_ok=True)
    return False


def recorded_files(run_dir: Path, paths: list[Path]) -> dict[str, dict]:
    """The files of the partition outputs at ``paths`` (relative path -> manifest entry), from
    their records, for ``integrity.record`` of the run folder ``run_dir``."""
    out = {}
    for path in paths:
        try:
            out.update(artifacts.read_json(files_record(path))["files"])
        except (OSError, ValueError, KeyError):
            continue
    return out


def resumable(path: Path, fn: Callable, *args):
    """Inside a task: the stored result at ``path``, or ``fn(*args)`` stored there atomically.

    A DataFrame is stored as parquet, a dict as JSON, a ``(rows, features)`` pair as npz;
    then the record of every file written (``files_record``), which commits the output.
    ``path`` is ``<run folder>/chunks/<stage>-<key>/part-NNNNN.<suffix>``.

    Parameters
    ----------
    path : Path
        Where the result is (or will be) stored; its suffix says how it is read.
    fn : callable
        Computes the result from ``*args`` when none is stored.
    """
    record = files_record(path)
    if path.exists() and record.exists():
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".json":
            return artifacts.read_json(path)
        with np.load(path) as z:
            return z["row"], z["features"]
    run_dir = path.parents[2]
    with integrity.recording() as written:
        result = fn(*args)
        if isinstance(result, pd.DataFrame):
            artifacts.write_table(path, result)
        elif isinstance(result, dict):
            artifacts.write_json(path, result)
        else:
            artifacts.write_npz(path, row=result[0], features=result[1])
    artifacts.write_json(record, {"files": written.relative(run_dir)})
    return result


def reused_folder(folder: Path, index: str, key: str, log: Log) -> dict | None:
    """The stored index (JSON) of a stage that writes a whole ``folder``, when it was written under
    ``key``; otherwise ``None``, with the folder emptied and created for a fresh output.

    ``index`` is the index file's name inside ``folder``; ``log`` receives the reuse message.
    """
    path = folder / index
    if path.exists():
        previous = artifacts.read_json(path)
        if previous.get("key") == key:
            log(f"  reusing {folder.name} stored under key {key}")
            return previous
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return None
