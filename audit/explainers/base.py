"""The explainer contract and the registry of methods by name.

``explain(model, images, targets, method="gradcam", **params)`` returns raw maps
``[N, H, W]`` float32 at input resolution, not normalised. ``images`` are float32
``[N, H, W, C]`` as the model takes them, ``targets`` int ``[N]`` (one class per
image). Models ending in softmax are explained through their pre-softmax logits.

A method is a class registered with ``@register("name")``; its constructor only
stores parameters, the work happens in ``explain``, batched internally in chunks
of ``batch_size`` images. Traced functions are cached on the ``Classifier``, so a
Dask worker traces each method once per model.
"""
from __future__ import annotations

import weakref
from typing import Any, ClassVar

import numpy as np

_REGISTRY: dict[str, type["Explainer"]] = {}
_CLASSIFIERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def register(name: str):
    """Class decorator: make an ``Explainer`` subclass available under ``name``."""

    def wrap(cls: type[Explainer]) -> type[Explainer]:
        if name in _REGISTRY:
            raise ValueError(f"explainer {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    """Names of the registered methods."""
    return sorted(_REGISTRY)


def get(name: str) -> type["Explainer"]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown attribution method {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


class Explainer:
    """Base class of attribution methods.

    Parameters
    ----------
    batch_size : images per model call; bounds memory.
    """

    name: ClassVar[str] = ""

    def __init__(self, batch_size: int = 32):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int (got {batch_size!r})")
        self.batch_size = batch_size

    def explain(self, classifier, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Maps ``[N, H, W]`` float32 for ``images`` ``[N, H, W, C]`` and ``targets`` ``[N]``."""
        images, targets = _check(classifier, images, targets)
        out = np.zeros(images.shape[:3], np.float32)
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            out[start:stop] = self.explain_batch(classifier, images[start:stop], targets[start:stop])
        return out

    def explain_batch(self, classifier, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def classifier_of(model, target_layer: str | None = None):
    """A ``Classifier`` for a ``keras.Model`` (cached per model object) or the classifier itself."""
    from audit.model_io import Classifier

    if isinstance(model, Classifier):
        return model
    key = (target_layer,)
    per_model = _CLASSIFIERS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = Classifier(model, target_layer)
    return per_model[key]


def explain(model, images: np.ndarray, targets: np.ndarray, method: str = "gradcam",
            target_layer: str | None = None, **params) -> np.ndarray:
    """Attribution maps of ``images`` for ``targets`` with a registered ``method``.

    Parameters
    ----------
    model : ``keras.Model`` or ``audit.model_io.Classifier``.
    images : float32 ``[N, H, W, C]``, as the model takes them.
    targets : int ``[N]``, the class to explain for each image.
    method : a name from ``available()``.
    target_layer : layer for layer-based methods (default: last spatial 4-D layer).
    **params : the method's parameters (e.g. ``batch_size``).

    Returns
    -------
    float32 ``[N, H, W]``: raw maps at input resolution.
    """
    return get(method)(**params).explain(classifier_of(model, target_layer), images, targets)


def _check(classifier, images, targets) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images, dtype=np.float32)
    targets = np.asarray(targets)
    if images.ndim != 4 or images.shape[1:] != classifier.input_shape:
        raise ValueError(f"images must be [N, {', '.join(map(str, classifier.input_shape))}] "
                         f"(got {list(images.shape)})")
    if targets.shape != (len(images),) or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be int [N={len(images)}] (got {targets.dtype} {list(targets.shape)})")
    if len(targets) and (targets.min() < 0 or targets.max() >= classifier.n_classes):
        raise ValueError(f"targets must be class indices in [0, {classifier.n_classes})")
    return images, targets.astype(np.int32)
