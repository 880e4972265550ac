"""Integrated gradients: gradients along the straight path from a baseline, times the input change.

Paper: M. Sundararajan, A. Taly, Q. Yan, "Axiomatic attribution for deep networks",
ICML 2017 (PMLR 70).

Formula, for an image ``x`` ``[H, W, C]``, baseline ``b`` (default the all-zero
"black" input; see ``base.resolve_baseline``) and ``f_t`` the pre-softmax logit of
the target class::

    IG(x)_c  = (x - b)_c * integral_0^1 d f_t / d x_c (b + a (x - b)) da
             ~ (x - b)_c * sum_k w_k * d f_t / d x_c (b + a_k (x - b))
    map[i,j] = sum_c IG(x)[i, j, c]

with ``steps`` nodes ``a_k`` in [0, 1] and weights ``w_k`` (summing to 1) of the
quadrature ``rule``. Signed, float32, logit units, not normalised;
``sum(map) ~ f_t(x) - f_t(b)`` (completeness). Rules: ``left``/``right``/``mid`` Riemann sums (``right`` is the
original paper's), ``trapezoid`` (nodes at both ends, Xplique's) and
``gauss_legendre`` (the default: exact for polynomials of degree ``2 steps - 1``
along the path; on a ReLU network the integrand is piecewise constant, and on
the demo CNN Gauss-Legendre needs about half the steps of the midpoint or
trapezoid rule for the same gap; ``benchmarks/attribution.py`` prints the table).

Cost: ``steps`` forward and backward passes per image; images x steps are
flattened into chunks of ``batch_size`` model inputs and each chunk's gradients
are summed per image on the device.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from audit.explainers.base import (Explainer, Images, Maps, Targets, check_choice, check_float, check_inputs,
                                   check_int, input_gradients, per_image_items, register, resolve_baseline,
                                   run_flat)

RULES = ("left", "right", "mid", "trapezoid", "gauss_legendre")


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``a_k`` in [0, 1] and weights ``w_k`` (summing to 1) of ``rule`` with ``steps`` nodes.

    Parameters
    ----------
    rule : str
        One of ``RULES``: ``left``/``right``/``mid`` (``a_k = k/n``, ``(k+1)/n``,
        ``(k+0.5)/n``, ``w_k = 1/n``), ``trapezoid`` (``a_k = k/(n-1)``, end weights
        halved; ``a = [1]`` for one step) or ``gauss_legendre``.
    steps : int
        Number of nodes ``n``.

    Returns
    -------
    (np.ndarray, np.ndarray)
        float64 ``[steps]`` nodes and ``[steps]`` weights.

    Raises
    ------
    ValueError
        For an unknown ``rule``.
    """
    k = np.arange(steps, dtype=np.float64)
    if rule == "left":
        return k / steps, np.full(steps, 1.0 / steps)
    if rule == "right":
        return (k + 1) / steps, np.full(steps, 1.0 / steps)
    if rule == "mid":
        return (k + 0.5) / steps, np.full(steps, 1.0 / steps)
    if rule == "trapezoid":
        if steps == 1:
            return np.array([1.0]), np.array([1.0])
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        return k / (steps - 1), weights
    if rule == "gauss_legendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1.0) / 2.0, weights / 2.0
    raise ValueError(f"unknown integration rule {rule!r}; expected one of {', '.join(RULES)}")


def path_contributions(classifier, x, b, t, alpha, weight):
    """Inside a traced function: ``w * sum_c (x - b)_c * d f_t / d x_c`` at ``b + a (x - b)``, ``[B, H, W]``.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model (``f_t`` is its pre-softmax logit of class ``t``).
    x, b : tf.Tensor
        float32 ``[B, H, W, C]``: images and their baselines, one per item.
    t : tf.Tensor
        int32 ``[B]``: target class per item.
    alpha, weight : tf.Tensor
        float32 ``[B]``: quadrature node ``a`` in [0, 1] and weight ``w`` per item.
    """
    import tensorflow as tf

    delta = x - b
    grads = input_gradients(classifier, b + alpha[:, None, None, None] * delta, t)
    return weight[:, None, None] * tf.reduce_sum(delta * grads, axis=-1)


