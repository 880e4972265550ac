"""Guided backpropagation (Springenberg et al., 2015).

The gradient of the target logit with respect to the input where every ReLU
passes back only positive gradients at positive inputs (see ``_relu``); the map
is ``max_c |g_c|`` per pixel. One forward and one backward pass per image.
"""
from __future__ import annotations

from audit.explainers.base import Explainer, Images, Maps, Targets, max_abs_over_channels, one_pass_maps, register


@register("guided_backprop")
class GuidedBackprop(Explainer):
    """Guided backpropagation magnitude maps.

    Parameters
    ----------
    batch_size : images per model call.
    """

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        return one_pass_maps(self, classifier, images, targets, "guided_backprop", max_abs_over_channels,
                             relu="guided")
