"""Grad-CAM++ (Chattopadhay et al., 2018).

Channel weights ``w_k = sum_ij alpha_ijk relu(g_ijk)`` with ``g = d logit_c / d A``
and ``alpha = g^2 / (2 g^2 + sum_ab A_abk g^3)`` (the closed form of the paper
for an exponential output, as in its reference code; 0 where the denominator
is 0); ``cam = relu(sum_k w_k A_k)`` upsampled bilinearly on the device. Same
cost as Grad-CAM: one forward pass per image and the backward pass to the
target layer.
"""
from __future__ import annotations

from audit.explainers.base import Explainer, Images, Maps, Targets, register
from audit.explainers.gradcam import cam_maps


def _plus_plus_weights(grads, acts):
    import tensorflow as tf

    g2 = tf.square(grads)
    g3 = g2 * grads
    denominator = 2.0 * g2 + tf.reduce_sum(acts, axis=(1, 2), keepdims=True) * g3
    alpha = tf.math.divide_no_nan(g2, denominator)
    return tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2), keepdims=True)


@register("gradcam_plus_plus")
class GradCAMPlusPlus(Explainer):
    """Grad-CAM++ maps of the classifier's target layer.

    Parameters
    ----------
    batch_size : images per model call.
    """

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        return cam_maps(self, classifier, images, targets, "gradcam_plus_plus", _plus_plus_weights)
