"""Attribution methods, one file each, registered by name (see ``base``)."""
from audit.explainers import (  # noqa: F401  (each import registers its method)
    deconvnet,
    expected_gradients,
    gradcam,
    gradcam_plus_plus,
    gradient_x_input,
    guided_backprop,
    integrated_gradients,
    lrp,
    occlusion,
    saliency,
    smoothgrad,
)
from audit.explainers.base import Explainer, available, explain, get, register, unregister
from audit.explainers.integrated_gradients import IntegratedGradients
from audit.explainers.occlusion import Occlusion

__all__ = ["Explainer", "IntegratedGradients", "Occlusion", "available", "explain", "get", "register", "unregister"]
