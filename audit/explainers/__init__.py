"""Attribution methods, one file each, registered by name (see ``base``)."""
from audit.explainers import gradcam  # noqa: F401  (registers the method)
from audit.explainers.base import Explainer, available, explain, get, register

__all__ = ["Explainer", "available", "explain", "get", "register"]
