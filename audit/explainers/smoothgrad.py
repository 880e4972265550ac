"""SmoothGrad (Smilkov et al., 2017).

The input gradient averaged over ``samples`` noisy copies ``x + N(0, s^2)`` with
``s = noise * (max(x) - min(x))`` per image; the map is ``max_c |mean_k g_k,c|``.
Noise of sample ``k`` of image ``i`` comes from ``default_rng([seed, i, k])``, so maps
do not depend on ``batch_size``. Cost: ``samples`` forward and backward passes per
image, images x samples flattened into chunks of ``batch_size`` model inputs.
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
    batch_size : model inputs (images x samples) per model call.
    samples : noisy copies per image.
    noise : noise standard deviation as a fraction of each image's value range.
    seed : seed of the noise.
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
