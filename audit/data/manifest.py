"""Data set descriptions to a manifest DataFrame, and the class list.

``--data`` may be a folder with one subfolder per class, a CSV or Parquet manifest
with at least ``path`` and ``label`` (local or at a URL: ``s3://``, ``gs://``,
``http(s)://``, ``file://``, read through fsspec), TFRecord shards (one file or a
glob such as ``shards/*.tfrecord``) or a Parquet file of image bytes
(``audit.data.records``). Manifest paths are relative to the manifest's folder
(or absolute, or URLs: never made relative); extra columns are kept as metadata.
A folder's paths are ``<class>/<file>``; a record's are ``<file>#<index>``.
"""
from __future__ import annotations

import glob
from pathlib import Path

import pandas as pd

from audit.data.records import (PARQUET_SUFFIXES, RECORD_SUFFIXES, image_column, parquet_manifest,
                                 tfrecord_manifest)
from audit.errors import UsageError
from audit.urls import is_url

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
RESERVED_COLUMNS = {"row", "predicted", "confidence", "margin", "runner_up", "probs", "error",
                    "label_idx", "predicted_idx", "reason", "pair", "true_label", "pair_label"}


def load_manifest(data: str | Path) -> tuple[pd.DataFrame, str | Path]:
    """Read a data set description.

    Parameters
    ----------
    data : folder with one subfolder per class, ``.csv`` / ``.parquet`` manifest (a
        path or a URL), TFRecord file or glob of shards, or Parquet file of image bytes.

    Returns
    -------
    (frame, root): ``frame`` has columns ``path`` (as written in the manifest),
    ``label`` (str) and any metadata columns, in manifest order; ``root`` is the
    folder (or URL prefix) the paths are relative to. ``frame.attrs["label_index"]``
    is true when the labels are class indices (``with_class_names`` names them).
    """
    if is_url(str(data)):
        frame, root = _remote_manifest(str(data)), str(data).rsplit("/", 1)[0]
    elif glob.has_magic(str(data)):
        files = sorted(Path(f) for f in glob.glob(str(data)))
        if not files:
            raise UsageError(f"--data {data}: no file matches")
        odd = [f for f in files if f.suffix.lower() not in RECORD_SUFFIXES]
        if odd:
            raise UsageError(f"--data {data}: {odd[0]} is not a TFRecord file ({', '.join(RECORD_SUFFIXES)})")
        root = Path(_common_folder(files))
        frame = tfrecord_manifest(files, root)
    else:
        data = Path(data)
        if not data.exists():
            raise UsageError(f"--data {data}: no such file or folder")
        root = data if data.is_dir() else data.parent
        suffix = data.suffix.lower()
        if data.is_dir():
            frame = _scan_folder(data)
        elif suffix == ".csv":
            frame = pd.read_csv(data, dtype={"path": str, "label": str}, keep_default_na=False)
        elif suffix in RECORD_SUFFIXES:
            frame = tfrecord_manifest([data], root)
        elif suffix in PARQUET_SUFFIXES:
            import pyarrow.parquet as pq

            column = None if "path" in pq.read_schema(data).names else image_column(pq.read_schema(data))
            frame = pd.read_parquet(data) if column is None else parquet_manifest(data, root, column)
        else:
            raise UsageError(f"--data {data}: expected a folder, a .csv or .parquet manifest, TFRecord shards "
                             "or a Parquet file of image bytes")
    by_index, named = bool(frame.attrs.get("label_index")), frame.attrs.get("classes")
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        raise UsageError(f"{data}: manifest lacks column(s) {', '.join(missing)} (needs at least path,label)")
    clash = sorted(RESERVED_COLUMNS & set(frame.columns))
    if clash:
        raise UsageError(f"{data}: manifest column(s) {', '.join(clash)} are reserved by cnn-audit; rename them")
    if frame.empty:
        raise UsageError(f"{data}: the data set has no images")
    frame = frame.reset_index(drop=True)
    frame["path"] = frame["path"].astype(str)
    frame["label"] = frame["label"].astype(str)
    frame.attrs["label_index"] = by_index
    if named:
        frame.attrs["classes"] = list(named)
    return frame, root


