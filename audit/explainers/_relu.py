"""ReLU gradient overrides for guided backpropagation and DeconvNet, applied while tracing.

``relu_gradients(classifier, rule)`` swaps, for the duration of a ``with`` block,
every ReLU of the model (the ``relu``/``relu6`` activation of a Conv/Dense/
Activation layer, and ``keras.layers.ReLU`` layers without slope or threshold,
nested models included) for a function with the same forward value and a
``tf.custom_gradient`` backward rule:

- ``"guided"`` (Springenberg et al., 2015): ``relu(dy) * [0 < x (< max_value)]``;
- ``"deconvnet"`` (Zeiler & Fergus, 2014): ``relu(dy)``, ignoring the forward input.

The model is restored on exit. Trace inside the block (``Classifier.function``
caches the traced function, so the override is paid once per model); the
classifier's lock is held so that no other trace sees the patched model.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

RULES = ("guided", "deconvnet")


def overridden_relu(rule: str, max_value: float | None = None):
    """A ReLU (capped at ``max_value``) whose gradient follows ``rule``.

    Built from the native ops (``Relu6``/``Relu``, ``Relu6Grad``/``ReluGrad`` on the
    output), so the override costs about what the ordinary gradient costs.

    Parameters
    ----------
    rule : str
        ``"guided"``: ``dx = relu(dy) * [0 < y (< max_value)]``; ``"deconvnet"``: ``dx = relu(dy)``.
    max_value : float, optional
        The cap (6 for relu6); None: no cap.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def relu(x):
        if max_value == 6.0:
            y = tf.nn.relu6(x)
        elif max_value is None:
            y = tf.nn.relu(x)
        else:
            y = tf.minimum(tf.nn.relu(x), max_value)

        def grad(dy):
            positive = tf.nn.relu(dy)
            if rule == "deconvnet":
                return positive
            if max_value == 6.0:
                return tf.raw_ops.Relu6Grad(gradients=positive, features=y)
            masked = tf.raw_ops.ReluGrad(gradients=positive, features=y)
            return masked if max_value is None else masked * tf.cast(y < max_value, masked.dtype)

        return y, grad

    return relu


def _activation_max(fn) -> tuple[bool, float | None]:
    """Whether ``fn`` is a plain ReLU activation and its cap (6 for relu6)."""
    name = getattr(fn, "__name__", "")
    if name == "relu":
        return True, None
    if name == "relu6":
        return True, 6.0
    return False, None


@contextlib.contextmanager
def relu_gradients(classifier, rule: str | None) -> Iterator[None]:
    """While active, every ReLU of ``classifier.model`` back-propagates with ``rule``.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        Its model is patched in place and restored on exit; its lock is held meanwhile.
    rule : str or None
        ``"guided"`` or ``"deconvnet"``; None: no change.

    Raises
    ------
    ValueError
        For another rule.
    """
    if rule is None:
        yield
        return
    if rule not in RULES:
        raise ValueError(f"unknown ReLU gradient rule {rule!r}; expected one of {', '.join(RULES)}")
    from audit.model_io import flat_layers, keras_of

    keras = keras_of(classifier.model)
    activations, calls = [], []
    with classifier._lock:
        try:
            for layer in flat_layers(classifier.model):
                if isinstance(layer, keras.layers.ReLU):
                    slope = float(getattr(layer, "negative_slope", 0.0) or 0.0)
                    threshold = float(getattr(layer, "threshold", 0.0) or 0.0)
                    if slope == 0.0 and threshold == 0.0:
                        cap = layer.max_value
                        relu = overridden_relu(rule, None if cap is None else float(cap))
                        layer.call = lambda inputs, *args, _relu=relu, **kwargs: _relu(inputs)
                        calls.append(layer)
                    continue
                is_relu, cap = _activation_max(getattr(layer, "activation", None))
                if is_relu:
                    activations.append((layer, layer.activation))
                    layer.activation = overridden_relu(rule, cap)
            yield
        finally:
            for layer, original in activations:
                layer.activation = original
            for layer in calls:
                layer.__dict__.pop("call", None)
