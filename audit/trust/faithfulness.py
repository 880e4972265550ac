"""Faithfulness: deletion and insertion curves (Petsiuk et al., 2018, "RISE").

The pixels of an image are ranked by its map, region first: cells of a
``grid x grid`` partition by their mean attribution (the region perturbation of
Samek et al., 2017, which judges where a map points rather than its pixel
noise), pixels inside a cell by their own value, ties at random (seeded). At
step ``s`` of ``steps`` the first ``s / steps`` of the pixels are

* deletion: replaced by a blurred copy of the image (the probability of the
  explained class should fall fast when the map points at the evidence);
* insertion: copied from the image onto its blurred copy (it should rise fast).

The curve is the softmax probability of the explained class at each step
(``steps + 1`` points, fractions 0 .. 1); its AUC is the trapezoid mean. A
faithful map has a lower deletion AUC and a higher insertion AUC than a random
map of the same image.

Cost: ``2 (steps - 1)`` forward passes per (image, map), plus two per image for
the ends every curve shares (the image and its blurred copy). Every (image, map,
step, mode) is one item of a flat list cut into ``batch_size`` model inputs;
each chunk's inputs are built on the host (a mask and a ``where``) while the
model runs the previous chunk, and go through the logits function the predict
stage traced. Measured on the demo, building them on the device instead needs a
trace of its own that costs more than all the stage's passes.
"""
from __future__ import annotations

import numpy as np


def pixel_ranks(maps: np.ndarray, grid: int | None = None, seed: int = 0) -> np.ndarray:
    """Rank of every pixel of each map ``[n, H, W]`` (0 = first removed): int32 ``[n, H, W]``.

    With ``grid``, regions go first: pixels are ordered by the mean of the map over
    their cell of a ``grid x grid`` partition (region perturbation, Samek et al.,
    2017), then by their own value inside the cell. Remaining ties (e.g. the zeros
    of a ReLU'd map) are broken by a seeded random order, never by position.

    Parameters
    ----------
    maps : np.ndarray
        ``[n, H, W]``; NaN ranks last.
    grid : int, optional
        Cells per side of the region partition (capped at the map size); None: pixels only.
    seed : int, default 0
        Tie-break order of image ``i`` from ``default_rng([seed, i])``.
    """
    from audit.maps import area_pool

    maps = np.nan_to_num(np.asarray(maps, np.float64), nan=-np.inf)
    n, h, w = maps.shape
    flat = maps.reshape(n, -1)
    if grid is not None:
        gh, gw = min(grid, h), min(grid, w)
        cell_y = np.searchsorted(np.linspace(0, h, gh + 1).astype(int), np.arange(h), side="right") - 1
        cell_x = np.searchsorted(np.linspace(0, w, gw + 1).astype(int), np.arange(w), side="right") - 1
        pooled = area_pool(np.where(np.isfinite(maps), maps, 0.0), gh, gw)
        regions = pooled[:, cell_y][:, :, cell_x].reshape(n, -1)
    else:
        regions = np.zeros_like(flat)
    ranks = np.empty(flat.shape, dtype=np.int32)
    for i in range(n):
        tiebreak = np.random.default_rng([seed, i]).random(h * w)
        order = np.lexsort((tiebreak, -flat[i], -regions[i]))
        ranks[i, order] = np.arange(h * w, dtype=np.int32)
    return ranks.reshape(n, h, w)


def random_maps(n: int, shape: tuple[int, int], seed: int) -> np.ndarray:
    """``n`` uniform random maps float32 ``[n, H, W]`` (``shape`` = (H, W)), map ``i`` drawn from
    ``default_rng([seed, i])`` with the given ``seed``."""
    return np.stack([np.random.default_rng([seed, i]).random(shape) for i in range(n)]).astype(np.float32) \
        if n else np.zeros((0, *shape), np.float32)


