"""Similarity of two stacks of maps ``[n, H, W]``, image by image.

Both measures compare absolute values (the sign of an attribution is a separate
question from where it lies, as in Adebayo et al., 2018).
"""
from __future__ import annotations

import numpy as np

SSIM_SIGMA = 1.5            # Gaussian window of SSIM, in pixels (Wang et al., 2004)
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of ``|a[i]|`` and ``|b[i]|`` over pixels: float64 ``[n]``.

    A constant map has no ranking: its correlation is NaN (callers decide what it means).

    Parameters
    ----------
    a, b : np.ndarray
        Maps ``[n, H, W]`` (any shape with a leading ``n``), the same shape.
    """
    from scipy.stats import rankdata

    a = np.abs(np.asarray(a, np.float64)).reshape(len(a), -1)
    b = np.abs(np.asarray(b, np.float64)).reshape(len(b), -1)
    ra = rankdata(a, axis=1)
    rb = rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    norm = np.sqrt((ra ** 2).sum(axis=1) * (rb ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (ra * rb).sum(axis=1) / np.where(norm > 0, norm, 1.0), np.nan)


def scaled(maps: np.ndarray) -> np.ndarray:
    """``|maps|`` divided by each map's maximum (all-zero maps stay zero): float64 ``[n, H, W]`` in [0, 1].

    Parameters
    ----------
    maps : np.ndarray
        ``[n, H, W]``.
    """
    maps = np.abs(np.asarray(maps, np.float64))
    peak = maps.reshape(len(maps), -1).max(axis=1, initial=0.0)[:, None, None]
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1.0), 0.0)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean structural similarity of ``scaled(a)[i]`` and ``scaled(b)[i]`` (Gaussian window): ``[n]``.

    ``SSIM = (2 mx my + C1)(2 cov + C2) / ((mx^2 + my^2 + C1)(vx + vy + C2))`` per pixel with
    local means, variances and covariance from a Gaussian window of ``SSIM_SIGMA`` pixels
    (reflected borders), averaged over the pixels (Wang et al., 2004).

    Parameters
    ----------
    a, b : np.ndarray
        Maps ``[n, H, W]``, the same shape.
    """
    from scipy.ndimage import gaussian_filter

    x, y = scaled(a), scaled(b)

    def smooth(z):
        return gaussian_filter(z, sigma=(0, SSIM_SIGMA, SSIM_SIGMA), mode="reflect")

    mx, my = smooth(x), smooth(y)
    vx = smooth(x * x) - mx * mx
    vy = smooth(y * y) - my * my
    cov = smooth(x * y) - mx * my
    index = ((2 * mx * my + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2))
    return index.reshape(len(index), -1).mean(axis=1)
