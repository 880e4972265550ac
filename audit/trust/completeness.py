"""The completeness gap of integrated gradients: ``sum(map) - (f(x) - f(baseline))`` in logits.

IG's maps should sum to the logit difference between the image and its baseline;
the gap measures the quadrature error of the run's settings (``steps``, ``rule``).
It is computed from the run's stored maps (float16; the relative error of a sum is
about 1e-3) with two forward passes per image, the same formula as
``IntegratedGradients.explain_with_gap``, so it costs no integration again.
"""
from __future__ import annotations

import numpy as np


def gaps(classifier, explainer, images: np.ndarray, targets: np.ndarray,
         maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(gap, difference)`` per image, float64 ``[n]``, of stored IG ``maps`` ``[n, H, W]`` made by
    ``explainer``: ``difference = f(x) - f(baseline)`` and ``gap = sum(map) - difference``.

    The baselines are resolved exactly as ``explainer`` resolves them (its
    ``baseline``, ``sigma`` and ``seed``).
    """
    if not len(images):
        return np.zeros(0), np.zeros(0)
    diff = explainer.differences(classifier, images, targets)
    return np.asarray(maps, np.float64).sum(axis=(1, 2)) - diff, diff
