"""Layers of a model as the internals techniques see them: choosing, capturing, receptive fields.

``Classifier`` captures one layer (its target layer). The internals need several
at once (activation maps of a few layers from shallow to deep) and sometimes a
layer's output *before* its activation function (gradient ascent through a ReLU
that is zero on the starting noise would never move). ``capturing`` patches the
chosen layers' ``call`` while a function is traced inside ``Classifier.function``,
so every traced function here also gets the classifier's softmax stripping.
``redirected_relus`` patches the model's ReLUs in the same way (the ascent's first steps).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np

from audit.errors import UsageError


def _candidates(model) -> list:
    """Layers with a spatial 4-D output, in order (nested models included), input layers excluded."""
    from audit.model_io import keras_of, spatial_layers

    keras = keras_of(model)
    return [layer for layer in spatial_layers(model) if not isinstance(layer, keras.layers.InputLayer)]


def resolve_layers(model, names: list[str] | tuple[str, ...] | None, n: int, key: str = "internals.layers") -> list:
    """The named layers, or ``n`` spatial layers with weights spread from the shallowest to the deepest.

    Parameters
    ----------
    model : keras.Model
        The classifier's model (nested models included).
    names : sequence of str or None
        Layer names (``internals.layers``); None or empty: pick ``n``.
    n : int
        Layers to pick, evenly spaced over the spatial layers that have weights
        (all spatial layers if none has); fewer when the model has fewer.
    key : str, default "internals.layers"
        The setting named in errors.

    Returns
    -------
    list of keras.layers.Layer
        In the order given, or shallow to deep.

    Raises
    ------
    UsageError
        Naming ``key`` when a name is not a spatial layer of the model, or the model has none.
    """
    from audit.model_io import flat_layers

    candidates = _candidates(model)
    if not candidates:
        raise UsageError(f"`{key}`: the model has no layer with a spatial 4-D output")
    if names:
        by_name = {layer.name: layer for layer in flat_layers(model)}
        spatial = {layer.name for layer in candidates}
        out = []
        for name in names:
            if name not in spatial:
                tail = ", ".join(layer.name for layer in candidates[-5:])
                what = "has no spatial 4-D output" if name in by_name else "is not a layer of the model"
                raise UsageError(f"`{key}`: {name!r} {what} (spatial layers end with: {tail})")
            out.append(by_name[name])
        return out
    learned = [layer for layer in candidates if layer.weights] or candidates   # skip rescaling, pooling, ...
    picks = np.unique(np.round(np.linspace(0, len(learned) - 1, min(n, len(learned)))).astype(int))
    return [learned[i] for i in picks]


@contextlib.contextmanager
def capturing(layers: list, out: dict, linear: bool = False) -> Iterator[None]:
    """While tracing: store each layer's output tensor in ``out[layer.name]``.

    With ``linear``, a layer with an ``activation`` attribute (Conv2D, Dense, ...)
    is captured *before* its activation function, which is then applied to the
    captured value so the rest of the model is unchanged.

    Parameters
    ----------
    layers : list of keras.layers.Layer
        Layers to capture; their ``call`` is restored on exit.
    out : dict
        Filled with ``layer.name -> tensor [B, h, w, c]`` during each traced call.
    linear : bool, default False
        Capture before the activation function.
    """
    from audit.model_io import keras_of

    saved = []
    for layer in layers:
        keras = keras_of(layer)
        own = layer.__dict__.get("call")   # e.g. the classifier's own capture of its target layer
        activation = getattr(layer, "activation", None) if linear else None
        if activation is not None and activation is keras.activations.linear:
            activation = None
        original = layer.call

        def call(*args, _layer=layer, _original=original, _activation=activation, **kwargs):
            if _activation is None:
                value = _original(*args, **kwargs)
                out[_layer.name] = value
                return value
            _layer.activation = keras.activations.linear
            try:
                value = _original(*args, **kwargs)
            finally:
                _layer.activation = _activation
            out[_layer.name] = value
            return _activation(value)

        layer.call = call
        saved.append((layer, own))
    try:
        yield
    finally:
        for layer, own in saved:
            if own is None:
                del layer.call
            else:
                layer.call = own


def _redirected_relu():
    """ReLU whose gradient, for an image where no unit of the layer passes any gradient,
    passes the part that would turn the off units on (Lucid's rule). An image with any
    gradient through the layer keeps the plain one: redirecting it too would treat every
    off unit as on, a linear objective whose best image is a flat or border pattern (a
    stripe detector then ends on a ramp)."""
    import tensorflow as tf

    @tf.custom_gradient
    def relu(x):
        def grad(dy):
            plain = tf.where(x > 0, dy, tf.zeros_like(dy))
            through = tf.reduce_any(tf.not_equal(plain, 0.0), axis=tf.range(1, tf.rank(plain)), keepdims=True)
            return tf.where(through, plain, tf.where(x > 0, dy, tf.maximum(dy, 0.0)))
        return tf.nn.relu(x), grad

    return relu


def relus(model) -> list:
    """``(layer, "activation" | "call")`` of every ReLU of ``model`` that ``redirected_relus`` redirects:
    an ``activation="relu"`` or a plain ReLU layer (not ReLU6, not leaky)."""
    from audit.model_io import flat_layers, keras_of

    keras = keras_of(model)
    out = []
    for layer in flat_layers(model):
        activation = getattr(layer, "activation", None)
        if getattr(activation, "__name__", "") == "relu":
            out.append((layer, "activation"))
        elif isinstance(layer, keras.layers.ReLU) and layer.max_value is None and not layer.negative_slope \
                and not layer.threshold and "call" not in layer.__dict__:
            out.append((layer, "call"))
    return out


@contextlib.contextmanager
def redirected_relus(model) -> Iterator[None]:
    """While tracing: every ReLU of ``model`` (an ``activation="relu"`` or a ReLU layer) redirected."""
    relu = _redirected_relu()
    saved = []
    for layer, attr in relus(model):
        if attr == "activation":
            saved.append((layer, attr, layer.activation))
            layer.activation = relu
        else:
            saved.append((layer, attr, None))
            layer.call = lambda inputs, *a, **k: relu(inputs)
    try:
        yield
    finally:
        for layer, attr, value in saved:
            if attr == "activation":
                layer.activation = value
            else:
                del layer.call


def layer_shape(layer) -> tuple[int, int, int]:
    """``(h, w, channels)`` of the output of ``layer``, a Keras layer with a spatial 4-D output."""
    shape = tuple(layer.output.shape)
    return int(shape[1]), int(shape[2]), int(shape[3])


def receptive_field(classifier, layer, low: np.ndarray, high: np.ndarray, seed: int = 0) -> dict:
    """Input pixels a unit of ``layer`` sees.

    Measured, not derived from the architecture (which may hold any layers): for the
    central unit ``(ci, cj)`` and its lower-right neighbour, the box of input pixels
    where the gradient of the unit's channels (summed) is non-zero for any of 4 random
    inputs in the model's valid range. The difference of the two boxes is the stride.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model.
    layer : keras.layers.Layer
        A spatial layer of it (captured before its activation).
    low, high : np.ndarray
        float32 ``[C]``: the valid input range per channel (``input_range``).
    seed : int, default 0
        Seed of the 4 random inputs.

    Returns
    -------
    dict
        ``{"unit": (ci, cj), "box": (top, left, bottom, right), "stride": (sy, sx)}``
        (input pixels, bottom/right exclusive); a dead unit (zero gradient everywhere)
        gets the whole image and the stride ``input size / layer size``.
    """
    import tensorflow as tf

    height, width = classifier.input_size
    h, w, _ = layer_shape(layer)
    units = [(h // 2, w // 2), (min(h // 2 + 1, h - 1), min(w // 2 + 1, w - 1))]

    def grad(images):
        # one model pass (traced once) for both units: a copy of the images per unit, each copy's gradient its own
        n = tf.shape(images)[0]
        copies = tf.concat([images] * len(units), axis=0)
        captured: dict = {}
        with tf.GradientTape() as tape:
            tape.watch(copies)
            with capturing([layer], captured, linear=True):
                classifier.forward(copies)
            value = sum(tf.reduce_sum(captured[layer.name][k * n:(k + 1) * n, ui, uj, :])
                        for k, (ui, uj) in enumerate(units))
        g = tf.reduce_sum(tf.abs(tape.gradient(value, copies)), axis=3)
        return tf.stack([tf.reduce_sum(g[k * n:(k + 1) * n], axis=0) for k in range(len(units))])

    fn = classifier.function(("internals.rf", layer.name), grad, classifier.image_spec())
    rng = np.random.default_rng(seed)
    images = (low + (high - low) * rng.uniform(0, 1, (4, height, width, classifier.input_shape[2]))).astype(np.float32)
    boxes = []
    for g in fn(images).numpy():
        ys, xs = np.nonzero(g > 0)
        boxes.append((int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1) if len(ys) else None)
    stride = (height / h, width / w)
    if boxes[0] is None:
        return {"unit": units[0], "box": (0, 0, height, width), "stride": stride}
    if boxes[1] is not None and units[1] != units[0]:
        sy = boxes[1][0] - boxes[0][0] if units[1][0] != units[0][0] else stride[0]
        sx = boxes[1][1] - boxes[0][1] if units[1][1] != units[0][1] else stride[1]
        stride = (sy, sx)
    return {"unit": units[0], "box": boxes[0], "stride": stride}


def input_range(mode: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(low, high)`` float32 ``[C]`` of the model's input space.

    What ``data.preprocess`` maps pixel values 0 and 255 to (a Rescaling layer inside
    the model is part of the model, so its input space is still 0..255).

    Parameters
    ----------
    mode : str
        ``data.preprocess``: ``none``, ``unit``, ``symmetric`` or ``imagenet``.
    channels : int
        ``C``; for other than 3, every channel gets the widest of the RGB ranges.
    """
    from audit.data import preprocess

    ends = preprocess(np.array([[[[0.0] * 3], [[255.0] * 3]]], np.float32), mode).reshape(2, 3)
    low, high = ends[0], ends[1]
    if channels != 3:
        low, high = np.full(channels, low.min(), np.float32), np.full(channels, high.max(), np.float32)
    return low.astype(np.float32), high.astype(np.float32)


def to_pixels(images: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Model-input-space images back to uint8 RGB ``[N, H, W, 3]`` for display.

    Parameters
    ----------
    images : np.ndarray
        ``[N, H, W, C]`` in model input units; clipped to the range. One channel is
        repeated to grey RGB; channels beyond 3 are dropped.
    low, high : np.ndarray
        float32 ``[C]``: the input range (``input_range``), mapped to 0 and 255.
    """
    unit = np.clip((np.asarray(images, np.float32) - low) / (high - low), 0.0, 1.0)
    if unit.shape[-1] == 1:
        unit = np.repeat(unit, 3, axis=-1)
    return np.round(unit[..., :3] * 255.0).astype(np.uint8)
