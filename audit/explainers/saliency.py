"""Saliency (Simonyan et al., 2014): ``max_c |d logit_t / d x_c|`` per pixel.

One forward and one backward pass to the input per image.
"""
from __future__ import annotations

from audit.explainers.base import Explainer, Images, Maps, Targets, max_abs_over_channels, one_pass_maps, register


@register("saliency")
class Saliency(Explainer):
    """Gradient magnitude maps.

    Parameters
    ----------
    batch_size : images per model call.
    """

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        return one_pass_maps(self, classifier, images, targets, "saliency", max_abs_over_channels)
