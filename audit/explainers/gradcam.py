"""Grad-CAM (Selvaraju et al., 2017).

``cam = relu(sum_k w_k A_k)`` with ``w_k`` the spatial mean of ``d logit_c / d A_k``
over the target layer's activations ``A`` ``[h, w, K]``, upsampled bilinearly on
the device to the input resolution. One forward and one backward pass per image.
"""
from __future__ import annotations

import numpy as np

from audit.explainers.base import Explainer, register


@register("gradcam")
class GradCAM(Explainer):
    def explain_batch(self, classifier, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        height, width = classifier.input_size

        def gradcam(x, t):
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits, acts = classifier.forward(x)
                score = tf.gather(logits, t, batch_dims=1)
            grads = tape.gradient(score, acts)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * acts, axis=-1, keepdims=True))
            return tf.image.resize(cam, (height, width), method="bilinear")[..., 0]

        fn = classifier.function("gradcam", gradcam, classifier.image_spec(), tf.TensorSpec((None,), tf.int32))
        return fn(tf.constant(images), tf.constant(targets)).numpy()