def _remote_manifest(url: str) -> pd.DataFrame:
    """A CSV or Parquet manifest at a URL, read through fsspec (credentials from the environment)."""
    suffix = url.lower().rsplit(".", 1)[-1]
    try:
        if suffix == "csv":
            return pd.read_csv(url, dtype={"path": str, "label": str}, keep_default_na=False)
        if suffix in ("parquet", "pq"):
            return pd.read_parquet(url)
    except ImportError as exc:
        raise UsageError(f"--data {url}: {exc} (pip install 'cnn-audit[cloud]' for s3://)") from None
    except Exception as exc:
        raise UsageError(f"--data {url}: cannot read the manifest ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    raise UsageError(f"--data {url}: a URL must name a .csv or .parquet manifest")


def _common_folder(files: list[Path]) -> str:
    import os

    return os.path.commonpath([str(f.resolve().parent) for f in files])


def _scan_folder(folder: Path) -> pd.DataFrame:
    flat = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    if flat and not any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir()):
        raise UsageError(f"--data {folder}: {len(flat)} image(s) directly in the folder, but a folder data set "
                         "needs one subfolder per class (images/pool/a.jpg, images/bathroom/b.jpg, ...), "
                         "or give a CSV/parquet manifest with path,label")
    rows = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(class_dir.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                rows.append({"path": file.relative_to(folder).as_posix(), "label": class_dir.name})
    return pd.DataFrame(rows, columns=["path", "label"])


def load_classes(path: Path | None, frame: pd.DataFrame, data: str | Path | None) -> list[str]:
    """Class names in the model's output order.

    From ``path`` (one name per line) when given; otherwise the sorted subfolder
    names of a folder data set (Keras' ``image_dataset_from_directory`` order), the
    ``ClassLabel`` names of a Parquet file of images, the indices ``0..max`` as names
    when the labels are class indices, or the sorted distinct labels of a manifest.

    Parameters
    ----------
    path : Path or None
        The ``--classes`` text file; must exist, list at least one name, no name twice.
    frame : pd.DataFrame
        The manifest (its ``label`` column and ``attrs``).
    data : str or Path or None
        The ``--data`` folder, file or URL.

    Raises
    ------
    UsageError
        Naming the classes file.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"--classes {path}: no such file")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise UsageError(f"--classes {path}: the file lists no class")
        if len(set(names)) != len(names):
            raise UsageError(f"--classes {path}: class names must be unique")
        return names
    if data is not None and not is_url(str(data)) and Path(data).is_dir():
        return sorted(p.name for p in Path(data).iterdir() if p.is_dir() and not p.name.startswith("."))
    if frame.attrs.get("classes"):
        return list(frame.attrs["classes"])
    if frame.attrs.get("label_index"):
        return [str(i) for i in range(max(int(v) for v in frame["label"]) + 1)]
    return sorted(frame["label"].unique().tolist())


def with_class_names(frame: pd.DataFrame, classes: list[str], data: str | Path) -> pd.DataFrame:
    """``frame`` with class-index labels (TFRecord ``image/class/label``) replaced by ``classes`` names; an index
    out of range is a ``UsageError`` naming ``data`` (the ``--data`` location)."""
    if not frame.attrs.get("label_index"):
        return frame
    index = frame["label"].astype(int)
    bad = (index < 0) | (index >= len(classes))
    if bad.any():
        i = int(bad.to_numpy().argmax())
        raise UsageError(f"--data {data}: {frame['path'][i]} has class index {index[i]}, but there are "
                         f"{len(classes)} classes")
    out = frame.copy()
    out["label"] = [classes[i] for i in index]
    out.attrs["label_index"] = False
    return out


def resolve(root: str | Path, path: str) -> str | Path:
    """Where a manifest ``path`` points, relative to ``root`` (a folder or URL prefix) unless absolute: a URL
    (string) or a local file (``Path``; a record ``file#index`` keeps its ``#index``)."""
    if is_url(path):
        return path
    if is_url(str(root)):
        return str(root).rstrip("/") + "/" + path
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p
