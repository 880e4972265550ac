"""Filter visualization: the input that maximises a channel's mean activation.

All requested channels of a layer are optimised together as one batch (one
image per channel, ``internals.batch_size`` per model call), by the regularised
gradient ascent of ``audit.internals._ascent``. The objective is what is
reported: the channel's spatial mean of the layer's output (after its activation
function). A ReLU that is off everywhere on the starting noise still passes a
gradient during the first quarter of the regularised steps (the ascent's redirected ReLUs).
The traced step is the one class visualization uses (``unit_objective``: targets past
the class logits are channels).
"""
from __future__ import annotations

import numpy as np

from audit.internals._ascent import Ascent, ascend, step_function, unit_objective
from audit.internals._layers import capturing, layer_shape


def visualize_filters(classifier, layer, channels: np.ndarray, low: np.ndarray, high: np.ndarray,
                      settings: Ascent) -> dict:
    """Optimise one image per channel of ``layer``.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model.
    layer : keras.layers.Layer
        A spatial layer of the classifier's model (``resolve_layers``).
    channels : np.ndarray
        int ``[n]`` channel indices; out of range raises ``ValueError``.
    low, high : np.ndarray
        float32 ``[C]``: valid range of the model input (``input_range``).
    settings : Ascent
        The ascent (``Ascent.from_config(config)``).

    Returns
    -------
    dict
        ``{"images": float32 [n, H, W, C] model input space, "start": float32 [n]
        mean activation of each channel on its starting noise, "end": float32 [n] on
        the optimised image}``; activations are the layer's output, spatially averaged.
    """
    channels = np.asarray(channels, np.int32)
    n_channels = layer_shape(layer)[2]
    if len(channels) and (channels.min() < 0 or channels.max() >= n_channels):
        raise ValueError(f"layer {layer.name} has {n_channels} channels; asked for {channels.tolist()}")

    key, objective = unit_objective(classifier, layer)
    fn = step_function(classifier, key, objective, low, high)
    images, start = ascend(fn, classifier.input_shape, classifier.n_classes + channels, low, high, settings)
    means = channel_means_function(classifier, layer)
    return {"images": images, "start": _batched(means, start, channels, settings.batch_size),
            "end": _batched(means, images, channels, settings.batch_size)}


def channel_means_function(classifier, layer):
    """Traced ``(images [N, H, W, C], channels [N]) -> [N]``: the spatial mean of channel
    ``channels[i]`` of ``layer``'s output (after its activation) on image ``i``.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model; the trace is cached on it per layer.
    layer : keras.layers.Layer
        A spatial layer of its model.
    """
    import tensorflow as tf

    n_channels = layer_shape(layer)[2]

    def means(images, targets):
        captured: dict = {}
        with capturing([layer], captured):
            classifier.forward(images)
        return _channel_means(captured[layer.name], targets, n_channels)

    return classifier.function(("internals.means", layer.name), means, classifier.image_spec(),
                               tf.TensorSpec((None,), tf.int32))


def _channel_means(acts, targets, n_channels: int):
    import tensorflow as tf

    pick = tf.one_hot(targets, n_channels, dtype=acts.dtype)[:, None, None, :]
    return tf.reduce_mean(tf.reduce_sum(acts * pick, axis=-1), axis=[1, 2])


def _batched(fn, images: np.ndarray, targets: np.ndarray, batch: int) -> np.ndarray:
    if not len(images):
        return np.zeros(0, np.float32)
    return np.concatenate([fn(images[i:i + batch], targets[i:i + batch]).numpy()
                           for i in range(0, len(images), batch)]).astype(np.float32)
