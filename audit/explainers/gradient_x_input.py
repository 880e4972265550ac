"""Gradient x input: the input times its gradient, summed over channels.

Paper: A. Shrikumar, P. Greenside, A. Shcherbina, A. Kundaje, "Not just a black
box: learning important features through propagating activation differences",
arXiv:1605.01713, 2016.

Formula, with ``f_t`` the pre-softmax logit of the target class::

    map[i, j] = sum_c x[i, j, c] * d f_t(x) / d x[i, j, c]

Signed, ``[H, W]`` float32 in logit units; no baseline (implicitly the all-zero
input), no normalisation. Equals integrated gradients with a black baseline for
a model that is linear in its input. Cost: one forward and one backward pass per image.
"""
from __future__ import annotations

from audit.explainers.base import Explainer, Images, Maps, Targets, one_pass_maps, register


def _times_input(x, grads):
    import tensorflow as tf

    return tf.reduce_sum(x * grads, axis=-1)


@register("gradient_x_input")
class GradientXInput(Explainer):
    """Gradient times input, summed over channels.

    Parameters
    ----------
    batch_size : int, default 32
        Images per model call (the memory bound).
    """

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        return one_pass_maps(self, classifier, images, targets, "gradient_x_input", _times_input)
