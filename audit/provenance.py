"""Provenance of a run: the data set's hash and the versions of the software, for ``run.json``."""
from __future__ import annotations

import contextlib
import hashlib
import platform
from pathlib import Path

import pandas as pd

from audit.data import resolve


def data_hash(frame: pd.DataFrame, root: str | Path) -> str:
    """Hash of the manifest rows (``frame``: ``path``, ``label``; paths relative to ``root``) and each local file's size (cheap, catches changed files; a record
    counts its container file's size; a URL is not fetched for this, -1)."""
    digest = hashlib.sha256()
    for path, label in zip(frame["path"], frame["label"]):
        file = resolve(root, path)
        if not isinstance(file, Path):
            size = -1
        else:
            file = Path(str(file).split("#")[0]) if "#" in file.name else file
            size = file.stat().st_size if file.exists() else -1
        digest.update(f"{path}\t{label}\t{size}\n".encode())
    return digest.hexdigest()


def versions() -> dict:
    """Versions of Python and the packages a run depends on: ``{name: version or None}``."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("cnn-audit", "tensorflow", "keras", "dask", "numpy", "pandas", "scikit-learn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    if out.get("tensorflow") is None:
        with contextlib.suppress(PackageNotFoundError):
            out["tensorflow"] = version("tensorflow-cpu")
    return out
