"""Occlusion sensitivity: the drop of the target logit when a patch is hidden.

Paper: M. D. Zeiler, R. Fergus, "Visualizing and understanding convolutional
networks", ECCV 2014 (LNCS 8689), section 4.2.

A ``patch`` ``(ph, pw)`` pixels slides over the image with ``stride`` ``(sh, sw)``
pixels; patch corners are ``y0 in {0, sh, 2 sh, ...} + {H - ph}`` (likewise ``x0``),
so the last row and column end at the border and every pixel is covered. Inside
the patch the image is replaced by a fill ``b`` (the image's per-channel mean over
height and width, a constant ``value``, or a Gaussian blur of the image). With
``f_t`` the pre-softmax logit of the target class and ``x_p`` the image with patch
``p`` filled::

    drop_p   = f_t(x) - f_t(x_p)
    map[i,j] = mean of drop_p over the patches p that contain pixel (i, j)

Signed float32 ``[H, W]`` in logit units, not normalised.

Cost (full grid): one forward pass per patch plus one for the unoccluded image.
Images x patches are flattened into chunks of ``batch_size`` model inputs; the
occluded copies are built on the device from the patch corners.

Adaptive mode (``adaptive=True``) goes coarse to fine over the same patches.
The coarse pass evaluates every ``coarse``-th patch position in each direction
(plus the last), which covers the image when ``stride = patch / 2``. The drops at
the other positions are estimated from one gradient pass per image: the
first-order prediction of every patch's drop, ``sum over the patch of
sum_c d f / d x_c (x - fill)_c``, scaled by least squares on the coarse positions,
plus the coarse residuals (exact minus prediction) interpolated bilinearly. The
rest of a budget of ``budget`` times the full grid's passes is then spent where
this coarse map is highest: those positions are evaluated exactly. The map is
assembled from exact and estimated drops as in the full grid. ``passes_`` (set by
each ``explain`` of at least one image) is the cost per image in forward passes: occluded copies, the
unoccluded image, and the gradient pass counted as ``GRADIENT_COST`` forwards.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from audit.explainers.base import (Explainer, Images, Maps, Targets, check_choice, check_float,
                                   check_int, input_gradients, register, resolve_baseline, run_flat,
                                   target_scores)

BASELINES = ("mean", "constant", "blur")
GRADIENT_COST = 3  # a forward and backward pass, in forward passes (the backward costs about two)


def anchors(size: int, patch: int, stride: int) -> np.ndarray:
    """Start offsets of a patch along one axis; the last patch ends at the border.

    Parameters
    ----------
    size, patch, stride : int
        Image side, patch side and step, in pixels (``patch <= size``).

    Returns
    -------
    np.ndarray
        int32 ``[P]``: ``0, stride, 2 stride, ...`` plus ``size - patch`` if missing.
    """
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return np.array(starts, np.int32)


def grid(shape: tuple[int, int], patch: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """Patch corners ``[P, 2]`` int32 (y0, x0) of the full grid, row-major.

    Parameters
    ----------
    shape, patch, stride : (int, int)
        Image ``(H, W)``, patch ``(ph, pw)`` and stride ``(sh, sw)``, in pixels.
    """
    ys, xs = anchors(shape[0], patch[0], stride[0]), anchors(shape[1], patch[1], stride[1])
    return np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)


def assemble(drops: np.ndarray, corners: np.ndarray, patch: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Average drop per pixel ``[N, H, W]`` float64 of patches ``corners`` ``[P, 2]`` with drops ``[N, P]``.

    Parameters
    ----------
    drops : np.ndarray
        ``[N, P]``: logit drop of each patch, per image.
    corners : np.ndarray
        int ``[P, 2]``: (y0, x0) of each patch, in pixels.
    patch, shape : (int, int)
        Patch ``(ph, pw)`` and image ``(H, W)``, in pixels. Uncovered pixels get 0.
    """
    total = np.zeros((len(drops), *shape), np.float64)
    count = np.zeros(shape, np.float64)
    ph, pw = patch
    for p, (y, x) in enumerate(corners):
        total[:, y:y + ph, x:x + pw] += drops[:, p, None, None]
        count[y:y + ph, x:x + pw] += 1
    return total / np.maximum(count, 1)


