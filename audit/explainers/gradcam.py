"""Grad-CAM (Selvaraju et al., 2017).

``cam = relu(sum_k w_k A_k)`` with ``w_k`` the spatial mean of ``d logit_c / d A_k``
over the target layer's activations ``A`` ``[h, w, K]``, upsampled bilinearly on
the device to the input resolution. One forward pass per image, plus the short
backward pass from the logits to the target layer.
"""
from __future__ import annotations

import numpy as np

from audit.explainers.base import Explainer, Images, Maps, Targets, register, run_flat


def cam_function(classifier, key: str, weights_of):
    """Traced ``(index [B], images [B], targets [B]) -> relu(sum_k w_k A_k)`` at input resolution ``[B, H, W]``.

    ``weights_of(grads, acts) -> [B, 1, 1, K]`` gives the channel weights.
    """
    import tensorflow as tf

    height, width = classifier.input_size

    def cam(index, images, targets):  # one item per image: index unused
        with tf.GradientTape() as tape:
            logits, acts = classifier.forward(images)
            score = tf.gather(logits, targets, batch_dims=1)
        grads = tape.gradient(score, acts)
        weights = weights_of(grads, acts)
        out = tf.nn.relu(tf.reduce_sum(weights * acts, axis=-1, keepdims=True))
        return tf.image.resize(out, (height, width), method="bilinear")[..., 0]

    ints = tf.TensorSpec((None,), tf.int32)
    return classifier.function(key, cam, ints, classifier.image_spec(), ints)


def cam_maps(explainer: Explainer, classifier, images: Images, targets: Targets, key: str, weights_of) -> Maps:
    fn = cam_function(classifier, key, weights_of)
    return run_flat(fn, np.arange(len(images)), [], [images, targets], explainer.batch_size, len(images),
                    reduce=False)


def _mean_gradient(grads, _acts):
    import tensorflow as tf

    return tf.reduce_mean(grads, axis=(1, 2), keepdims=True)


@register("gradcam")
class GradCAM(Explainer):
    """Grad-CAM maps of the classifier's target layer.

    Parameters
    ----------
    batch_size : images per model call.
    """

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        return cam_maps(self, classifier, images, targets, "gradcam", _mean_gradient)
