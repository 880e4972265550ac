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
    sum 1 (uniform where the map is all zero).

    Parameters
    ----------
    activations : np.ndarray
        ``[n, h, w, c]``: a layer's activations per image.
    maps : np.ndarray
        ``[n, H, W]``: attribution maps of the same images, any resolution.

    Returns
    -------
    np.ndarray
        float32 ``[n, c]``: the attention-weighted mean activation per channel.
    """
    n, h, w, _ = activations.shape
    weights = area_pool(np.maximum(maps, 0.0), h, w) if n else np.zeros((0, h, w))
    total = weights.sum(axis=(1, 2), keepdims=True)
    weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), 1.0 / (h * w))
    return np.einsum("nhw,nhwc->nc", weights, activations).astype(np.float32)


def area_pool(maps: np.ndarray, h: int, w: int) -> np.ndarray:
    """Mean of each map over an ``h x w`` grid of nearly equal cells.

    When the grid is finer than the map, a cell is one map pixel.

    Parameters
    ----------
    maps : np.ndarray
        ``[n, H, W]`` or one ``[H, W]``.
    h, w : int
        Grid rows and columns (cells).

    Returns
    -------
    np.ndarray
        float64 ``[n, h, w]`` (``[h, w]`` for one map).
    """
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
    """Boolean mask ``[H, W]`` of the top-attributed region of ``cam``, or ``None`` when it has no positive value.

    Parameters
    ----------
    cam : np.ndarray
        One map ``[H, W]``.
    grid, max_area
        As in ``top_regions``.
    """
    return top_regions(np.asarray(cam)[None], grid, max_area)[0]


def top_regions(cams: np.ndarray, grid: int, max_area: float,
                shape: tuple[int, int] | None = None, dilate: int = 0) -> list[np.ndarray | None]:
    """The top-attributed region of each map, as a boolean mask.

    The positive part of a map is area-pooled to ``grid x grid`` cells; the region is
    the cells holding at least ``PEAK_FRACTION`` of the peak cell's value or, if more
    than ``cap = max(1, floor(max_area * grid^2))`` cells qualify, the ``cap`` highest.

    Parameters
    ----------
    cams : np.ndarray
        ``[n, H, W]`` maps; may be given already pooled to ``grid x grid`` (pooling is
        then the identity) with the image's ``shape``.
    grid : int
        Cells per side.
    max_area : float
        Largest region, as a share 0..1 of the cells.
    shape : (int, int), optional
        ``(H, W)`` of the masks in pixels; default the maps' own.
    dilate : int
        Grow each region by this many cells in every direction (8-connected), so that a
        cue's edge pixels in cells it only partly covers are part of it: hiding a cue must
        hide all of it, since a model that max-pools a detector still sees any pixel left.

    Returns
    -------
    list of np.ndarray or None
        Per map a bool mask of ``shape``, or None where the map has no positive value.
    """
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
        cells = cells.reshape(grid, grid)
        for _ in range(dilate):
            cells = grown(cells)
        out.append(cells[rows][:, cols])
    return out


def grown(cells: np.ndarray) -> np.ndarray:
    """The bool mask ``cells`` ``[h, w]`` grown by one cell in every direction (8-connected)."""
    h, w = cells.shape
    padded = np.pad(cells, 1)
    return np.max([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)


def peak_part(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The 8-connected part of the bool ``mask`` ``[h, w]`` that holds its highest cell of ``values`` ``[h, w]``.

    A top region may fall apart in several blobs (a cue and the object beside it); the
    part holding the peak is where the map points most.
    """
    part = np.zeros_like(mask, dtype=bool)
    part[np.unravel_index(int(np.argmax(np.where(mask, values, -np.inf))), mask.shape)] = True
    while True:
        more = grown(part) & mask
        if (more == part).all():
            return part
        part = more