def interpolation(positions: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Linear interpolation matrix ``[len(positions), len(known)]`` from values at ``positions[known]``.

    Parameters
    ----------
    positions : np.ndarray
        float ``[P]``, increasing: every position along one axis (pixels).
    known : np.ndarray
        int ``[K]``: indices into ``positions`` where values are known; outside
        them values are held constant (``np.interp``).
    """
    eye = np.eye(len(known))
    return np.stack([np.interp(positions, positions[known], row) for row in eye], axis=1)


def patch_sums(maps: np.ndarray, corners: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
    """Sum of ``maps`` ``[N, H, W]`` over each patch at ``corners`` ``[P, 2]``: ``[N, P]`` (summed-area table).

    Parameters
    ----------
    maps : np.ndarray
        ``[N, H, W]``, summed in float64.
    corners : np.ndarray
        int ``[P, 2]``: (y0, x0) of each patch, in pixels.
    patch : (int, int)
        ``(ph, pw)`` in pixels.
    """
    table = np.pad(maps.astype(np.float64).cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    y, x = corners[:, 0], corners[:, 1]
    ph, pw = patch
    return table[:, y + ph, x + pw] - table[:, y, x + pw] - table[:, y + ph, x] + table[:, y, x]


def estimate_drops(coarse: np.ndarray, predicted: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                   ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Drops at every grid position ``[N, len(ys), len(xs)]`` from the exact ones at ``ys[rows] x xs[cols]``.

    ``coarse`` ``[N, len(rows), len(cols)]`` are exact; ``predicted`` ``[N, len(ys), len(xs)]``
    is the first-order prediction everywhere. Estimate: ``a * predicted`` (``a`` per image,
    least squares on the exact positions) plus the residual interpolated bilinearly.

    Parameters
    ----------
    coarse : np.ndarray
        ``[N, R, K]``: exact drops at the known positions.
    predicted : np.ndarray
        ``[N, len(ys), len(xs)]``: first-order drops at every position.
    rows, cols : np.ndarray
        int ``[R]``, ``[K]``: indices of the known positions into ``ys`` and ``xs``.
    ys, xs : np.ndarray
        int: patch corners along each axis, in pixels.
    """
    at_known = predicted[:, rows][:, :, cols]
    denominator = (at_known ** 2).sum(axis=(1, 2))
    scale = np.where(denominator > 0, (at_known * coarse).sum(axis=(1, 2)) / np.where(denominator > 0, denominator, 1),
                     0.0)[:, None, None]
    wy, wx = interpolation(ys.astype(np.float64), rows), interpolation(xs.astype(np.float64), cols)
    return scale * predicted + np.einsum("yi,nij,xj->nyx", wy, coarse - scale * at_known, wx)


@register("occlusion")
class Occlusion(Explainer):
    """Occlusion maps, full grid or adaptive coarse-to-fine.

    Parameters
    ----------
    batch_size : int, default 32
        Model inputs (images x patches) per model call.
    patch : int, float or (int, int), optional
        Patch size in pixels, (height, width), or a float in (0, 1]: that fraction of the
        shorter image side, so the patch scales with the input size; default ``1/8``
        (``ceil(min(H, W) / 8)`` pixels: 28 at 224 px).
    stride : int or (int, int), optional
        Step between patches in pixels; default ``ceil(patch / 2)`` per axis.
    baseline : str, default "mean"
        What fills the patch: ``"mean"`` (each image's per-channel mean),
        ``"constant"`` (``value``) or ``"blur"`` (Gaussian blur, ``sigma``).
    value : float, default 0.0
        The fill of ``baseline="constant"``, in model input units.
    sigma : float, optional
        Blur radius in pixels for ``baseline="blur"`` (default ``max(patch) / 2``).
    adaptive : bool, default True
        Coarse-to-fine (see the module docstring): about 3x fewer passes than the full
        grid at a Spearman correlation of about 0.92 with its maps (``benchmarks/attribution.py``).
    coarse : int, default 2
        The coarse pass evaluates every ``coarse``-th patch position per axis (adaptive).
    budget : float, default 0.33
        Model passes per image as a share (0, 1] of the full grid's (adaptive); the
        coarse pass is always spent, the remainder refines where the coarse map is
        highest; 1 is the full grid.
    """

    def __init__(self, batch_size: int = 32, patch: int | float | tuple[int, int] | None = None,
                 stride: int | tuple[int, int] | None = None, baseline: str = "mean", value: float = 0.0,
                 sigma: float | None = None, adaptive: bool = True, coarse: int = 2, budget: float = 0.33):
        super().__init__(batch_size)
        if isinstance(patch, float):
            self.patch = check_float(self, "patch", patch, 0.0, 1.0)
        else:
            self.patch = None if patch is None else self._pair("patch", patch)
        self.stride = None if stride is None else self._pair("stride", stride)
        self.baseline = check_choice(self, "baseline", baseline, BASELINES)
        self.value = float(value)
        self.sigma = None if sigma is None else check_float(self, "sigma", sigma, 0.0, open_low=False)
        self.adaptive = bool(adaptive)
        self.coarse = check_int(self, "coarse", coarse, minimum=2)
        self.budget = check_float(self, "budget", budget, 0.0, 1.0)
        self.passes_ = 0

    def _pair(self, param: str, value: Any) -> tuple[int, int]:
        pair = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
        if len(pair) != 2:
            raise self.fail(param, "a positive int or (height, width)", value)
        return check_int(self, param, pair[0]), check_int(self, param, pair[1])

    def geometry(self, shape: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(patch, stride)`` in pixels, resolved for an input of ``shape`` (H, W).

        Parameters
        ----------
        shape : (int, int)
            Input ``(H, W)`` in pixels.

        Raises
        ------
        ValueError
            If the patch is larger than the image.
        """
        fraction = self.patch if isinstance(self.patch, float) else 1 / 8
        side = math.ceil(min(shape) * fraction)
        patch = self.patch if isinstance(self.patch, tuple) else (side, side)
        if patch[0] > shape[0] or patch[1] > shape[1]:
            raise self.fail("patch", f"at most the image size {shape[0]}x{shape[1]}", patch)
        stride = self.stride or (math.ceil(patch[0] / 2), math.ceil(patch[1] / 2))
        return patch, stride

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        shape = classifier.input_size
        patch, stride = self.geometry(shape)
        n = len(images)
        if self.baseline == "constant":
            fill = resolve_baseline(self, self.value, images, None, 0)
        else:
            sigma = max(patch) / 2 if self.sigma is None else self.sigma
            fill = resolve_baseline(self, self.baseline, images, sigma, 0)
        scores = _Scorer(self, classifier, images, fill, targets, patch)
        fine = grid(shape, patch, stride)
        if not self.adaptive or self.budget >= 1.0:
            base, drops = scores.drops(np.broadcast_to(fine, (n, *fine.shape)))
            self.passes_ = len(fine) + 1
            return assemble(drops, fine, patch, shape).astype(np.float32)

        ys, xs = anchors(shape[0], patch[0], stride[0]), anchors(shape[1], patch[1], stride[1])
        rows, cols = (np.unique(np.r_[np.arange(0, len(v), self.coarse), len(v) - 1]) for v in (ys, xs))
        known = np.zeros((len(ys), len(xs)), bool)
        known[np.ix_(rows, cols)] = True
        base, coarse = scores.drops(np.broadcast_to(fine[known.ravel()], (n, known.sum(), 2)))
        predicted = patch_sums(_taylor(self, classifier, images, fill, targets), fine, patch)
        drops = estimate_drops(coarse.reshape(n, len(rows), len(cols)), predicted.reshape(n, len(ys), len(xs)),
                               rows, cols, ys, xs).reshape(n, -1)
        drops[:, known.ravel()] = coarse
        spent = int(known.sum()) + 1 + GRADIENT_COST
        keep = max(0, min(int(self.budget * (len(fine) + 1)) - spent, int((~known).sum())))
        if keep:
            unknown = np.flatnonzero(~known.ravel())
            order = np.argsort(-drops[:, unknown], axis=1, kind="stable")[:, :keep]
            chosen = np.sort(unknown[order], axis=1)                                  # [N, keep]
            _, exact = scores.drops(fine[chosen], base)
            np.put_along_axis(drops, chosen, exact, 1)
        self.passes_ = spent + keep
        return assemble(drops, fine, patch, shape).astype(np.float32)


def _taylor(explainer: Occlusion, classifier, images: Images, fill: Images, targets: Targets) -> np.ndarray:
    """First-order drop per pixel ``sum_c d f_t / d x_c (x - fill)_c`` ``[N, H, W]``, one gradient pass per image."""
    import tensorflow as tf

    def fn(index, x, b, t):  # one item per image: index unused
        return tf.reduce_sum(input_gradients(classifier, x, t) * (x - b), axis=-1)

    ints = tf.TensorSpec((None,), tf.int32)
    traced = classifier.function("occlusion_taylor", fn, ints, classifier.image_spec(), classifier.image_spec(), ints)
    return run_flat(traced, np.arange(len(images)), [], [images, fill, targets], explainer.batch_size, len(images),
                    reduce=False)


class _Scorer:
    """Target logits of occluded copies, batched over images x patches.

    The traced function (one per patch size) copies each item's image and
    scatters the baseline into its patch: one copy of the batch and a patch-sized
    update, so the model pass dominates. Items with ``use_fill = 0`` (the
    unoccluded image) scatter the image's own pixels, i.e. leave it unchanged.
    """

    def __init__(self, explainer: Occlusion, classifier, images: Images, fill: Images, targets: Targets,
                 patch: tuple[int, int]):
        import tensorflow as tf

        ph, pw = patch
        dy, dx = np.meshgrid(np.arange(ph), np.arange(pw), indexing="ij")
        dy, dx = dy.ravel().astype(np.int32), dx.ravel().astype(np.int32)

        def fn(xs, bs, ts, index, y0, x0, use_fill):
            rows = y0[:, None] + dy[None, :]                                  # [B, ph * pw]
            cols = x0[:, None] + dx[None, :]
            item = tf.broadcast_to(tf.range(tf.shape(index)[0])[:, None], tf.shape(rows))
            source = tf.stack([tf.broadcast_to(index[:, None], tf.shape(rows)), rows, cols], axis=-1)
            values = tf.where(use_fill[:, None, None] > 0, tf.gather_nd(bs, source), tf.gather_nd(xs, source))
            occluded = tf.tensor_scatter_nd_update(tf.gather(xs, index), tf.stack([item, rows, cols], axis=-1),
                                                   values)
            return target_scores(classifier, occluded, tf.gather(ts, index))

        ints = tf.TensorSpec((None,), tf.int32)
        self.fn = classifier.function(("occlusion", ph, pw), fn, classifier.image_spec(), classifier.image_spec(),
                                      ints, ints, ints, ints, ints)
        self.per_image = [images, fill, targets]
        self.batch_size = explainer.batch_size

    def drops(self, corners: np.ndarray, base: np.ndarray | None = None):
        """``(f(x) [N], f(x) - f(x occluded) [N, P])`` for per-image patch corners ``[N, P, 2]``.

        ``f(x)`` is evaluated as one more item per image (no fill) unless ``base`` is given.
        """
        n, p = corners.shape[:2]
        extra = 1 if base is None else 0
        y0 = np.zeros((n, p + extra), np.int32)
        x0 = np.zeros((n, p + extra), np.int32)
        use_fill = np.ones((n, p + extra), np.int32)
        y0[:, extra:], x0[:, extra:] = corners[..., 0], corners[..., 1]
        use_fill[:, :extra] = 0
        owner = np.repeat(np.arange(n), p + extra)
        scores = run_flat(self.fn, owner, self.per_image, [y0.ravel(), x0.ravel(), use_fill.ravel()],
                          self.batch_size, n, reduce=False).reshape(n, p + extra).astype(np.float64)
        if base is None:
            base = scores[:, 0]
        return base, base[:, None] - scores[:, extra:]
