"""Agreement between attribution methods: do Grad-CAM, IG and occlusion point at the same place?

The positive part of each map (the evidence *for* the explained class, as
discovery reads it) is area-pooled to ``grid x grid`` cells
(``audit.stages.attribute.area_pool``: the methods differ in resolution and pixel
noise, not in where a cue sits) and every pair of methods is compared by the
Spearman rank correlation of the pooled maps, image by image. An image's agreement is the mean over
pairs; a finding's is the mean over its members.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np

from audit.maps import area_pool
from audit.trust.similarity import spearman


def pair_name(a: str, b: str) -> str:
    """The name ``"a~b"`` of the pair of methods ``a`` and ``b``."""
    return f"{a}~{b}"


def per_image(maps: dict[str, np.ndarray], grid: int) -> dict[str, np.ndarray]:
    """Spearman per image ``[n]`` for each pair of methods (``"a~b"``) whose maps ``[n, H, W]`` are aligned.

    A constant pooled map (e.g. no positive evidence) has no ranking: its correlations are NaN.

    Parameters
    ----------
    maps : dict of str to np.ndarray
        Method name -> maps ``[n, H, W]`` of the same images (resolutions may differ).
    grid : int
        Cells per side of the pooling (capped at each map's size).
    """
    names = list(maps)
    pooled = {m: area_pool(np.maximum(maps[m], 0.0), min(grid, maps[m].shape[1]), min(grid, maps[m].shape[2]))
              if len(maps[m]) else maps[m] for m in names}
    return {pair_name(a, b): spearman(pooled[a], pooled[b]) if len(pooled[a]) else np.zeros(0)
            for a, b in combinations(names, 2)}


def image_agreement(pairs: dict[str, np.ndarray]) -> np.ndarray:
    """Mean over method pairs per image ``[n]`` (NaN pairs ignored; NaN when no pair is defined).

    Parameters
    ----------
    pairs : dict of str to np.ndarray
        ``per_image``'s Spearman ``[n]`` per pair.
    """
    if not pairs:
        return np.zeros(0)
    stacked = np.stack(list(pairs.values()))
    counts = np.isfinite(stacked).sum(axis=0)
    total = np.nansum(stacked, axis=0)
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def nanmean(values) -> float | None:
    """Mean of the finite ``values`` (array-like), ``None`` when there are none."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None
