"""Look inside the model: the classic ways to see what a CNN learned.

One file per technique:

* ``activations``: feature maps of chosen layers on given images, channels
  ordered by their attribution to a class; channels of a layer ranked for a
  group of images (a finding's cue area).
* ``filters``: the input that maximises a channel's mean activation (all
  channels of a layer as one batch).
* ``class_viz``: the input that maximises a class logit minus an L2 penalty.
* ``patches``: the dataset crops that excite a channel most (Zeiler & Fergus).

``_ascent`` is the regularised gradient ascent shared by filters and classes,
``_layers`` finds and captures layers, ``grids`` composes small PNGs. The audit
runs them in ``audit.stages.internals``; ``audit internals`` runs them on one
layer from the command line.
"""
from audit.internals._ascent import Ascent
from audit.internals._layers import input_range, resolve_layers, to_pixels
from audit.internals.activations import activation_maps, attributed_channels
from audit.internals.class_viz import visualize_classes
from audit.internals.filters import visualize_filters
from audit.internals.patches import top_patches

__all__ = ["Ascent", "activation_maps", "attributed_channels", "input_range", "resolve_layers", "to_pixels",
           "top_patches", "visualize_classes", "visualize_filters"]
