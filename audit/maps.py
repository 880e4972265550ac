"""Operations on attribution maps shared by the stages: pooling and top-attributed regions.

Maps are float arrays ``[n, H, W]`` (one ``[H, W]`` where said), raw attribution at
any resolution; nothing here imports TensorFlow.
"""
from __future__ import annotations

import numpy as np

PEAK_FRACTION = 0.5   # a top region's cells hold at least this share of the peak cell's attribution


def attention_pooled(activations: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Activations ``[n, h, w, c]`` averaged over space with weights from ``maps`` ``[n, H, W]``.

    The positive part of each map is area-averaged to ``h x w`` and normalised to
    sum 1 (uniform where the map is all zero). Returns ``[n, c]`` float32.
    """
    n, h, w, _ = activations.shape
    weights = area_pool(np.maximum(maps, 0.0), h, w) if n else np.zeros((0, h, w))
    total = weights.sum(axis=(1, 2), keepdims=True)
    weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), 1.0 / (h * w))
    return np.einsum("nhw,nhwc->nc", weights, activations).astype(np.float32)


def area_pool(maps: np.ndarray, h: int, w: int) -> np.ndarray:
    """Mean of each map ``[n, H, W]`` (or one ``[H, W]``) over an ``h x w`` grid of nearly
    equal cells; when the grid is finer than the map, a cell is one map pixel."""
    maps = np.asarray(maps, np.float64)
    single = maps.ndim == 2
    maps = maps[None] if single else maps
    out = maps
    for axis, cells in ((1, h), (2, w)):
        size = maps.shape[axis]
        bounds = np.linspace(0, size, cells + 1).astype(int)
        counts = np.maximum(np.diff(bounds), 1)
        out = np.add.reduceat(out, bounds[:-1], axis=axis) / np.expand_dims(counts, tuple(a for a in range(3) if a != axis))
    return out[0] if single else out


def top_region(cam: np.ndarray, grid: int, max_area: float) -> np.ndarray | None:
    """Boolean mask ``[H, W]`` of the top-attributed region of ``cam`` (see the module
    docstring), or ``None`` when the map has no positive attribution."""
    return top_regions(np.asarray(cam)[None], grid, max_area)[0]


def top_regions(cams: np.ndarray, grid: int, max_area: float,
                shape: tuple[int, int] | None = None) -> list[np.ndarray | None]:
    """``top_region`` of each map of ``cams`` ``[n, H, W]``, as masks of ``shape`` (default
    ``(H, W)``). ``cams`` may be given already pooled to ``grid x grid`` (pooling is then
    the identity) with the image's ``shape``."""
    n, h, w = cams.shape
    h, w = shape or (h, w)
    pooled = area_pool(np.maximum(cams, 0.0), grid, grid).reshape(n, -1)
    cap = max(1, int(np.floor(max_area * grid * grid)))
    rows = np.minimum((np.arange(h) * grid) // h, grid - 1)
    cols = np.minimum((np.arange(w) * grid) // w, grid - 1)
    out: list[np.ndarray | None] = []
    for values in pooled:
        peak = values.max()
        if not peak > 0:
            out.append(None)
            continue
        cells = values >= PEAK_FRACTION * peak
        if cells.sum() > cap:
            cells = np.zeros_like(cells)
            cells[np.argsort(-values, kind="stable")[:cap]] = True
        out.append(cells.reshape(grid, grid)[rows][:, cols])
    return out
