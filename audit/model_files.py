"""Model files to model objects: Keras 3, tf.keras 2 (through ``tf-keras``) and plain SavedModels.

``load_model`` reads, without compiling:

* a ``.keras`` file, or an ``.h5`` file written by Keras 3: with ``keras``;
* an ``.h5`` file written by tf.keras 2 (its ``keras_version`` attribute starts
  with ``2.``) and a SavedModel folder with Keras metadata (``keras_metadata.pb``):
  with the ``tf-keras`` package (the ``legacy`` extra), so that the model keeps its
  layers and every method works on it as on a Keras 3 model;
* a SavedModel folder without Keras metadata (a TF Serving export, a saved
  ``tf.Module``): one of its signatures (``model.signature``), wrapped as a
  ``SignatureModel``. Such a model has no layers: what needs one (Grad-CAM, the
  target layer's features, internals) is skipped by the audit.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import numpy as np

from audit.errors import UsageError

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def checked_path(path: str | Path) -> Path:
    """``path`` if it is a model file or a SavedModel folder, else a ``UsageError`` naming it."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--model {path}: no such file")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise UsageError(f"--model {path}: a folder but not a SavedModel (no saved_model.pb)")
        return path
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise UsageError(f"--model {path}: expected a .keras or .h5 file or a SavedModel folder")
    return path


def load_model(path: str | Path, trust: bool = False, signature: str = "serving_default"):
    """The model at ``path``: a ``keras.Model``, a ``tf_keras.Model`` or a ``SignatureModel``.

    Keras safe mode stays on (a ``Lambda`` layer, which can run arbitrary code, is
    refused) unless ``trust`` is set (``--trust-model``). ``signature`` names the
    signature of a SavedModel without Keras metadata.
    """
    path = checked_path(path)
    if path.is_dir():
        if (path / "keras_metadata.pb").is_file():
            return _tf_keras_load(path, trust)
        return SignatureModel(path, signature)
    if path.suffix.lower() in (".h5", ".hdf5") and _written_by_keras2(path):
        return _tf_keras_load(path, trust)
    import keras

    try:
        return keras.models.load_model(path, compile=False, safe_mode=not trust)
    except Exception as exc:
        if not trust and "safe_mode" in str(exc):
            raise _lambda_refused(path) from None
        raise UsageError(f"--model {path}: cannot load the model ({one_line(exc)})") from None


def _written_by_keras2(path: Path) -> bool:
    try:
        import h5py

        with h5py.File(path, "r") as fh:
            version = fh.attrs.get("keras_version", "")
    except Exception:  # not an HDF5 file: Keras 3 says why
        return False
    version = version.decode() if isinstance(version, bytes) else str(version)
    return version.startswith("2.")


def _tf_keras_load(path: Path, trust: bool):
    try:
        import tf_keras
    except ImportError:
        raise UsageError(f"--model {path}: a tf.keras 2 model; loading it needs the tf-keras package "
                         "(pip install 'cnn-audit[legacy]' or tf-keras matching your TensorFlow)") from None
    if not trust and path.is_file():
        import h5py

        with h5py.File(path, "r") as fh:
            layers = fh.attrs.get("model_config", "")
        if '"class_name": "Lambda"' in (layers.decode() if isinstance(layers, bytes) else str(layers)):
            raise _lambda_refused(path)
    try:
        return tf_keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise UsageError(f"--model {path}: cannot load the tf.keras 2 model ({one_line(exc)})") from None


def _lambda_refused(path: Path) -> UsageError:
    return UsageError(f"--model {path}: the model holds a Lambda layer, which can run arbitrary code; "
                      "pass --trust-model if you trust its source")


class SignatureModel:
    """One signature of a SavedModel without Keras metadata, as ``images -> scores``.

    Parameters
    ----------
    path : the SavedModel folder.
    signature : the signature's name (``model.signature``, ``--signature``).

    Attributes
    ----------
    function : the signature's concrete function (keyword input, dict of outputs).
    input_name : the name of its one 4-D float32 input ``[N, H, W, C]``.
    outputs : the names of its outputs, sorted (``model.output: 0`` is the first).
    """

    layers: list = []

    def __init__(self, path: Path, signature: str = "serving_default"):
        import tensorflow as tf

        try:
            self.loaded = tf.saved_model.load(str(path))
        except Exception as exc:
            raise UsageError(f"--model {path}: cannot load the SavedModel ({one_line(exc)})") from None
        names = sorted(self.loaded.signatures.keys())
        if signature not in self.loaded.signatures:
            raise UsageError(f"`model.signature` {signature!r}: the SavedModel {path} has no such signature "
                             f"(it has: {', '.join(names) or 'none'}; export one with tf.saved_model.save(..., "
                             "signatures=...))")
        self.path, self.signature = path, signature
        self.function = self.loaded.signatures[signature]
        _, inputs = self.function.structured_input_signature
        if len(inputs) != 1:
            raise UsageError(f"`model.signature` {signature!r} of {path} takes {len(inputs)} inputs "
                             f"({', '.join(sorted(inputs))}); cnn-audit feeds one image tensor")
        (self.input_name, spec), = inputs.items()
        if spec.dtype != tf.float32:
            raise UsageError(f"`model.signature` {signature!r} of {path}: its input {self.input_name!r} is "
                             f"{spec.dtype.name}, cnn-audit feeds float32 images")
        self.input_shape = tuple(spec.shape.as_list())
        self.outputs = sorted(self.function.structured_outputs)
        self.output_shapes = {k: tuple(v.shape.as_list()) for k, v in self.function.structured_outputs.items()}
        self.weights = list(self.function.variables)

    def gives_probabilities(self, output: str) -> bool:
        """Whether ``output`` is a probability vector: non-negative rows summing to 1 on a probe of
        four random images (the graph of a loaded signature hides its ops behind a function call)."""
        import numpy as np

        rng = np.random.default_rng(0)
        probe = rng.uniform(0, 255, (4, *self.input_shape[1:])).astype(np.float32)
        scores = self(probe, output).numpy().astype(np.float64)
        return bool(scores.shape[1] > 1 and scores.min() >= 0 and np.allclose(scores.sum(axis=1), 1.0, atol=1e-4))

    def __call__(self, images, output: str):
        """Inside a traced function: the signature's ``output`` ``[N, K]`` for ``images`` ``[N, H, W, C]``."""
        return self.function(**{self.input_name: images})[output]


