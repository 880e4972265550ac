"""Gradient x input (Shrikumar et al., 2016): ``sum_c x_c * d logit_t / d x_c`` per pixel.

Signed. One forward and one backward pass to the input per image. Equals
integrated gradients with a black baseline for a model that is linear in its input.
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
    batch_size : images per model call.
    """

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        return one_pass_maps(self, classifier, images, targets, "gradient_x_input", _times_input)
