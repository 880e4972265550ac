"""DeconvNet, as a modified gradient: its magnitude per pixel.

Paper: M. D. Zeiler, R. Fergus, "Visualizing and understanding convolutional
networks", ECCV 2014 (LNCS 8689). The "modified gradient" reading follows
Springenberg et al., ICLR Workshop 2015.

Formula: ``g = d f_t(x) / d x`` computed by the chain rule except at every ReLU
``y = relu(z)`` (and ``relu6``, see ``_relu``), whose backward pass ignores the
forward input::

    dL/dz = relu(dL/dy)

and ``map[i, j] = max_c |g[i, j, c]|``, with ``f_t`` the pre-softmax logit of the
target class. No baseline, no normalisation; ``[H, W]`` float32, non-negative.
Cost: one forward and one backward pass per image.
"""
from __future__ import annotations

from audit.explainers.base import Explainer, Images, Maps, Targets, max_abs_over_channels, one_pass_maps, register


@register("deconvnet")
class DeconvNet(Explainer):
    """DeconvNet magnitude maps.

    Parameters
    ----------
    batch_size : int, default 32
        Images per model call (the memory bound).
    """

    needs_layers = True

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        return one_pass_maps(self, classifier, images, targets, "deconvnet", max_abs_over_channels,
                             relu="deconvnet")
