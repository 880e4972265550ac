"""Resuming a run: content keys of the stages and the stored outputs they guard.

A stage's stored output (a partition's chunk, the trust figures, the internals
pictures) is reused only under the same key: a hash of everything it was computed
from (inputs, settings, the package's code). A killed or repeated run therefore
recomputes only what is missing or stale. Used by ``audit.pipeline`` and by the
internals stage.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from audit import artifacts
from audit.config import Config

Log = Callable[[str], None]


def stage_keys(config: Config, record: dict) -> dict[str, str]:
    """Content keys of the stages: a stage's stored output is reused only under the same key.

    predict: model file, data, data/model settings and code; attribute: predict plus
    the selection and attribution settings; trust: attribute plus the trust settings;
    internals: attribute plus the settings that shape the findings and the
    ``internals`` section; run: everything in the config but its output, run id,
    scheduler and nightly settings (gates, baseline, triage, history: re-applied to a
    complete run in moments).
    """
    settings = config.to_dict()
    code = code_version()
    predict = digest(record["model"]["sha256"], record["data"]["sha256"], settings["data"],
                      settings["model"], code)
    attribute = digest(predict, settings["select"], settings["attribution"], settings["seed"])
    rest = {k: v for k, v in settings.items()
            if k not in ("run_id", "out", "dask", "gates", "baseline", "triage", "history", "demo")}
    internals = digest(attribute, {k: settings[k] for k in ("discovery", "verify", "internals", "report")})
    return {"predict": predict, "attribute": attribute, "trust": digest(attribute, settings["trust"]),
            "run": digest(attribute, rest), "internals": internals}


def digest(*parts) -> str:
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
    the number of outputs already stored under this key is logged: they are reused.
    """
    root = run_dir / "chunks"
    folder = root / f"{stage}-{key}"
    if not folder.exists():
        for stale in root.glob(f"{stage}-*"):
            shutil.rmtree(stale)
        if stage == "attribute":
            shutil.rmtree(run_dir / artifacts.MAPS, ignore_errors=True)
        folder.mkdir(parents=True)
    paths = [folder / f"part-{i:05d}{suffix}" for i in range(n)]
    done = [p.name for p in paths if p.exists()]
    if done:
        log(f"  reusing {len(done)} of {n} {stage} chunks stored under key {key}: {', '.join(done)}")
    return paths


def resumable(path: Path, fn: Callable, *args):
    """Inside a task: the stored result at ``path``, or ``fn(*args)`` stored there atomically.

    A DataFrame is stored as parquet, a dict as JSON, a ``(rows, features)`` pair as npz.
    """
    if path.exists():
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".json":
            return artifacts.read_json(path)
        with np.load(path) as z:
            return z["row"], z["features"]
    result = fn(*args)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    if isinstance(result, pd.DataFrame):
        result.to_parquet(tmp, index=False)
    elif isinstance(result, dict):
        artifacts.write_json(tmp, result)
    else:
        np.savez(tmp, row=result[0], features=result[1])
    tmp.replace(path)
    return result


def reused_folder(folder: Path, index: str, key: str, log: Log) -> dict | None:
    """The stored index (JSON) of a stage that writes a whole ``folder``, when it was written under
    ``key``; otherwise ``None``, with the folder emptied and created for a fresh output."""
    path = folder / index
    if path.exists():
        previous = artifacts.read_json(path)
        if previous.get("key") == key:
            log(f"  reusing {folder.name} stored under key {key}")
            return previous
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return None