@register("integrated_gradients")
class IntegratedGradients(Explainer):
    """Integrated gradients along the straight path from a baseline.

    Parameters
    ----------
    batch_size : int, default 32
        Model inputs (images x steps) per model call.
    steps : int, default 32
        Quadrature nodes per image (model passes per image). 16 nodes would halve the cost but
        miss the 1% completeness bound of ``tests/test_explainers_exact.py`` (a gap of 1.14% of
        ``f(x) - f(baseline)`` there, 0.9% at 32), so 32 stays the default.
    rule : str, default "gauss_legendre"
        ``gauss_legendre``, ``mid``, ``left``, ``right`` or ``trapezoid``.
    baseline : str, float or np.ndarray, default "black"
        ``"black"`` (all-zero input), ``"blur"``, ``"noise"``, ``"mean"``, a number, or
        float32 ``[H, W, C]`` / ``[N, H, W, C]`` in model input units (see
        ``base.resolve_baseline``).
    sigma : float, optional
        Blur radius in pixels for ``baseline="blur"`` (default ``min(H, W) / 10``).
    seed : int, default 0
        Seed of the ``noise`` baseline, drawn per image.

    ``explain`` returns the maps; ``explain_with_gap`` also returns the
    completeness gap per image, ``sum(map) - (f(x) - f(baseline))`` in logits,
    at the price of two more forward passes per image.
    """

    def __init__(self, batch_size: int = 32, steps: int = 32, rule: str = "gauss_legendre",
                 baseline: Any = "black", sigma: float | None = None, seed: int = 0):
        super().__init__(batch_size)
        self.steps = check_int(self, "steps", steps)
        self.rule = check_choice(self, "rule", rule, RULES)
        self.baseline = baseline
        self.sigma = None if sigma is None else check_float(self, "sigma", sigma, 0.0, open_low=False)
        self.seed = check_int(self, "seed", seed, minimum=0)

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        return self._maps(classifier, images, targets)[0]

    def explain_with_gap(self, classifier, images: Images, targets: Targets) -> tuple[Maps, np.ndarray]:
        """``(maps [N, H, W] float32, gaps [N] float64)``; ``gap = sum(map) - (f(x) - f(baseline))``.

        Parameters
        ----------
        classifier : audit.model_io.Classifier
            The model.
        images : np.ndarray
            float32 ``[N, H, W, C]``, as the model takes them.
        targets : np.ndarray
            int ``[N]``, the class explained per image.

        Returns
        -------
        (np.ndarray, np.ndarray)
            The maps and the completeness gap per image, in logits.
        """
        images, targets = check_inputs(classifier, images, targets)
        maps, baselines = self._maps(classifier, images, targets)
        return maps, maps.sum(axis=(1, 2), dtype=np.float64) - self.differences(classifier, images, targets,
                                                                                baselines)

    def differences(self, classifier, images: Images, targets: Targets, baselines: Images | None = None) -> np.ndarray:
        """``f(x) - f(baseline)`` of the target logit per image, float64 ``[N]``: what a map should sum to.

        Parameters
        ----------
        classifier : audit.model_io.Classifier
            The model.
        images : np.ndarray
            float32 ``[N, H, W, C]``, as the model takes them.
        targets : np.ndarray
            int ``[N]``, the class per image.
        baselines : np.ndarray, optional
            float32 ``[N, H, W, C]``; default this explainer's (``baseline``, ``sigma``, ``seed``).
        """
        if baselines is None:
            baselines = resolve_baseline(self, self.baseline, images, self.sigma, self.seed)
        rows = np.arange(len(images))
        diff = np.zeros(len(images), np.float64)
        for start in range(0, len(images), self.batch_size):
            part = slice(start, start + self.batch_size)
            fx = classifier.logits(images[part])[rows[part] - start, targets[part]]
            fb = classifier.logits(baselines[part])[rows[part] - start, targets[part]]
            diff[part] = fx.astype(np.float64) - fb
        return diff

    def _maps(self, classifier, images: Images, targets: Targets) -> tuple[Maps, Images]:
        import tensorflow as tf

        baselines = resolve_baseline(self, self.baseline, images, self.sigma, self.seed)
        if not len(images):
            return np.zeros(images.shape[:3], np.float32), baselines

        def fn(xs, bs, ts, index, alpha, weight):
            contributions = path_contributions(classifier, tf.gather(xs, index), tf.gather(bs, index),
                                               tf.gather(ts, index), alpha, weight)
            return tf.math.unsorted_segment_sum(contributions, index, tf.shape(xs)[0])

        scalar = tf.TensorSpec((None,), tf.float32)
        specs = (classifier.image_spec(), classifier.image_spec(), tf.TensorSpec((None,), tf.int32),
                 tf.TensorSpec((None,), tf.int32), scalar, scalar)
        traced = classifier.function("integrated_gradients", fn, *specs)
        alphas, weights = quadrature(self.rule, self.steps)
        n = len(images)
        maps = run_flat(traced, per_image_items(n, self.steps), [images, baselines, targets],
                        [np.tile(alphas, n).astype(np.float32), np.tile(weights, n).astype(np.float32)],
                        self.batch_size, n, reduce=True)
        return maps.astype(np.float32), baselines
