"""Class visualization: ``argmax_I S_c(I) - lambda * ||I||^2``.

Paper: K. Simonyan, A. Vedaldi, A. Zisserman, "Deep inside convolutional networks:
visualising image classification models and saliency maps", ICLR Workshop, 2014.

``S_c`` is the pre-softmax logit of class ``c`` (the classifier strips a final
softmax); ``||I||^2 = sum_{y,x,c} ((I - mid) / half)^2`` is the squared distance of
the image from mid-range, in units of half the input range (so ``lambda``,
``internals.l2``, means the same for every input scaling), summed over the pixels
of the current octave's parameterisation. The ascent is the shared regularised one (jitter,
blur, multiscale) of ``audit.internals._ascent``; all classes form one batch.
"""
from __future__ import annotations

import numpy as np

from audit.internals._ascent import Ascent, ascend, step_function, unit_objective


def visualize_classes(classifier, classes: np.ndarray, low: np.ndarray, high: np.ndarray, settings: Ascent,
                      layer=None) -> dict:
    """Optimise one image per class index of ``classes``.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model.
    classes : np.ndarray
        int ``[n]`` class indices; outside ``[0, n_classes)`` raises ``ValueError``.
    low, high : np.ndarray
        float32 ``[C]``: valid range of the model input (``input_range``).
    settings : Ascent
        The ascent (``Ascent.from_config(config, classes=True)``).
    layer : keras.layers.Layer, optional
        The layer whose filters are visualized too: the traced step is shared with
        theirs (``unit_objective``); default the classifier's target layer (None
        when it has none).

    Returns
    -------
    dict
        ``{"images": float32 [n, H, W, C] model input space, "start": float32 [n]
        logit of each class on its starting noise, "end": float32 [n] on the optimised
        image, "probability": float32 [n] softmax probability (0..1) of the class at the end}``.
    """
    classes = np.asarray(classes, np.int32)
    if len(classes) and (classes.min() < 0 or classes.max() >= classifier.n_classes):
        raise ValueError(f"the model has {classifier.n_classes} classes; asked for {classes.tolist()}")

    key, objective = unit_objective(classifier, classifier.layer if layer is None else layer)
    fn = step_function(classifier, key, objective, low, high)
    images, start = ascend(fn, classifier.input_shape, classes, low, high, settings)
    out = {"images": images}
    for name, batch in (("start", start), ("end", images)):
        logits = _logits(classifier, batch, settings.batch_size)
        out[name] = logits[np.arange(len(classes)), classes].astype(np.float32)
        if name == "end":
            z = logits - logits.max(axis=1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            out["probability"] = p[np.arange(len(classes)), classes].astype(np.float32)
    return out


def _logits(classifier, images: np.ndarray, batch: int) -> np.ndarray:
    if not len(images):
        return np.zeros((0, classifier.n_classes), np.float32)
    return np.concatenate([classifier.logits(images[i:i + batch]) for i in range(0, len(images), batch)])
