"""Load a Keras classifier, find its layers, and run it as pre-softmax logits.

``Classifier`` wraps a ``keras.Model`` for the audit: it finds the target layer
(the last layer with a spatial 4-D output, searched inside nested models too, or
one named explicitly), detects a final softmax (a ``Softmax``/``Activation``
layer or softmax folded into the last ``Dense``/``Conv``) and traces functions in
which that softmax is removed and the target layer's output is captured. The
model itself is never modified outside tracing.

Models never travel through the Dask graph: tasks receive the model path and call
``cached_classifier`` which loads each model once per process.
"""
from __future__ import annotations

import contextlib
import hashlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    import numpy as np

from audit.errors import UsageError

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")

_CACHE: dict[tuple, "Classifier"] = {}
_CACHE_LOCK = threading.Lock()


def load_model(path: str | Path, trust: bool = False):
    """Load a ``.keras`` or ``.h5`` model without compiling it.

    Keras safe mode stays on (a ``Lambda`` layer, which can run arbitrary code, is
    refused) unless ``trust`` is set (``--trust-model``).
    """
    import keras

    path = _checked_path(path)
    try:
        return keras.models.load_model(path, compile=False, safe_mode=not trust)
    except Exception as exc:
        if not trust and "safe_mode" in str(exc):
            raise UsageError(f"--model {path}: the model holds a Lambda layer, which can run arbitrary code; "
                             "pass --trust-model if you trust its source") from None
        raise UsageError(f"--model {path}: cannot load the model ({_one_line(exc)})") from None


def _checked_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--model {path}: no such file")
    if path.is_dir():
        raise UsageError(f"--model {path}: SavedModel folders are not supported; "
                         "save the model with model.save('model.keras')")
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise UsageError(f"--model {path}: expected a .keras or .h5 file")
    return path


def cached_classifier(path: str | Path, target_layer: str | None = None, trust: bool = False) -> "Classifier":
    """The ``Classifier`` of a model file, loaded once per process and reused by every task."""
    path = _checked_path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, target_layer, trust)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = Classifier(load_model(path, trust), target_layer)
        return _CACHE[key]


def classifier_for(config) -> "Classifier":
    """The cached ``Classifier`` of ``config``'s ``model.*`` settings."""
    return cached_classifier(config.model.path, config.model.target_layer, config.model.trust)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def flat_layers(model) -> list:
    """All layers in order, descending into nested models (the nested model itself excluded)."""
    import keras

    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(flat_layers(layer))
        else:
            out.append(layer)
    return out


def spatial_layers(model) -> list:
    """Layers whose output is 4-D with spatial size > 1x1 (candidates for Grad-CAM)."""
    found = []
    for layer in flat_layers(model):
        try:
            shape = tuple(layer.output.shape)
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4 and (shape[1] or 2) > 1 and (shape[2] or 2) > 1:
            found.append(layer)
    return found


def find_target_layer(model, name: str | None = None):
    """The named layer (searched in nested models too) or the last spatial 4-D layer."""
    candidates = spatial_layers(model)
    if name is None:
        if not candidates:
            raise UsageError("`model.target_layer`: the model has no layer with a spatial 4-D output")
        return candidates[-1]
    for layer in flat_layers(model):
        if layer.name == name:
            return layer
    names = ", ".join(layer.name for layer in candidates[-5:])
    raise UsageError(f"`model.target_layer` {name!r} is not a layer of the model (spatial layers end with: {names})")


def _is_softmax(fn: Any) -> bool:
    return getattr(fn, "__name__", "") in ("softmax", "log_softmax")


