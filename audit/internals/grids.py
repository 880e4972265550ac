"""Small PNG pictures of the internals: tiles, grids and a colour map (numpy + Pillow only)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

TILE = 48        # px, side of one tile in the grids
GAP = 2          # px between tiles
BACKGROUND = 255
# viridis, sampled at 5 points and interpolated: dark = low, yellow = high
_VIRIDIS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], np.float64)


def png(image: np.ndarray) -> bytes:
    """``image``, uint8 RGB ``[H, W, 3]``, as PNG bytes (no metadata, so repeated runs give the same bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def colorize(values: np.ndarray, top: float | None = None) -> np.ndarray:
    """A 2-D map as viridis RGB uint8 ``[h, w, 3]``, scaled from 0 to ``top`` (default its maximum).

    Parameters
    ----------
    values : np.ndarray
        ``[h, w]``; NaN counts as 0, values outside ``[0, top]`` are clipped.
    top : float, optional
        The value shown yellow; a ``top <= 0`` shows everything dark.
    """
    v = np.nan_to_num(np.asarray(values, np.float64))
    top = float(v.max()) if top is None else float(top)
    unit = np.clip(v / top, 0.0, 1.0) if top > 0 else np.zeros_like(v)
    pos = unit * (len(_VIRIDIS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (pos - lo)[..., None]
    return np.round(_VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac).astype(np.uint8)


def tile(image: np.ndarray, side: int = TILE) -> np.ndarray:
    """Fit ``image`` (uint8 RGB ``[h, w, 3]``) into a ``side x side`` pixel tile (nearest neighbour,
    aspect ratio kept, centred on white)."""
    image = np.asarray(image, np.uint8)
    h, w = image.shape[:2]
    scale = side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray(image).resize((nw, nh), Image.NEAREST))
    out = np.full((side, side, 3), BACKGROUND, np.uint8)
    y, x = (side - nh) // 2, (side - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


def grid(tiles: list[list[np.ndarray]], side: int = TILE) -> np.ndarray:
    """Rows of RGB images as one uint8 picture, each fitted into a ``side``-pixel tile, ``GAP`` pixels apart.

    Parameters
    ----------
    tiles : list of list of np.ndarray
        Rows of uint8 RGB ``[h, w, 3]`` images; rows may differ in length.
    side : int, default TILE
        Tile side in pixels.
    """
    n_rows, n_cols = len(tiles), max((len(r) for r in tiles), default=0)
    out = np.full((max(1, n_rows * (side + GAP) - GAP), max(1, n_cols * (side + GAP) - GAP), 3), BACKGROUND, np.uint8)
    for i, row in enumerate(tiles):
        for j, image in enumerate(row):
            out[i * (side + GAP):i * (side + GAP) + side, j * (side + GAP):j * (side + GAP) + side] = tile(image, side)
    return out


def square_grid(images: list[np.ndarray], side: int = TILE) -> np.ndarray:
    """``images`` (uint8 RGB) in a near-square ``grid`` (3 x 3 for 9), row by row, tiles of ``side`` pixels."""
    cols = max(1, int(np.ceil(np.sqrt(len(images)))))
    return grid([images[i:i + cols] for i in range(0, len(images), cols)], side)


def activation_grid(image: np.ndarray, layer_maps: list[np.ndarray], side: int = TILE) -> np.ndarray:
    """One row per layer: the input image, then the given channel maps ``[h, w]`` of that layer.

    Each map is coloured from 0 to the largest value among that layer's shown maps,
    so channels of one layer compare by colour.

    Parameters
    ----------
    image : np.ndarray
        uint8 RGB ``[H, W, 3]``: the input as displayed.
    layer_maps : list of list of np.ndarray
        Per layer, its shown channel maps ``[h, w]`` (negative values shown as 0).
    side : int, default TILE
        Tile side in pixels.
    """
    rows = []
    for maps in layer_maps:
        top = max((float(np.max(m)) for m in maps), default=0.0)
        rows.append([image] + [colorize(np.maximum(m, 0.0), top) for m in maps])
    return grid(rows, side)
