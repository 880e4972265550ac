"""Expected gradients: integrated gradients averaged over baselines drawn from a background set.

Paper: G. Erion, J. D. Janizek, P. Sturmfels, S. M. Lundberg, S.-I. Lee, "Improving
performance of deep learning models with axiomatic attribution priors and
expected gradients", Nature Machine Intelligence 3, 2021. Computed as SHAP's
``GradientExplainer`` does (one random point on each path).

Formula, for image ``i`` ``x`` ``[H, W, C]``, ``f_t`` the pre-softmax logit of the
target class, background ``B`` ``[M, H, W, C]`` and ``n = samples``::

    EG(x)_c  = E_{b ~ B, a ~ U(0, 1)} [(x - b)_c * d f_t / d x_c (b + a (x - b))]
             ~ (1 / n) * sum_s (x - b_s)_c * d f_t / d x_c (b_s + a_s (x - b_s))
    map[i,j] = sum_c EG(x)[i, j, c]

where ``rng = default_rng([seed, i])`` draws first the ``n`` background rows
(``b_s = B[rng.integers(0, M, n)[s]]``, uniform with replacement) then the ``n``
points ``a_s = rng.uniform(0, 1, n)``. Signed float32 in logit units, not
normalised; ``E[sum(map)] = f_t(x) - E_b f_t(b)``. Maps do not depend on
``batch_size``. Cost: ``samples`` forward and backward passes per image, images x samples
flattened into chunks of ``batch_size`` model inputs.
"""
from __future__ import annotations

import numpy as np

from audit.explainers.base import (Explainer, Images, Maps, Targets, check_int, per_image_items,
                                   register, run_flat)
from audit.explainers.integrated_gradients import path_contributions


@register("expected_gradients")
class ExpectedGradients(Explainer):
    """Expected gradients over a background set.

    Parameters
    ----------
    batch_size : int, default 32
        Model inputs (images x samples) per model call.
    samples : int, default 32
        (baseline, a) draws per image.
    background : np.ndarray, optional
        float32 ``[M, H, W, C]`` reference images the baselines are drawn
        from, as the model takes them. Default: the images of the ``explain`` call
        itself (as SHAP does with a data sample); pass a fixed set (e.g. a sample of
        the training data) for maps that do not depend on the other images of the
        call. With a single image and no background the map is zero.
    seed : int, default 0
        Seed of the draws (>= 0).
    """

    def __init__(self, batch_size: int = 32, samples: int = 32, background: np.ndarray | None = None,
                 seed: int = 0):
        super().__init__(batch_size)
        self.samples = check_int(self, "samples", samples)
        self.background = background
        self.seed = check_int(self, "seed", seed, minimum=0)

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        import tensorflow as tf

        n = len(images)
        background = images if self.background is None else np.asarray(self.background, np.float32)
        if background.ndim != 4 or background.shape[1:] != images.shape[1:] or not len(background):
            raise self.fail("background", f"an array [M, {', '.join(map(str, images.shape[1:]))}] with M >= 1",
                            f"shape {list(background.shape)}")
        rows = np.empty(n * self.samples, np.int64)
        alphas = np.empty(n * self.samples, np.float32)
        for i in range(n):
            rng = np.random.default_rng([self.seed, i])
            part = slice(i * self.samples, (i + 1) * self.samples)
            rows[part] = rng.integers(0, len(background), self.samples)
            alphas[part] = rng.uniform(0.0, 1.0, self.samples)

        def fn(xs, ts, index, baselines, alpha, weight):
            contributions = path_contributions(classifier, tf.gather(xs, index), baselines, tf.gather(ts, index),
                                               alpha, weight)
            return tf.math.unsorted_segment_sum(contributions, index, tf.shape(xs)[0])

        scalar = tf.TensorSpec((None,), tf.float32)
        traced = classifier.function("expected_gradients", fn, classifier.image_spec(),
                                     tf.TensorSpec((None,), tf.int32), tf.TensorSpec((None,), tf.int32),
                                     classifier.image_spec(), scalar, scalar)
        maps = run_flat(traced, per_image_items(n, self.samples), [images, targets],
                        [lambda start, stop: background[rows[start:stop]], alphas,
                         np.full(n * self.samples, 1.0 / self.samples, np.float32)],
                        self.batch_size, n, reduce=True)
        return maps.astype(np.float32)
