"""The run folder: where each artifact of a run lives and how it is read back.

A run writes everything into one folder so it can be resumed, re-rendered and
diffed::

    run.json              resolved config, versions, hashes, timings per stage
    predictions.parquet   one row per manifest row (``row`` = manifest order)
    selection.parquet     selected rows + ``reason`` and confusion ``pair``
    maps/<method>/chunk-NNNNN.npz   ``row`` int64 [n], ``maps`` float16 [n, H, W]
    features.npz          ``row`` int64 [n], ``features`` float32 [n, D]
    discovery.parquet     cluster and finding per clustered image
    summary.json          the machine-readable result (stable keys)
    index.html            the report (plus ``assets/``)

This module is the only one that knows these file names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

RUN_JSON = "run.json"
PREDICTIONS = "predictions.parquet"
SELECTION = "selection.parquet"
DISCOVERY = "discovery.parquet"
FEATURES = "features.npz"
SUMMARY = "summary.json"
MAPS = "maps"


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON atomically (temp file, then rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_table(path: Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as parquet atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def map_chunk_path(run_dir: Path, method: str, chunk: int) -> Path:
    return Path(run_dir) / MAPS / method / f"chunk-{chunk:05d}.npz"


def write_map_chunk(run_dir: Path, method: str, chunk: int, rows: np.ndarray, maps: np.ndarray,
                    **values: np.ndarray) -> Path:
    """Store one chunk of attribution maps as float16 (``maps``: [n, H, W]), with optional
    per-map ``values`` ([n] each, e.g. IG's completeness ``gap``), read by ``read_map_values``."""
    path = map_chunk_path(run_dir, method, chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, row=np.asarray(rows, dtype=np.int64), maps=np.asarray(maps, dtype=np.float16),
             **{f"value_{k}": np.asarray(v, np.float64) for k, v in values.items()})
    tmp.replace(path)
    return path


def _map_chunks(run_dir: Path, method: str) -> list[Path]:
    return sorted((Path(run_dir) / MAPS / method).glob("chunk-*[0-9].npz"))


def read_maps(run_dir: Path, method: str, each: Callable[[np.ndarray], np.ndarray] | None = None,
              rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The stored maps of ``method``: (rows int64 [n], maps float32 [n, H, W]), sorted by row.

    ``rows``, if given, keeps only those rows; ``each``, if given, is applied to every
    chunk's maps as it is read (e.g. pooling to a small grid). Either way only what is
    kept, never all maps, is in memory at once.
    """
    chunks = _map_chunks(run_dir, method)
    if not chunks:
        return np.zeros(0, np.int64), np.zeros((0, 0, 0), np.float32)
    kept_rows, maps = [], []
    for chunk in chunks:
        with np.load(chunk) as z:
            chunk_rows = z["row"]
            keep = np.isin(chunk_rows, rows) if rows is not None else slice(None)
            part = z["maps"][keep].astype(np.float32)
            kept_rows.append(chunk_rows[keep])
            maps.append(part if each is None else each(part))
    rows_all = np.concatenate(kept_rows)
    order = np.argsort(rows_all, kind="stable")
    return rows_all[order], np.concatenate(maps)[order]


def read_map_values(run_dir: Path, method: str, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-map values ``name`` stored with ``method``'s maps: (rows [n], values float64 [n]),
    sorted by row; ``None`` when a chunk lacks them."""
    rows, values = [], []
    for chunk in _map_chunks(run_dir, method):
        with np.load(chunk) as z:
            if f"value_{name}" not in z.files:
                return None
            rows.append(z["row"])
            values.append(z[f"value_{name}"])
    if not rows:
        return None
    rows_all = np.concatenate(rows)
    order = np.argsort(rows_all, kind="stable")
    return rows_all[order], np.concatenate(values)[order]


def map_methods(run_dir: Path) -> list[str]:
    """Names of the methods whose maps are stored in the run."""
    root = Path(run_dir) / MAPS
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
