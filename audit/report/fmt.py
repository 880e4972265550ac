"""Small pure helpers of the report: number formats, slugs and anchors, table masks."""
from __future__ import annotations

import hashlib
import math
import re
from typing import Any

import numpy as np
import pandas as pd

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def finite(x: Any) -> float | None:
    """``x`` as a finite float, or None (not a number, NaN or infinite)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_num(x: Any, digits: int = 3) -> str:
    """``x`` compactly: ints with thousands separators, floats with ``digits`` decimals (``,.1f`` from 1000,
    ``g`` below ``10**-digits``), bools as yes/no, None and non-finite floats as "—", anything else as text."""
    if x is None:
        return "—"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    v = finite(x)
    if v is None:
        return "—" if isinstance(x, (float, np.floating)) else str(x)
    if v == 0:
        return f"{0:.{digits}f}"
    if abs(v) >= 1000:
        return f"{v:,.1f}"
    if abs(v) < 10 ** -digits:
        return f"{v:.{digits}g}"
    return f"{v:.{digits}f}"


def fmt_value(x: Any) -> str:
    """A metadata value ``x`` as a column heading: integral numbers without decimals, others as written."""
    if isinstance(x, str):
        return x
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    v = finite(x)
    if v is not None and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:g}" if v is not None else str(x)


def fmt_pct(x: Any) -> str:
    """A share ``x`` (0..1) as a percentage with one decimal ("12.5%"); "—" when not a finite number."""
    v = finite(x)
    return "—" if v is None else f"{100.0 * v:.1f}%"


def fmt_seconds(x: Any) -> str:
    """A duration ``x`` in seconds as "35 ms", "1.2 s", "3 min 04.0 s" or "2 h 05 min"; "—" when not finite."""
    v = finite(x)
    if v is None:
        return "—"
    if v < 0.1:
        return f"{1000 * v:.0f} ms"
    if v < 60:
        return f"{v:.1f} s"
    m, s = divmod(v, 60)
    return f"{int(m)} min {s:04.1f} s" if m < 60 else f"{int(m // 60)} h {int(m % 60):02d} min"


def slug(text: str) -> str:
    """``text`` as lower-case ASCII letters/digits joined by single '-' (no leading/trailing '-'), <= 40 chars."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:40].strip("-")


def class_slugs(names: list[str]) -> dict[str, str]:
    """A unique slug per class name of ``names``; clashes get the class position appended, an empty slug is
    "class"."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for i, name in enumerate(names):
        s = slug(name) or "class"
        if s in used:
            s = f"{s}-{i}"
        while s in used:
            s = f"{s}-x"
        used.add(s)
        out[name] = s
    return out


def pair_anchor(true_slug: str, pred_slug: str) -> str:
    """Id of the confusion-matrix cell ``true_slug`` -> ``pred_slug``; slugs never contain '--', so the id is
    unambiguous."""
    return f"pair-{true_slug}--{pred_slug}"


def finding_key(fid: str) -> str:
    """A file-name and anchor safe form of finding id ``fid``: the id itself when safe, else a hash."""
    fid = str(fid)
    if _SAFE_ID.fullmatch(fid):
        return fid
    return "finding-" + hashlib.sha1(fid.encode("utf-8")).hexdigest()[:10]


def str_or_none(x: Any) -> str | None:
    """``x`` as text, or None when it is None or missing (NaN, ``pd.NA``)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    try:
        if pd.isna(x):
            return None
    except (TypeError, ValueError):
        pass
    return str(x)


def readable_mask(pred: pd.DataFrame) -> pd.Series:
    """Bool per row of predictions ``pred``: the image was read and predicted (no ``error``, a ``predicted``
    class, ``predicted_idx >= 0``; each test only when its column exists)."""
    mask = pd.Series(True, index=pred.index)
    if "predicted" in pred:
        mask &= pred["predicted"].notna()
    if "predicted_idx" in pred:
        mask &= pd.to_numeric(pred["predicted_idx"], errors="coerce").fillna(-1) >= 0
    if "error" in pred:
        mask &= pred["error"].isna()
    return mask


def correct_mask(pred: pd.DataFrame) -> pd.Series:
    """Bool per row of predictions ``pred``: readable and ``predicted == label``."""
    readable = readable_mask(pred)
    return readable & (pred["predicted"].astype(str) == pred["label"].astype(str))
