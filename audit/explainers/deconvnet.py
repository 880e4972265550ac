"""DeconvNet (Zeiler & Fergus, 2014), as a modified gradient.

The gradient of the target logit with respect to the input where every ReLU
passes back the positive part of the incoming gradient regardless of its
forward input (see ``_relu``); the map is ``max_c |g_c|`` per pixel. One forward
and one backward pass per image.
"""
from __future__ import annotations

from audit.explainers.base import Explainer, Images, Maps, Targets, max_abs_over_channels, one_pass_maps, register


@register("deconvnet")
class DeconvNet(Explainer):
    """DeconvNet magnitude maps.

    Parameters
    ----------
    batch_size : images per model call.
    """

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        return one_pass_maps(self, classifier, images, targets, "deconvnet", max_abs_over_channels,
                             relu="deconvnet")
