"""Grad-CAM++: Grad-CAM with pixel-weighted positive gradients as channel weights.

Paper: A. Chattopadhay, A. Sarkar, P. Howlader, V. N. Balasubramanian,
"Grad-CAM++: generalized gradient-based visual explanations for deep
convolutional networks", WACV 2018.

Formula, with ``A`` ``[h, w, K]`` the target layer's activations (as in Grad-CAM),
``f_t`` the pre-softmax logit of the target class and ``g = d f_t / d A``::

    alpha[i, j, k] = g[i,j,k]^2 / (2 g[i,j,k]^2 + (sum_{a, b} A[a,b,k]) * g[i,j,k]^3)
                     (0 where the denominator is 0)
    w_k            = sum_{i, j} alpha[i, j, k] * relu(g[i, j, k])
    map            = bilinear_resize(relu(sum_k w_k * A[:, :, k]), (H, W))

``alpha`` is the paper's closed form for an exponential output ``exp(f_t)``, as in
its reference code. No baseline, no normalisation: non-negative float32
``[H, W]``. Same cost as Grad-CAM: one forward pass per image and the backward
pass to the target layer.
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
    batch_size : int, default 32
        Images per model call (the memory bound).
    """

    needs_layers = True

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        return cam_maps(self, classifier, images, targets, "gradcam_plus_plus", _plus_plus_weights)
