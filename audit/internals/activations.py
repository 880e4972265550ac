"""Activation maps: what chosen layers compute on given images, and which channels matter.

``activation_maps`` runs the images through the model once per batch, capturing
every chosen layer in the same pass together with the gradient of each image's
target logit (pre-softmax) with respect to it. A channel's attribution to the
target class is its first-order contribution ``sum_xy dS_c/dA_k * A_k``
(gradient x activation, summed over space); channels are shown in that order.

``attributed_channels`` ranks the channels of one layer for a group of images
(a finding's members) by Grad-CAM weight x activation, ``w_k * A_k`` with ``w_k``
the spatial mean of ``dS_c/dA_k``, pooled over each image's top-attributed area
(weights ``[h, w]`` given by the caller) and averaged over the images.

Both take ``also``: more layers the same traced pass captures (their results are
dropped). A caller that runs both on one model passes the same union, so the
model's backward pass is traced once (about 4 s with its first call on EfficientNetB0).
"""
from __future__ import annotations

import numpy as np

from audit.internals._layers import capturing


def _function(classifier, layers: list):
    """Traced ``(images, targets) -> [A_1, g_1, A_2, g_2, ...]`` for ``layers`` (in that order)."""
    import tensorflow as tf

    names = tuple(layer.name for layer in layers)

    def fn(images, targets):
        captured: dict = {}
        with tf.GradientTape() as tape:
            with capturing(layers, captured):
                logits, _ = classifier.forward(images)
            score = tf.gather(logits, targets, batch_dims=1)
        acts = [captured[name] for name in names]
        grads = tape.gradient(score, acts, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return [t for pair in zip(acts, grads) for t in pair]

    return classifier.function(("internals.activations", names), fn, classifier.image_spec(),
                               tf.TensorSpec((None,), tf.int32))


def _run(classifier, layers: list, images: np.ndarray, targets: np.ndarray, batch: int, also=()):
    """``[(acts [N, h, w, K], grads [N, h, w, K]) per layer]``, ``batch`` images per pass; the pass
    captures the layers of ``also`` too (one function for every union, its layers ordered by name)."""
    targets = np.asarray(targets, np.int32)
    traced = sorted({layer.name: layer for layer in [*layers, *also]}.values(), key=lambda layer: layer.name)
    fn = _function(classifier, traced)
    slot = {layer.name: n for n, layer in enumerate(traced)}
    kept = {slot[layer.name] for layer in layers}
    parts: list[list[np.ndarray]] = [[] for _ in range(2 * len(traced))]
    for start in range(0, len(images), batch):
        for n, t in enumerate(fn(images[start:start + batch], targets[start:start + batch])):
            if n // 2 in kept:
                parts[n].append(t.numpy())
    out = []
    for layer in layers:
        n = slot[layer.name]
        if parts[2 * n]:
            out.append((np.concatenate(parts[2 * n]).astype(np.float32),
                        np.concatenate(parts[2 * n + 1]).astype(np.float32)))
        else:
            shape = tuple(int(d) for d in layer.output.shape[1:])
            out.append((np.zeros((0, *shape), np.float32), np.zeros((0, *shape), np.float32)))
    return out


def activation_maps(classifier, layers: list, images: np.ndarray, targets: np.ndarray, batch: int = 32,
                    also=()) -> list[dict]:
    """Activations of ``layers`` on ``images`` and each channel's attribution to ``targets``.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model (the target logit is pre-softmax).
    layers : list of keras.layers.Layer
        Spatial layers of its model (``resolve_layers``), captured in one pass.
    images : np.ndarray
        float32 ``[N, H, W, C]`` as the model takes them.
    targets : np.ndarray
        int ``[N]`` class per image (e.g. the predicted class).
    batch : int, default 32
        Images per model pass.
    also : sequence of keras.layers.Layer, default ()
        More layers the traced pass captures (see the module's docstring).

    Returns
    -------
    list of dict
        One per layer: ``{"layer": name, "maps": float32 [N, h, w, K],
        "attribution": float32 [N, K], "order": int [N, K]}`` with ``order[i]`` the
        channels of image ``i`` by decreasing attribution.
    """
    result = []
    for layer, (acts, grads) in zip(layers, _run(classifier, layers, images, targets, batch, also)):
        attribution = np.einsum("nhwk,nhwk->nk", acts, grads).astype(np.float32)
        result.append({"layer": layer.name, "maps": acts, "attribution": attribution,
                       "order": np.argsort(-attribution, axis=1, kind="stable")})
    return result


def attributed_channels(classifier, layer, images: np.ndarray, targets: np.ndarray, weights: np.ndarray,
                        batch: int = 32, also=()) -> np.ndarray:
    """Score of each channel of ``layer`` for a group of images: mean over the images of
    ``sum_xy weights * w_k * A_k / sum_xy weights`` (Grad-CAM weight x activation pooled
    over the top-attributed area).

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model.
    layer : keras.layers.Layer
        A spatial layer of its model with ``K`` channels.
    images : np.ndarray
        float32 ``[N, H, W, C]`` as the model takes them.
    targets : np.ndarray
        int ``[N]``: the class whose pre-softmax logit ``S_c`` is attributed, per image.
    weights : np.ndarray
        float ``[N, h, w]`` non-negative, at the layer's resolution (uniform
        where an image's weights are all zero).
    batch : int, default 32
        Images per model pass.
    also : sequence of keras.layers.Layer, default ()
        More layers the traced pass captures (see the module's docstring).

    Returns
    -------
    np.ndarray
        float32 ``[K]`` (zeros for no image); rank with ``np.argsort(-scores)``.
    """
    ((acts, grads),) = _run(classifier, [layer], images, targets, batch, also)
    if not len(images):
        return np.zeros(acts.shape[-1], np.float32)
    cam_weights = grads.mean(axis=(1, 2))                                  # [N, K]
    w = np.asarray(weights, np.float64)
    total = w.sum(axis=(1, 2), keepdims=True)
    w = np.where(total > 0, w / np.where(total > 0, total, 1.0), 1.0 / (w.shape[1] * w.shape[2]))
    pooled = np.einsum("nhw,nhwk->nk", w, acts)                            # activation in the area
    return (cam_weights * pooled).mean(axis=0).astype(np.float32)
