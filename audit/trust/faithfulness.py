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
step, mode) is one item of a flat list cut into ``batch_size`` model inputs
(``audit.explainers.base.run_flat``); the blurred copies and the masked inputs
are built on the device.
"""
from __future__ import annotations

import numpy as np


def pixel_ranks(maps: np.ndarray, grid: int | None = None, seed: int = 0) -> np.ndarray:
    """Rank of every pixel of each map ``[n, H, W]`` (0 = first removed): int32 ``[n, H, W]``.

    With ``grid``, regions go first: pixels are ordered by the mean of the map over
    their cell of a ``grid x grid`` partition (region perturbation, Samek et al.,
    2017), then by their own value inside the cell. Remaining ties (e.g. the zeros
    of a ReLU'd map) are broken by a seeded random order, never by position.
    """
    from audit.stages.attribute import area_pool

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
    """Uniform random maps ``[n, H, W]`` float32, image ``i`` drawn from ``default_rng([seed, i])``."""
    return np.stack([np.random.default_rng([seed, i]).random(shape) for i in range(n)]).astype(np.float32) \
        if n else np.zeros((0, *shape), np.float32)


def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur_on_device(x, sigma: float, channels: int, size: tuple[int, int]):
    """Inside a traced function: separable Gaussian blur of ``x`` ``[M, H, W, C]``.

    The same filter as ``audit.explainers.base.blur`` (scipy's ``gaussian_filter``:
    radius ``int(4 sigma + 0.5)``, borders reflected with the edge pixel repeated),
    the radius capped at the image size.
    """
    import tensorflow as tf

    radius = min(int(4.0 * sigma + 0.5), min(size))
    if sigma <= 0 or radius < 1:
        return x
    k = gaussian_kernel(sigma, radius)
    ky = tf.constant(np.tile(k[:, None, None, None], (1, 1, channels, 1)))
    kx = tf.constant(np.tile(k[None, :, None, None], (1, 1, channels, 1)))
    x = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
    x = tf.nn.depthwise_conv2d(x, ky, strides=[1, 1, 1, 1], padding="VALID")
    return tf.nn.depthwise_conv2d(x, kx, strides=[1, 1, 1, 1], padding="VALID")


def _curve_function(classifier, sigma: float):
    """Traced ``(images [M], ranks [M, S, H, W], targets [M], index, slot, count, insert) -> p [B]``."""
    import tensorflow as tf

    h, w, c = classifier.input_shape

    def fn(xs, ranks, ts, index, slot, count, insert):
        blurred = _blur_on_device(xs, sigma, c, (h, w))
        rank = tf.gather_nd(ranks, tf.stack([index, slot], axis=1))          # [B, H, W]
        top = rank < count[:, None, None]
        original = tf.math.logical_xor(top, tf.logical_not(insert)[:, None, None])  # insertion: top; deletion: rest
        x = tf.where(original[..., None], tf.gather(xs, index), tf.gather(blurred, index))
        logits, _ = classifier.forward(x)
        return tf.gather(tf.nn.softmax(logits), tf.gather(ts, index), batch_dims=1)

    ints = tf.TensorSpec((None,), tf.int32)
    specs = (classifier.image_spec(), tf.TensorSpec((None, None, h, w), tf.int32), ints,
             ints, ints, ints, tf.TensorSpec((None,), tf.bool))
    return classifier.function(("trust_curves", float(sigma)), fn, *specs)


def curves(classifier, images: np.ndarray, targets: np.ndarray, maps: list[np.ndarray], steps: int,
           batch_size: int, grid: int | None = None, sigma: float | None = None,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves of several maps of the same images.

    Parameters
    ----------
    images : float32 ``[N, H, W, C]`` as the model takes them.
    targets : int ``[N]``: the class each map explains.
    maps : ``S`` arrays ``[N, H, W]`` (one per method or random seed).
    steps : curve steps; fractions ``0, 1/steps, ..., 1`` of the pixels.
    batch_size : model inputs per model call.
    grid : remove regions (cells of a ``grid x grid`` partition) first (see ``pixel_ranks``).
    sigma : blur of the baseline in pixels (default ``min(H, W) / 10``, as the explainers' blur).

    Returns
    -------
    ``(deletion, insertion)``, each float64 ``[S, N, steps + 1]``: probability of the target class.
    """
    from audit.explainers.base import run_flat

    n, n_maps = len(images), len(maps)
    h, w = classifier.input_size
    if n == 0 or n_maps == 0:
        empty = np.zeros((n_maps, n, steps + 1))
        return empty, empty.copy()
    sigma = min(h, w) / 10.0 if sigma is None else float(sigma)
    ranks = np.stack([pixel_ranks(m, grid, seed) for m in maps], axis=1)         # [N, S, H, W]
    counts = np.round(np.linspace(0, h * w, steps + 1)).astype(np.int32)
    inner = steps - 1
    # per image: the image itself and its blurred copy (both ends of every curve, shared by all
    # maps), then for each map the inner steps of deletion, then those of insertion
    per_image = 2 + n_maps * 2 * inner
    owner = np.repeat(np.arange(n), per_image)
    slot = np.tile(np.r_[0, 0, np.repeat(np.arange(n_maps), 2 * inner)], n).astype(np.int32)
    count = np.tile(np.r_[0, h * w, np.tile(counts[1:-1], 2 * n_maps)], n).astype(np.int32)
    insert = np.tile(np.r_[False, False, np.tile(np.repeat([False, True], inner), n_maps)], n)
    fn = _curve_function(classifier, sigma)
    p = run_flat(fn, owner, [np.asarray(images, np.float32), ranks, np.asarray(targets, np.int32)],
                 [slot, count, insert], batch_size, n, reduce=False)
    p = p.astype(np.float64).reshape(n, per_image)
    full, blurred = p[:, 0], p[:, 1]
    middle = p[:, 2:].reshape(n, n_maps, 2, inner).transpose(2, 1, 0, 3)       # [mode, S, N, inner]
    ends = np.broadcast_to(full[None, :, None], (n_maps, n, 1)), np.broadcast_to(blurred[None, :, None], (n_maps, n, 1))
    deletion = np.concatenate([ends[0], middle[0], ends[1]], axis=-1)
    insertion = np.concatenate([ends[1], middle[1], ends[0]], axis=-1)
    return deletion, insertion


def auc(curve: np.ndarray) -> np.ndarray:
    """Area under curves ``[..., steps + 1]`` sampled at equal fractions of [0, 1] (trapezoid rule)."""
    curve = np.asarray(curve, np.float64)
    return (curve[..., 1:] + curve[..., :-1]).sum(axis=-1) / (2 * (curve.shape[-1] - 1))
