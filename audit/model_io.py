"""Load a Keras classifier, find its layers, and run it as pre-softmax logits.

``Classifier`` wraps a ``keras.Model`` for the audit: it finds the target layer
(the last layer with a spatial 4-D output, searched inside nested models too, or
one named explicitly), detects a final softmax (a ``Softmax``/``Activation``
layer or softmax folded into the last ``Dense``/``Conv``) and traces functions in
which that softmax is removed and the target layer's output is captured. The
model itself is never modified outside tracing.

Models never travel through the Dask graph: tasks receive the model path and call
``cached_classifier`` which loads each model once per process.

Every traced function counts the model inputs it runs (``passes``): a counter in the
graph adds each call's batch, by kind (``forward``: logits only; ``layer``: a
backward pass to the target layer, Grad-CAM's; ``input``: a backward pass to the
input). The production benchmark times these passes bare to find a run's floor.
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
from audit.passes import count_passes, halving, mixed_policy, passes
from audit.model_files import SignatureClassifier, SignatureModel, checked_path, load_model, one_line, pick_output

__all__ = ["Classifier", "SignatureClassifier", "cached_classifier", "classifier_for", "classifier_of_model",
           "file_sha256", "find_target_layer", "flat_layers", "keras_of", "halving", "load_model", "passes",
           "spatial_layers"]

_CACHE: dict[tuple, "Classifier"] = {}
_CACHE_LOCK = threading.Lock()


def keras_of(model):
    """The Keras package ``model`` (a model or layer) belongs to: ``tf_keras`` (tf.keras 2) or ``keras``
    (Keras 3)."""
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras

        return tf_keras
    import keras

    return keras


def cached_classifier(path: str | Path, target_layer: str | None = None, trust: bool = False,
                      signature: str = "serving_default", output: str | int | None = None):
    """The classifier of a model file or SavedModel folder, loaded once per process and reused by every task.

    Returns a ``Classifier``, or a ``SignatureClassifier`` (``layer is None``) for a
    SavedModel without Keras metadata. The cache key includes the file's mtime and size.

    Parameters
    ----------
    path : str or Path
        ``.keras``/``.h5`` file or SavedModel folder (``model.path``).
    target_layer : str, optional
        Layer explained by layer-based methods (``model.target_layer``).
    trust : bool, default False
        Allow Lambda layers (``model.trust``).
    signature : str, default "serving_default"
        The SavedModel signature run when the folder has no Keras metadata.
    output : str or int, optional
        The classification head of a multi-output model (``model.output``).
    """
    path = checked_path(path).resolve()
    stat = (path / "saved_model.pb" if path.is_dir() else path).stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, target_layer, trust, signature, output)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = classifier_of_model(load_model(path, trust, signature), target_layer, output)
        return _CACHE[key]


def classifier_of_model(model, target_layer: str | None = None, output: str | int | None = None):
    """A ``Classifier`` of ``model`` (a Keras model), or a ``SignatureClassifier`` of a ``SignatureModel``.

    ``target_layer`` and ``output`` as in ``cached_classifier``; a target layer for a
    signature model is a ``UsageError``.
    """
    if isinstance(model, SignatureModel):
        if target_layer is not None:
            raise UsageError(f"`model.target_layer` {target_layer!r}: the SavedModel {model.path} has no "
                             "Keras layers (it is loaded by signature)")
        return SignatureClassifier(model, output)
    return Classifier(model, target_layer, output)


def classifier_for(config):
    """The cached classifier of ``config``'s ``model.*`` settings."""
    m = config.model
    return cached_classifier(m.path, m.target_layer, m.trust, m.signature, m.output)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of the file at ``path``, or of a folder's files (relative paths and contents, sorted): hex string."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def flat_layers(model) -> list:
    """All layers of ``model`` in order, descending into nested models (the nested model itself excluded)."""
    keras = keras_of(model)
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(flat_layers(layer))
        else:
            out.append(layer)
    return out


