"""Guided backpropagation: a modified input gradient, its magnitude per pixel.

Paper: J. T. Springenberg, A. Dosovitskiy, T. Brox, M. Riedmiller, "Striving for
simplicity: the all convolutional net", ICLR Workshop, 2015.

Formula: ``g = d f_t(x) / d x`` computed by the chain rule except at every ReLU
``y = relu(z)`` (and ``relu6``, see ``_relu``), whose backward pass becomes::

    dL/dz = relu(dL/dy) * [z > 0]          (capped ReLU: also * [y < cap])

and ``map[i, j] = max_c |g[i, j, c]|``, with ``f_t`` the pre-softmax logit of the
target class. No baseline, no normalisation; ``[H, W]`` float32, non-negative.
Cost: one forward and one backward pass per image.
"""
from __future__ import annotations

from audit.explainers.base import Explainer, Images, Maps, Targets, max_abs_over_channels, one_pass_maps, register


@register("guided_backprop")
class GuidedBackprop(Explainer):
    """Guided backpropagation magnitude maps.

    Parameters
    ----------
    batch_size : int, default 32
        Images per model call (the memory bound).
    """

    needs_layers = True

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        return one_pass_maps(self, classifier, images, targets, "guided_backprop", max_abs_over_channels,
                             relu="guided")
