"""cnn-audit: find the spurious cues behind an image classifier's errors."""
from audit.explainers import available, explain

__version__ = "0.1.0"
__all__ = ["available", "explain", "__version__"]
