"""Grad-CAM: the target layer's channels weighted by their mean gradient.

Paper: R. R. Selvaraju, M. Cogswell, A. Das, R. Vedantam, D. Parikh, D. Batra,
"Grad-CAM: visual explanations from deep networks via gradient-based
localization", ICCV 2017.

Formula, with ``A`` ``[h, w, K]`` the activations of the classifier's target layer
(``model.target_layer``; default the last layer with a spatial 4-D output), ``f_t``
the pre-softmax logit of the target class and ``g = d f_t / d A``::

    w_k      = (1 / (h w)) * sum_{i, j} g[i, j, k]
    cam      = relu(sum_k w_k * A[:, :, k])                    [h, w]
    map      = bilinear_resize(cam, (H, W))                    [H, W]

No baseline, no normalisation: non-negative float32 in logit units. The resize
runs on the device (``tf.image.resize``). Cost: one forward pass per image plus
the backward pass from the logits to the target layer.
"""
from __future__ import annotations

import numpy as np

from audit.explainers.base import Explainer, Images, Maps, Targets, register, run_flat


def cam_function(classifier, key: str, weights_of):
    """Traced ``(index [B], images [B], targets [B]) -> relu(sum_k w_k A_k)`` at input resolution ``[B, H, W]``.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model; the trace is cached on it under ``key``.
    key : str
        Cache key of the traced function (the method's name).
    weights_of : callable
        ``weights_of(grads, acts) -> [B, 1, 1, K]``: the channel weights from the
        gradients ``d f_t / d A`` and activations ``A``, both ``[B, h, w, K]``.

    Returns
    -------
    callable
        The traced function; ``index`` int32 ``[B]`` is unused (one item per image).
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
    """Class activation maps ``[N, H, W]`` float32 of ``images`` ``[N, H, W, C]`` for ``targets`` int ``[N]``.

    Parameters
    ----------
    explainer : Explainer
        Gives ``batch_size`` (images per model call).
    classifier, key, weights_of
        As in ``cam_function``.
    images : np.ndarray
        float32 ``[N, H, W, C]``, as the model takes them.
    targets : np.ndarray
        int32 ``[N]``, the class explained per image.
    """
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
    batch_size : int, default 32
        Images per model call (the memory bound).
    """

    needs_layers = True

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        return cam_maps(self, classifier, images, targets, "gradcam", _mean_gradient)
