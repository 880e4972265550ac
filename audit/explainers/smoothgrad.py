"""SmoothGrad: the input gradient averaged over noisy copies, its magnitude per pixel.

Paper: D. Smilkov, N. Thorat, B. Kim, F. Viegas, M. Wattenberg, "SmoothGrad:
removing noise by adding noise", ICML Workshop on Visualization for Deep
Learning, 2017 (arXiv:1706.03825).

Formula, for image ``i`` ``x`` ``[H, W, C]``, ``f_t`` the pre-softmax logit of the
target class and ``n = samples``::

    s        = noise * (max(x) - min(x))            (over all pixels and channels)
    e_k      ~ N(0, I) [H, W, C],  k = 0 .. n-1     (default_rng([seed, i, k]))
    g        = (1 / n) * sum_k d f_t / d x (x + s * e_k)
    map[i,j] = max_c | g[i, j, c] |

The absolute value is taken after the mean. No normalisation; ``[H, W]`` float32,
non-negative. Noise depends only on ``(seed, i, k)``, so maps do not depend on
``batch_size``. Cost: ``samples`` forward and backward passes per image, images x
samples flattened into chunks of ``batch_size`` model inputs.
"""
from __future__ import annotations

import numpy as np

from audit.explainers.base import (Explainer, Images, Maps, Targets, check_float, check_int,
                                   input_gradients, per_image_items, register, run_flat)


@register("smoothgrad")
class SmoothGrad(Explainer):
    """SmoothGrad magnitude maps.

    Parameters
    ----------
    batch_size : int, default 32
        Model inputs (images x samples) per model call.
    samples : int, default 32
        Noisy copies per image.
    noise : float, default 0.15
        Noise standard deviation as a share (>= 0) of each image's value range.
    seed : int, default 0
        Seed of the noise (>= 0).
    """

    def __init__(self, batch_size: int = 32, samples: int = 32, noise: float = 0.15, seed: int = 0):
        super().__init__(batch_size)
        self.samples = check_int(self, "samples", samples)
        self.noise = check_float(self, "noise", noise, 0.0, open_low=False)
        self.seed = check_int(self, "seed", seed, minimum=0)

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        import tensorflow as tf

        n = len(images)
        scale = (self.noise * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))).astype(np.float32)

        def fn(xs, ts, scales, index, noise, weight):
            x = tf.gather(xs, index) + tf.gather(scales, index)[:, None, None, None] * noise
            grads = input_gradients(classifier, x, tf.gather(ts, index))
            return tf.math.unsorted_segment_sum(weight[:, None, None, None] * grads, index, tf.shape(xs)[0])

        scalar = tf.TensorSpec((None,), tf.float32)
        traced = classifier.function("smoothgrad", fn, classifier.image_spec(), tf.TensorSpec((None,), tf.int32),
                                     scalar, tf.TensorSpec((None,), tf.int32), classifier.image_spec(), scalar)
        shape = images.shape[1:]
        samples, seed = self.samples, self.seed

        def noise(start: int, stop: int) -> np.ndarray:
            out = np.empty((stop - start, *shape), np.float32)
            for j in range(start, stop):
                np.random.default_rng([seed, j // samples, j % samples]).standard_normal(dtype=np.float32,
                                                                                         out=out[j - start])
            return out

        grads = run_flat(traced, per_image_items(n, samples), [images, targets, scale],
                         [noise, np.full(n * samples, 1.0 / samples, np.float32)], self.batch_size, n, reduce=True)
        return np.abs(grads).max(axis=-1).astype(np.float32)