class SignatureClassifier:
    """A ``SignatureModel`` seen as ``images -> logits``: the ``Classifier`` interface without layers.

    ``layer`` is ``None``: methods that need a layer (``Explainer.needs_layers``) are
    skipped, and so are the target layer's features and internals. When the
    signature's output is a probability vector (a softmax: rows of non-negative
    values summing to 1), the logits are its logarithm, which equals the pre-softmax
    logits up to a constant per image: the same class order and probabilities.

    Parameters
    ----------
    model : the ``SignatureModel``.
    output : the output to audit (``model.output``: a name or an index); required when
        the signature has several.
    """

    layer = None
    softmax = None

    def __init__(self, model: SignatureModel, output: str | int | None = None):
        name = pick_output(model.outputs, output, f"the signature {model.signature!r} of {model.path}")
        in_shape, out_shape = model.input_shape, model.output_shapes[name]
        if len(in_shape) != 4 or in_shape[1] is None or in_shape[2] is None or in_shape[3] is None:
            raise UsageError(f"--model {model.path}: the signature input shape {in_shape} is not [N, H, W, C] "
                             "with a fixed H, W and C")
        if len(out_shape) != 2 or not out_shape[1]:
            raise UsageError(f"--model {model.path}: the signature output {name!r} has shape {out_shape}, "
                             "not [N, classes]")
        self.model, self.output = model, name
        self.input_shape: tuple[int, int, int] = (int(in_shape[1]), int(in_shape[2]), int(in_shape[3]))
        self.n_classes = int(out_shape[1])
        self.log_of_softmax = model.gives_probabilities(name)
        self._lock = threading.RLock()
        self._functions: dict[Any, Callable] = {}

    @property
    def input_size(self) -> tuple[int, int]:
        """The model input's (H, W) in pixels."""
        return self.input_shape[:2]

    @property
    def logits_kind(self) -> str:
        """What is explained as logits, in words (the raw output, or the log of a softmax output)."""
        return (f"log of the softmax output {self.output!r} (signature {self.model.signature})"
                if self.log_of_softmax else f"raw output {self.output!r} (signature {self.model.signature})")

    def forward(self, images):
        """Inside a traced function: ``(logits [N, K], None)`` of ``images`` ``[N, H, W, C]``: there is no target
        layer; the log of a softmax output (floored at 1e-30) stands for its logits."""
        import tensorflow as tf

        scores = self.model(images, self.output)
        return (tf.math.log(tf.maximum(scores, 1e-30)) if self.log_of_softmax else scores), None

    def function(self, key: Any, fn: Callable, *specs) -> Callable:
        """``fn`` traced once per ``key`` for the input ``specs`` (``Classifier.function`` without patches)."""
        import tensorflow as tf

        with self._lock:
            if key not in self._functions:
                self._functions[key] = tf.function(fn).get_concrete_function(*specs)
            return self._functions[key]

    def image_spec(self):
        """``tf.TensorSpec`` of a float32 image batch ``[None, H, W, C]``."""
        import tensorflow as tf

        return tf.TensorSpec((None, *self.input_shape), tf.float32)

    def logits(self, images) -> "np.ndarray":
        """Logits ``[N, K]`` float32 of ``images`` ``[N, H, W, C]``."""
        fn = self.function("logits", lambda x: self.forward(x)[0], self.image_spec())
        return fn(images).numpy()


def pick_output(names: list[str], output: str | int | None, where: str) -> str:
    """The output named or numbered by ``output`` (``model.output``) among ``names``; one clear ``UsageError``
    naming ``where`` (the model) otherwise. None picks the only output."""
    if output is None:
        if len(names) == 1:
            return names[0]
        raise UsageError(f"`model.output`: {where} has {len(names)} outputs ({', '.join(names)}); "
                         "name the classification head (--output NAME or model.output: INDEX)")
    if isinstance(output, int) and not isinstance(output, bool):
        if 0 <= output < len(names):
            return names[output]
    elif str(output) in names:
        return str(output)
    raise UsageError(f"`model.output` {output!r}: {where} has no such output (outputs: {', '.join(names)})")


def one_line(exc: BaseException) -> str:
    """``exc`` as "Type: first line of its message"."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()
