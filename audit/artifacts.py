"""The run folder: where each artifact of a run lives and how it is read back.

A run writes everything into one folder so it can be resumed, re-rendered and
diffed::

    run.json              resolved config, versions, hashes, timings per stage
    predictions.parquet   one row per manifest row (``row`` = manifest order)
    selection.parquet     selected rows + ``reason`` and confusion ``pair``
    maps/<method>/chunk-NNNNN.npz   ``row`` int64 [n], ``maps`` float16 [n, H, W]
    features.npz          ``row`` int64 [n], ``features`` float32 [n, D]
    cams/chunk-NNNNN.npz  per image, from the predict stage's fused pass: ``row`` int64 [n],
                          ``cam`` float16 [n, h, w], ``features`` and ``presence`` float16 [n, c]
    discovery.parquet     cluster and finding per clustered image
    summary.json          the machine-readable result (stable keys)
    index.html            the report (plus ``assets/``)
    artifacts.json        size and SHA-256 of every file above (``audit.integrity``)

This module is the only one that knows these file names. Every write is atomic and
checksummed (``audit.integrity.write_atomic``).
"""
from __future__ import annotations

import json
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from audit.integrity import Damaged, read_manifest, write_atomic

RUN_JSON = "run.json"
PREDICTIONS = "predictions.parquet"
SELECTION = "selection.parquet"
DISCOVERY = "discovery.parquet"
FEATURES = "features.npz"
SUMMARY = "summary.json"
MAPS = "maps"
CAMS = "cams"


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (``integrity.write_atomic``; numpy values and
    paths as plain JSON)."""
    write_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: Path) -> dict:
    """The JSON document at ``path``."""
    return json.loads(Path(path).read_text())


def write_table(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as parquet (no index) to ``path`` atomically (``integrity.write_atomic``)."""
    write_atomic(path, lambda f: frame.to_parquet(f, index=False))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` (name -> array) as an uncompressed ``.npz`` to ``path`` atomically
    (``integrity.write_atomic``)."""
    write_atomic(path, lambda f: np.savez(f, **arrays))


def read_table(path: Path) -> pd.DataFrame:
    """The parquet table at ``path``."""
    return pd.read_parquet(path)


def map_chunk_path(run_dir: Path, method: str, chunk: int) -> Path:
    """The file of chunk number ``chunk`` of ``method``: ``run_dir`` / maps / ``method`` / chunk-NNNNN.npz."""
    return Path(run_dir) / MAPS / method / f"chunk-{chunk:05d}.npz"


def write_map_chunk(run_dir: Path, method: str, chunk: int, rows: np.ndarray, maps: np.ndarray,
                    **values: np.ndarray) -> Path:
    """Store one chunk of attribution maps as float16 (``maps``: [n, H, W]), with optional
    per-map ``values`` ([n] each, e.g. IG's completeness ``gap``), read by ``read_map_values``.

    Parameters
    ----------
    run_dir : Path
        The run folder.
    method : str
        The attribution method's registered name.
    chunk : int
        The chunk's number (the attribute partition).
    rows : np.ndarray
        int ``[n]`` prediction row ids of the maps.

    Returns
    -------
    Path
        The chunk file (``map_chunk_path``), with each map's CRC-32 in ``artifacts.json``.
    """
    path = map_chunk_path(run_dir, method, chunk)
    maps = np.ascontiguousarray(maps, dtype=np.float16)
    arrays = {"row": np.asarray(rows, dtype=np.int64), "maps": maps,
              **{f"value_{k}": np.asarray(v, np.float64) for k, v in values.items()}}
    write_atomic(path, lambda f: np.savez(f, **arrays), maps_crc32=[zlib.crc32(m.tobytes()) for m in maps])
    return path


def write_cam_chunk(run_dir: Path, chunk: int, rows: np.ndarray, cam: np.ndarray, features: np.ndarray,
                    presence: np.ndarray) -> Path:
    """Store the predict stage's per-image Grad-CAM (``cam`` [n, h, w], predicted class, target-layer
    resolution) and pooled target-layer ``features`` / ``presence`` ([n, c]) as float16, in chunk number
    ``chunk`` of the run folder ``run_dir`` (``rows``: int [n] prediction row ids); returns its path."""
    path = Path(run_dir) / CAMS / f"chunk-{chunk:05d}.npz"
    arrays = {"row": np.asarray(rows, np.int64), "cam": np.asarray(cam, np.float16),
              "features": np.asarray(features, np.float16), "presence": np.asarray(presence, np.float16)}
    write_atomic(path, lambda f: np.savez(f, **arrays))
    return path


def read_cams(run_dir: Path, what: str = "features", rows: np.ndarray | None = None,
              each: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One member ``what`` of the cam chunks stored in ``run_dir`` (``cam``, ``features`` or ``presence``), by row:
    ``(rows int64 [n], values float32 [n, ...])``; ``rows`` keeps only those; ``each`` is applied
    per chunk (e.g. pooling). Empty arrays when the run has none (a model without a layer)."""
    chunks = sorted((Path(run_dir) / CAMS).glob("chunk-*[0-9].npz"))
    kept_rows, values = [], []
    for chunk in chunks:
        with np.load(chunk) as z:
            keep = np.isin(z["row"], rows) if rows is not None else slice(None)
            part = z[what][keep].astype(np.float32)
            kept_rows.append(z["row"][keep])
            values.append(part if each is None else each(part))
    if not kept_rows:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    rows_all = np.concatenate(kept_rows)
    order = np.argsort(rows_all, kind="stable")
    return rows_all[order], np.concatenate(values)[order]


def _map_chunks(run_dir: Path, method: str) -> list[Path]:
    return sorted((Path(run_dir) / MAPS / method).glob("chunk-*[0-9].npz"))


def read_maps(run_dir: Path, method: str, each: Callable[[np.ndarray], np.ndarray] | None = None,
              rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The maps of ``method`` stored in the run folder ``run_dir``: (rows int64 [n], maps float32 [n, H, W]),
    sorted by row.

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


def read_first_maps(run_dir: Path, methods: list[str], each: Callable[[np.ndarray], np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Per attributed image, the map of the first of ``methods`` that has a positive value.

    A map with no positive value says nothing about where the cue is (Grad-CAM of a network ending
    in global max pooling is zero for most images); such an image takes the next method's map
    where that method explained it, else keeps its empty map.

    Parameters
    ----------
    run_dir : the run folder.
    methods : attribution method names in order of preference (``attribution.methods``); the
        first one's rows are the result's rows.
    each : applied to every chunk's maps as read (``read_maps``); must give one shape for every
        method, e.g. pooling to a grid.

    Returns
    -------
    ``(rows int64 [n], maps float32 [n, h, w], {method: images whose map came from it})``.
    """
    rows, maps = read_maps(run_dir, methods[0], each=each)
    used = {methods[0]: len(rows)}
    for method in methods[1:]:
        empty = rows[maps.reshape(len(maps), -1).max(axis=1) <= 0] if len(maps) else rows[:0]
        if not len(empty):
            break
        found, more = read_maps(run_dir, method, each=each, rows=empty)
        if len(found):
            maps[np.searchsorted(rows, found)] = more
            used[methods[0]] -= len(found)
            used[method] = len(found)
    return rows, maps, used


@dataclass(frozen=True, eq=False)   # chunks compare by identity: rows is an array
class MapChunk:
    """One stored chunk of maps, indexed without reading a map: ``map_index`` builds it.

    ``rows``: int64 [n] in stored order; ``hw``: (H, W) of every map; ``offset``: where
    map 0's bytes start in the file (``None`` when the member is compressed or in
    Fortran order, which ``write_map_chunk`` never writes: then ``read`` decodes the
    chunk's maps to take one); ``crc32``: CRC-32 of each map's bytes as written (from
    ``artifacts.json``; ``None`` for an older run), checked by ``read``; ``path``: the
    chunk file; ``dtype``: the stored maps' dtype (float16).
    """
    path: Path
    rows: np.ndarray
    hw: tuple[int, int]
    dtype: np.dtype
    offset: int | None
    crc32: tuple[int, ...] | None = None

    def read(self, i: int) -> np.ndarray:
        """The ``i``-th map of the chunk as float32 [H, W], reading only its own bytes; raises
        ``integrity.Damaged`` when they differ from what was written."""
        if self.offset is None:
            with np.load(self.path) as z:
                return z["maps"][i].astype(np.float32)
        size = self.dtype.itemsize * self.hw[0] * self.hw[1]
        with open(self.path, "rb") as f:
            f.seek(self.offset + i * size)
            data = f.read(size)
        if len(data) != size:
            raise Damaged(self.path, "shorter than its maps (truncated)")
        if self.crc32 is not None and zlib.crc32(data) != self.crc32[i]:
            raise Damaged(self.path, f"checksum mismatch in map {i} (CRC-32 differs from what was written)")
        return np.frombuffer(data, self.dtype).reshape(self.hw).astype(np.float32)


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def map_index(run_dir: Path, method: str, on_damaged: Callable[[Damaged], None] | None = None) -> list[MapChunk]:
    """The chunks of ``method`` stored in the run folder ``run_dir``, in file order, from each chunk's
    ``row`` member and the header of its ``maps``: no map is read. Raises on a chunk that is unreadable (or whose
    size differs from ``artifacts.json``'s: ``integrity.Damaged``), whose ``maps`` are not
    [n, H, W] for its n rows, or whose maps differ in size from the others'; with
    ``on_damaged``, such a chunk with a manifest entry (it was written whole) is handed to
    it as ``Damaged`` and left out instead."""
    chunks = []
    manifest = read_manifest(run_dir)
    for path in _map_chunks(run_dir, method):
        entry = manifest.get(path.relative_to(run_dir).as_posix())
        try:
            chunk = _index_chunk(path, entry)
            if chunks and chunk.hw != chunks[0].hw:
                raise ValueError(f"{path.name}: maps of {chunk.hw} where {chunks[0].path.name} has {chunks[0].hw}")
        except (Damaged, ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            if on_damaged is None or (entry is None and not isinstance(exc, Damaged)):
                raise
            on_damaged(exc if isinstance(exc, Damaged) else Damaged(path, f"unreadable ({type(exc).__name__}: {exc})"))
            continue
        chunks.append(chunk)
    return chunks


def _index_chunk(path: Path, entry: dict | None) -> MapChunk:
    """One chunk of ``map_index``; ``entry``: its manifest entry, if any."""
    if entry is not None and path.stat().st_size != entry.get("size"):
        raise Damaged(path, f"{path.stat().st_size} bytes where {entry.get('size')} were written (truncated)")
    with zipfile.ZipFile(path) as zf:
        with zf.open("row.npy") as f:
            rows = np.lib.format.read_array(f).astype(np.int64)
        info = zf.getinfo("maps.npy")
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version not in _NPY_HEADERS:
                raise ValueError(f"{path.name}: maps.npy has format version {version}")
            shape, fortran, dtype = _NPY_HEADERS[version](f)
            start = f.tell()   # of map 0 within the member
    if len(shape) != 3 or shape[0] != len(rows):
        raise ValueError(f"{path.name}: maps of shape {shape} for {len(rows)} rows")
    offset = None
    if info.compress_type == zipfile.ZIP_STORED and not fortran:
        with open(path, "rb") as f:  # the member's data follows its local header
            f.seek(info.header_offset)
            magic, name_len, extra_len = struct.unpack("<4s22xHH", f.read(30))
        if magic != b"PK\x03\x04":
            raise ValueError(f"{path.name}: no local header for maps.npy")
        offset = info.header_offset + 30 + name_len + extra_len + start
        if path.stat().st_size < offset + int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"{path.name} is shorter than its maps")
    crc = entry.get("maps_crc32") if entry is not None else None
    if crc is not None and len(crc) != len(rows):
        raise Damaged(path, f"{len(rows)} rows where {len(crc)} maps were written")
    return MapChunk(path, rows, (int(shape[1]), int(shape[2])), dtype, offset, None if crc is None else tuple(crc))


def read_map_values(run_dir: Path, method: str, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-map values ``name`` stored with ``method``'s maps in the run folder ``run_dir``: (rows [n], values
    float64 [n]), sorted by row; ``None`` when a chunk lacks them."""
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
    """Names of the methods whose maps are stored in the run folder ``run_dir``, sorted."""
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