class Classifier:
    """A Keras classifier seen as ``images -> logits`` with its target layer's activations.

    Parameters
    ----------
    model : a single-input, single-output ``keras.Model`` whose output is ``[N, K]``.
    target_layer : name of the layer to explain (Grad-CAM, features); default automatic.
    """

    def __init__(self, model, target_layer: str | None = None):
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise UsageError(f"the model has {len(model.inputs)} input(s) and {len(model.outputs)} output(s); "
                             "cnn-audit audits single-input, single-output classifiers")
        in_shape = tuple(model.inputs[0].shape)
        out_shape = tuple(model.outputs[0].shape)
        if len(in_shape) != 4 or in_shape[1] is None or in_shape[2] is None:
            raise UsageError(f"the model input shape {in_shape} is not [N, H, W, C] with a fixed H and W")
        if len(out_shape) != 2 or not out_shape[1]:
            raise UsageError(f"the model output shape {out_shape} is not [N, classes]")
        self.model = model
        self.input_shape: tuple[int, int, int] = (int(in_shape[1]), int(in_shape[2]), int(in_shape[3]))
        self.n_classes = int(out_shape[1])
        self.layer = find_target_layer(model, target_layer)
        self.softmax = self._find_softmax()
        self._captured: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._functions: dict[Any, Callable] = {}

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_shape[:2]

    @property
    def logits_kind(self) -> str:
        return "raw (no final softmax)" if self.softmax is None else f"softmax stripped ({self.softmax[1].name})"

    def _find_softmax(self):
        import keras

        last = flat_layers(self.model)[-1]
        if isinstance(last, keras.layers.Softmax):
            return ("call", last)
        if _is_softmax(getattr(last, "activation", None)):
            return ("call", last) if isinstance(last, keras.layers.Activation) else ("activation", last)
        return None

    @contextlib.contextmanager
    def _patched(self) -> Iterator[None]:
        """While tracing: drop the final softmax and capture the target layer's output."""
        import keras

        original_call = self.layer.call

        def capturing_call(*args, **kwargs):
            out = original_call(*args, **kwargs)
            self._captured["activations"] = out
            return out

        self.layer.call = capturing_call
        restore = None
        if self.softmax is not None:
            kind, layer = self.softmax
            if kind == "activation":
                restore = ("activation", layer, layer.activation)
                layer.activation = keras.activations.linear
            elif layer is not self.layer:
                restore = ("call", layer, None)
                layer.call = lambda inputs, *a, **k: inputs
        try:
            yield
        finally:
            del self.layer.call
            if restore is not None:
                kind, layer, value = restore
                if kind == "activation":
                    layer.activation = value
                else:
                    del layer.call

    def forward(self, images):
        """Inside a traced function: ``(logits [N, K], activations [N, h, w, c])`` of ``images``."""
        logits = self.model(images, training=False)
        return logits, self._captured["activations"]

    def function(self, key: Any, fn: Callable, *specs) -> Callable:
        """``fn`` traced once per (classifier, key) with the patches active; cached for reuse.

        ``fn`` calls ``self.forward``; ``specs`` are ``tf.TensorSpec`` with a ``None``
        batch dimension so that no batch size ever re-traces.
        """
        import tensorflow as tf

        with self._lock:
            if key not in self._functions:
                with self._patched():
                    self._functions[key] = tf.function(fn).get_concrete_function(*specs)
                self._captured.clear()
            return self._functions[key]

    def image_spec(self):
        import tensorflow as tf

        return tf.TensorSpec((None, *self.input_shape), tf.float32)

    def logits(self, images) -> "np.ndarray":
        """Pre-softmax logits ``[N, K]`` float32 of ``images`` ``[N, H, W, C]``."""
        fn = self.function("logits", lambda x: self.forward(x)[0], self.image_spec())
        return fn(images).numpy()

    def logits_and_activations(self, images) -> tuple["np.ndarray", "np.ndarray"]:
        """``(logits [N, K], target-layer activations [N, h, w, c])`` float32."""
        fn = self.function("forward", lambda x: self.forward(x), self.image_spec())
        logits, acts = fn(images)
        return logits.numpy(), acts.numpy()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()