def spatial_layers(model) -> list:
    """Layers of ``model`` whose output is 4-D with spatial size > 1x1 (candidates for Grad-CAM)."""
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
    """The layer of ``model`` called ``name`` (searched in nested models too) or, for None, the last spatial
    4-D layer; a ``UsageError`` naming ``model.target_layer`` otherwise."""
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
    model : a single-input ``keras.Model`` (Keras 3, or tf.keras 2 through ``tf_keras``)
        whose (chosen) output is ``[N, K]``.
    target_layer : name of the layer to explain (Grad-CAM, features); default automatic.
    output : the classification head of a multi-output model (``model.output``: an
        output name or index); the classifier then runs the sub-model that ends there.

    Attributes
    ----------
    layer : the target layer (never ``None`` here; ``SignatureClassifier.layer`` is).
    """

    def __init__(self, model, target_layer: str | None = None, output: str | int | None = None):
        if len(model.inputs) != 1:
            raise UsageError(f"the model has {len(model.inputs)} inputs; cnn-audit audits single-input classifiers")
        names = [str(n) for n in getattr(model, "output_names", None) or []]
        if len(names) != len(model.outputs):
            names = [str(getattr(t, "name", i)).split("/")[0] for i, t in enumerate(model.outputs)]
        head = pick_output(names, output, "the model")
        if len(model.outputs) > 1:
            model = keras_of(model).Model(model.inputs, model.outputs[names.index(head)], name=f"{model.name}_{head}")
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
        self._counter = None   # while tracing: the variable the traced forward passes add their batch to
        self._precision = threading.local()   # per thread: what ``precision`` set

    @property
    def input_size(self) -> tuple[int, int]:
        """The model input's (H, W) in pixels."""
        return self.input_shape[:2]

    @property
    def logits_kind(self) -> str:
        """What is explained as logits, in words: the raw output, or which final softmax is stripped."""
        return "raw (no final softmax)" if self.softmax is None else f"softmax stripped ({self.softmax[1].name})"

    def _find_softmax(self):
        keras = keras_of(self.model)
        last = flat_layers(self.model)[-1]
        if isinstance(last, keras.layers.Softmax):
            return ("call", last)
        if _is_softmax(getattr(last, "activation", None)):
            return ("call", last) if isinstance(last, keras.layers.Activation) else ("activation", last)
        return None

    @contextlib.contextmanager
    def _patched(self) -> Iterator[None]:
        """While tracing: drop the final softmax and capture the target layer's output."""
        keras = keras_of(self.model)
        original_call = self.layer.call

        def capturing_call(*args, **kwargs):
            import tensorflow as tf

            out = original_call(*args, **kwargs)
            # float32 even where the layers compute in float16 (mixed precision); the model goes on from it
            self._captured["activations"] = tf.cast(out, tf.float32)
            return tf.cast(self._captured["activations"], out.dtype)

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
        import tensorflow as tf

        logits = tf.cast(self.model(images, training=False), tf.float32)
        if self._counter is not None:
            self._counter.assign_add(tf.cast(tf.shape(images)[0], tf.int64))
        return logits, self._captured["activations"]

    def function(self, key: Any, fn: Callable, *specs) -> Callable:
        """``fn`` traced once per (classifier, ``key``, precision) with the patches active; cached for reuse.

        ``fn`` calls ``self.forward``; ``specs`` are ``tf.TensorSpec`` with a ``None``
        batch dimension so that no batch size ever re-traces. Under ``precision("mixed_float16")``
        the layers compute in float16 (``audit.passes.mixed_policy``), cached under ``(key, "mixed_float16")``.
        """
        import tensorflow as tf

        mixed = getattr(self._precision, "name", "float32") == "mixed_float16"
        key = (key, "mixed_float16") if mixed else key
        with self._lock:
            if key not in self._functions:
                self._counter = tf.Variable(0, dtype=tf.int64, trainable=False)
                # mixed precision: every layer but the output layer, which stays float32 (Keras's advice)
                policy = mixed_policy(flat_layers(self.model)[:-1]) if mixed else contextlib.nullcontext()
                try:
                    with self._patched(), policy:
                        traced = tf.function(fn).get_concrete_function(*specs)
                finally:
                    counter, self._counter = self._counter, None
                    self._captured.clear()
                count_passes(key, traced.graph, counter)
                self._functions[key] = traced
            return self._functions[key]

    @contextlib.contextmanager
    def precision(self, name: str) -> Iterator[None]:
        """Within the block, in this thread, functions are traced and run in precision ``name``.

        Parameters
        ----------
        name : str
            ``float32`` or ``mixed_float16`` (``attribution.precision``: float16 compute, float32
            weights, logits and activations; for GPUs, whose float16 units make it faster).
        """
        before = getattr(self._precision, "name", "float32")
        self._precision.name = name
        try:
            yield
        finally:
            self._precision.name = before

    def image_spec(self):
        """``tf.TensorSpec`` of a float32 image batch ``[None, H, W, C]``."""
        import tensorflow as tf

        return tf.TensorSpec((None, *self.input_shape), tf.float32)

    def logits(self, images) -> "np.ndarray":
        """Pre-softmax logits ``[N, K]`` float32 of ``images`` ``[N, H, W, C]``."""
        fn = self.function("logits", lambda x: self.forward(x)[0], self.image_spec())
        return fn(images).numpy()

    def logits_and_cam(self, images) -> tuple["np.ndarray", "np.ndarray", "np.ndarray", "np.ndarray"]:
        """One forward and one short backward pass: what predict keeps of every image.

        Parameters
        ----------
        images : float32 ``[N, H, W, C]``, model input.

        Returns
        -------
        logits : float32 ``[N, K]``, pre-softmax.
        cam : float32 ``[N, h, w]``, Grad-CAM of the predicted class at the target layer's
            resolution: ``relu(sum_c a_c A_c)`` with ``a_c`` the spatial mean of
            ``d logit / d A_c`` (Selvaraju et al. 2017).
        features : float32 ``[N, c]``, the target layer's activations averaged over space
            with the CAM as weights (``audit.maps.attention_pooled``): what the model sees
            where it looks.
        presence : float32 ``[N, c]``, each channel's spatial maximum: whether a pattern is
            anywhere in the image (a cue detector reads these).
        """
        import tensorflow as tf

        def fused(x):
            with tf.GradientTape() as tape:
                logits, acts = self.forward(x)
                tape.watch(acts)
                chosen = tf.reduce_sum(logits * tf.one_hot(tf.argmax(logits, axis=1), tf.shape(logits)[1]), axis=1)
            grads = tape.gradient(chosen, acts)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * acts, axis=-1))
            total = tf.reduce_sum(cam, axis=(1, 2), keepdims=True)
            hw = tf.cast(tf.shape(cam)[1] * tf.shape(cam)[2], cam.dtype)
            w = tf.where(total > 0, cam / tf.where(total > 0, total, 1.0), 1.0 / hw)
            features = tf.einsum("nhw,nhwc->nc", w, acts)
            return logits, cam, features, tf.reduce_max(acts, axis=(1, 2))

        fn = self.function("fused", fused, self.image_spec())
        return tuple(t.numpy().astype("float32") for t in fn(images))

    def logits_and_activations(self, images) -> tuple["np.ndarray", "np.ndarray"]:
        """``(logits [N, K], target-layer activations [N, h, w, c])`` float32 of ``images`` ``[N, H, W, C]``."""
        fn = self.function("forward", lambda x: self.forward(x), self.image_spec())
        logits, acts = fn(images)
        return logits.numpy(), acts.numpy()