def curves(classifier, images: np.ndarray, targets: np.ndarray, maps: list[np.ndarray], steps: int,
           batch_size: int, grid: int | None = None, sigma: float | None = None,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves of several maps of the same images.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model; probabilities are the softmax of its logits.
    images : np.ndarray
        float32 ``[N, H, W, C]`` as the model takes them.
    targets : np.ndarray
        int ``[N]``: the class each map explains.
    maps : list of np.ndarray
        ``S`` arrays ``[N, H, W]`` (one per method or random seed).
    steps : int
        Curve steps; fractions ``0, 1/steps, ..., 1`` of the pixels.
    batch_size : int
        Model inputs per model call.
    grid : int, optional
        Remove regions (cells of a ``grid x grid`` partition) first (see ``pixel_ranks``).
    sigma : float, optional
        Blur of the baseline in pixels (default ``min(H, W) / 10``; the explainers' ``blur``).
    seed : int, default 0
        Tie-break seed of ``pixel_ranks``.

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``(deletion, insertion)``, each float64 ``[S, N, steps + 1]``: probability (0..1) of the target class.
    """
    from concurrent.futures import ThreadPoolExecutor

    from audit.explainers.base import blur

    n, n_maps = len(images), len(maps)
    h, w = classifier.input_size
    if n == 0 or n_maps == 0:
        empty = np.zeros((n_maps, n, steps + 1))
        return empty, empty.copy()
    images = np.asarray(images, np.float32)
    targets = np.asarray(targets, np.int64)
    blurred = blur(images, min(h, w) / 10.0 if sigma is None else float(sigma))
    ranks = np.stack([pixel_ranks(m, grid, seed) for m in maps], axis=1)         # [N, S, H, W]
    counts = np.round(np.linspace(0, h * w, steps + 1)).astype(np.int32)
    inner = steps - 1
    # per image: the image itself and its blurred copy (both ends of every curve, shared by all
    # maps), then for each map the inner steps of deletion, then those of insertion
    per_image = 2 + n_maps * 2 * inner
    owner = np.repeat(np.arange(n), per_image)
    slot = np.tile(np.r_[0, 0, np.repeat(np.arange(n_maps), 2 * inner)], n)
    count = np.tile(np.r_[0, h * w, np.tile(counts[1:-1], 2 * n_maps)], n)
    insert = np.tile(np.r_[False, False, np.tile(np.repeat([False, True], inner), n_maps)], n)
    total = len(owner)

    def build(start: int) -> np.ndarray:
        """Model inputs of items ``start .. start + batch_size``: where the image, where its blur."""
        part = slice(start, min(start + batch_size, total))
        o = owner[part]
        top = ranks[o, slot[part]] < count[part, None, None]
        original = top == insert[part, None, None]          # insertion: the top pixels; deletion: the rest
        return np.where(original[..., None], images[o], blurred[o])

    p = np.empty(total, np.float64)
    starts = range(0, total, batch_size)
    # items are built on the host while the model runs the previous chunk, through the logits
    # function traced for the predict stage: no new trace (it costs more than the passes here)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(build, starts[0])
        for k, start in enumerate(starts):
            x = pending.result()
            if k + 1 < len(starts):
                pending = pool.submit(build, starts[k + 1])
            logits = classifier.logits(x).astype(np.float64)
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            p[start:start + len(x)] = probs[np.arange(len(x)), targets[owner[start:start + len(x)]]]
    p = p.reshape(n, per_image)
    full, blurred_p = p[:, 0], p[:, 1]
    middle = p[:, 2:].reshape(n, n_maps, 2, inner).transpose(2, 1, 0, 3)       # [mode, S, N, inner]
    first = np.broadcast_to(full[None, :, None], (n_maps, n, 1))
    last = np.broadcast_to(blurred_p[None, :, None], (n_maps, n, 1))
    deletion = np.concatenate([first, middle[0], last], axis=-1)
    insertion = np.concatenate([last, middle[1], first], axis=-1)
    return deletion, insertion


def auc(curve: np.ndarray) -> np.ndarray:
    """Area under each ``curve`` ``[..., steps + 1]`` sampled at equal fractions of [0, 1] (trapezoid rule),
    ``[...]``."""
    curve = np.asarray(curve, np.float64)
    return (curve[..., 1:] + curve[..., :-1]).sum(axis=-1) / (2 * (curve.shape[-1] - 1))
