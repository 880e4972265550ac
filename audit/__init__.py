"""cnn-audit: find the spurious cues behind an image classifier's errors.

From Python: ``audit.run(model, data)`` audits and returns an ``Audit``;
``audit.load(run_dir)`` reopens a finished run; ``audit.explain`` is the explainer
contract. Importing the package does not import TensorFlow.
"""
from audit.api import Audit, load, run
from audit.explainers import available, explain

__version__ = "0.1.0"
__all__ = ["Audit", "available", "explain", "load", "run", "__version__"]
