"""Saliency: the magnitude of the input gradient of the target logit.

Paper: K. Simonyan, A. Vedaldi, A. Zisserman, "Deep inside convolutional networks:
visualising image classification models and saliency maps", ICLR Workshop, 2014.

Formula, for an image ``x`` ``[H, W, C]`` and target class ``t``, with ``f_t`` the
pre-softmax logit (the model's output when it has no final softmax)::

    map[i, j] = max_c | d f_t(x) / d x[i, j, c] |

No baseline, no normalisation; ``[H, W]`` float32, non-negative, in logit units
per input unit. Cost: one forward and one backward pass to the input per image.
"""
from __future__ import annotations

from audit.explainers.base import Explainer, Images, Maps, Targets, max_abs_over_channels, one_pass_maps, register


@register("saliency")
class Saliency(Explainer):
    """Gradient magnitude maps.

    Parameters
    ----------
    batch_size : int, default 32
        Images per model call (the memory bound).
    """

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        return one_pass_maps(self, classifier, images, targets, "saliency", max_abs_over_channels)
