"""The explainer contract, the registry of methods by name, and the shared batching.

``explain(model, images, targets, method="gradcam", **params)`` returns raw maps ``[N, H, W]`` float32 at input
resolution, not normalised. ``images`` are float32 ``[N, H, W, C]`` as the model takes them, ``targets`` int
``[N]`` (one class per image). Models ending in softmax are explained through their pre-softmax logits.

A method is a class registered with ``@register("name")``; its constructor only stores (and checks) parameters,
the work happens in its ``maps``, which ``Explainer.explain`` calls on checked inputs of at least one image.

Batching. Every method describes its work as a flat list of *items*, one model input each: an image (Grad-CAM,
saliency), an (image, step) pair (integrated gradients, SmoothGrad, expected gradients) or an (image, patch) pair
(occlusion). ``run_flat`` cuts that list into chunks of ``batch_size`` items (the memory bound: model inputs per
model call) regardless of image boundaries, and passes each chunk's distinct images once with a per-item index;
the traced function builds the model inputs on the device (paths, occluded copies) and either sums its results per
image or returns them per item. The host side of the next chunk is prepared while the model runs the current one.

Traced functions are cached on the ``Classifier`` under a (method, variant) key and take ``None``-batch specs, so
no chunk size ever re-traces and a Dask worker traces each method once per model. The last chunk is therefore not
padded: on the CPU a new batch size costs neither a trace nor a per-item premium (measured on MobileNetV2: 0.283 s
for a first call of 18 images, 0.287 s for the next), while padding would spend up to ``batch_size - 1`` wasted
passes per call.

Randomness (noise, baselines, background draws) is drawn per image (and per sample) from
``numpy.random.default_rng([seed, image_index, ...])`` where ``image_index`` is the image's position in the call,
so maps do not depend on ``batch_size`` and repeat exactly.
"""
from __future__ import annotations

import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, ClassVar, Sequence, Union

import numpy as np

Images = np.ndarray   # float32 [N, H, W, C]
Targets = np.ndarray  # int32 [N]
Maps = np.ndarray     # float32 [N, H, W]
ItemArray = Union[np.ndarray, Callable[[int, int], np.ndarray]]

_REGISTRY: dict[str, type["Explainer"]] = {}
_CLASSIFIERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def register(name: str):
    """Class decorator: make an ``Explainer`` subclass available under ``name``.

    Parameters
    ----------
    name : str
        The method's name (``explain(..., method=name)``); a name already taken raises ``ValueError``.
    """

    def wrap(cls: type[Explainer]) -> type[Explainer]:
        if name in _REGISTRY:
            raise ValueError(f"explainer {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def unregister(name: str) -> None:
    """Remove the method registered under ``name`` (registered for one notebook or test; else ``ValueError``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown attribution method {name!r}; available: {', '.join(available())}")
    del _REGISTRY[name]


def available() -> list[str]:
    """Names of the registered methods."""
    return sorted(_REGISTRY)


def get(name: str) -> type["Explainer"]:
    """The ``Explainer`` class registered under ``name`` (from ``available()``; another raises ``ValueError``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown attribution method {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


class Explainer:
    """Base class of attribution methods.

    Parameters
    ----------
    batch_size : int, default 32
        Model inputs per model call (images, images x steps or images x patches, by method): the memory bound.
    """

    name: ClassVar[str] = ""
    #: True for methods that read the model's layers (Grad-CAM's target layer, the ReLU
    #: rules of guided backprop, LRP's layer graph): they cannot run on a model loaded by
    #: signature (``classifier.layer is None``), which the audit then skips.
    needs_layers: ClassVar[bool] = False

    def __init__(self, batch_size: int = 32):
        self.batch_size = check_int(self, "batch_size", batch_size)

    def explain(self, classifier, images: Images, targets: Targets) -> Maps:
        """Maps ``[N, H, W]`` float32 for ``images`` ``[N, H, W, C]`` and ``targets`` ``[N]``.

        Checks the inputs (``check_inputs``), answers an empty batch with no maps, and leaves the rest to the
        method's ``maps``.

        Parameters
        ----------
        classifier : audit.model_io.Classifier
            The model (``classifier_of`` wraps a ``keras.Model``).
        images, targets : np.ndarray
            float32 ``[N, H, W, C]`` as the model takes them; int ``[N]``, the class explained per image.
        """
        if self.needs_layers and classifier.layer is None:
            raise ValueError(f"{self.name} needs the model's layers, and this model has none "
                             "(a SavedModel loaded by signature); use an input-gradient or perturbation method")
        images, targets = check_inputs(classifier, images, targets)
        if not len(images):
            return np.zeros(images.shape[:3], np.float32)
        return self.maps(classifier, images, targets)

    def maps(self, classifier, images: Images, targets: Targets) -> Maps:
        """The method's work: ``classifier``, ``images``, ``targets`` as in ``explain``, checked, N >= 1."""
        raise NotImplementedError

    def fail(self, param: str, expected: str, got: Any) -> ValueError:
        """The error "`method.param` must be ``expected`` (got ``got``)" for parameter ``param``."""
        return ValueError(f"`{self.name}.{param}` must be {expected} (got {got!r})")


def check_int(explainer: Explainer, param: str, value: Any, minimum: int = 1) -> int:
    """``value`` of parameter ``param`` as an int >= ``minimum`` (bools refused), else ``explainer.fail`` raised."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise explainer.fail(param, "a positive int" if minimum == 1 else f"an int >= {minimum}", value)
    return int(value)


def check_float(explainer: Explainer, param: str, value: Any, low: float = 0.0, high: float = np.inf,
                open_low: bool = True) -> float:
    """``value`` of parameter ``param`` as a float in (``low``, ``high``] (closed at ``low`` unless ``open_low``),
    else ``explainer.fail`` raised."""
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        bound = f"in ({low}, {high}]" if high < np.inf else (f"> {low}" if open_low else f">= {low}")
        raise explainer.fail(param, f"a number {bound}", value)
    return float(value)


def check_choice(explainer: Explainer, param: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` of parameter ``param`` if it is one of ``choices``, else ``explainer.fail`` raised."""
    if value not in choices:
        raise explainer.fail(param, "one of " + ", ".join(choices), value)
    return value


def classifier_of(model, target_layer: str | None = None):
    """A ``Classifier`` for a ``keras.Model`` (a ``SignatureClassifier`` for an
    ``audit.model_files.SignatureModel``), cached per model object, or the classifier itself.

    Parameters
    ----------
    model, target_layer : keras.Model, SignatureModel or a classifier, str or None
        The model; the layer of layer-based methods (default: last spatial 4-D layer).
    """
    from audit.model_io import Classifier, SignatureClassifier, classifier_of_model

    if isinstance(model, (Classifier, SignatureClassifier)):
        return model
    key = (target_layer,)
    per_model = _CLASSIFIERS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = classifier_of_model(model, target_layer)
    return per_model[key]


def explain(model, images: Images, targets: Targets, method: str = "gradcam",
            target_layer: str | None = None, **params) -> Maps:
    """Attribution maps of ``images`` for ``targets`` with a registered ``method``.

    Parameters
    ----------
    model : ``keras.Model`` or ``audit.model_io.Classifier``.
    images : float32 ``[N, H, W, C]``, as the model takes them.
    targets : int ``[N]``, the class to explain for each image.
    method : a name from ``available()``.
    target_layer : layer for layer-based methods (default: last spatial 4-D layer).
    **params : the method's parameters (e.g. ``batch_size``, ``steps``).

    Returns
    -------
    float32 ``[N, H, W]``: raw maps at input resolution.
    """
    return get(method)(**params).explain(classifier_of(model, target_layer), images, targets)


def check_inputs(classifier, images, targets) -> tuple[Images, Targets]:
    """``images`` as float32 ``[N, H, W, C]`` and ``targets`` as int32 ``[N]``, or a ``ValueError``.

    Parameters
    ----------
    classifier, images, targets : Classifier, array-like, array-like
        The model (input shape, class count ``K``); ``[N, H, W, C]``; int ``[N]`` in ``[0, K)``.
    """
    images = np.asarray(images, dtype=np.float32)
    targets = np.asarray(targets)
    if images.ndim != 4 or images.shape[1:] != classifier.input_shape:
        raise ValueError(f"images must be [N, {', '.join(map(str, classifier.input_shape))}] "
                         f"(got {list(images.shape)})")
    if targets.shape != (len(images),) or not (np.issubdtype(targets.dtype, np.integer) or len(targets) == 0):
        raise ValueError(f"targets must be int [N={len(images)}] (got {targets.dtype} {list(targets.shape)})")
    if len(targets) and (targets.min() < 0 or targets.max() >= classifier.n_classes):
        raise ValueError(f"targets must be class indices in [0, {classifier.n_classes})")
    return images, targets.astype(np.int32)


def run_flat(fn: Callable, owner: np.ndarray, per_image: Sequence[np.ndarray], per_item: Sequence[ItemArray],
             batch_size: int, n_images: int, reduce: bool) -> np.ndarray:
    """Run ``fn`` over a flat item list in fixed-size chunks.

    Parameters
    ----------
    fn : callable
        Traced function ``fn(*per_image_slices, index, *per_item_chunks)``. The ``per_image`` arrays arrive sliced
        to the chunk's images ``[M, ...]``; ``index`` int32 ``[B]`` maps each item to its row in those slices; the
        ``per_item`` arrays arrive as ``[B, ...]`` (``B <= batch_size``, smaller for the last chunk).
    owner : np.ndarray
        Int ``[T]``, non-decreasing: the image of each item.
    per_image : list of np.ndarray
        Arrays ``[N, ...]`` (methods with one item per image pass their images as ``per_item`` instead, which
        saves the gather).
    per_item : list of np.ndarray or callable
        Arrays ``[T, ...]`` or callables ``(start, stop) -> [stop - start, ...]`` that build a chunk's items on
        demand (e.g. noise).
    batch_size : int
        Items per call (the memory bound; halved while the device runs out of memory).
    n_images : int
        N.
    reduce : bool
        If true, ``fn`` returns per-image sums ``[M, ...]`` accumulated here in float64 into ``[N, ...]``;
        otherwise ``fn`` returns ``[B, ...]`` per item and the result is ``[T, ...]``.
    """
    import tensorflow as tf

    from audit.progress import note

    owner = np.asarray(owner, np.int64)
    total = len(owner)

    def prepare(start: int, size: int):
        stop = min(start + size, total)
        lo, hi = int(owner[start]), int(owner[stop - 1]) + 1
        index = (owner[start:stop] - lo).astype(np.int32)
        items = [np.asarray(a(start, stop) if callable(a) else a[start:stop]) for a in per_item]
        args = [tf.constant(a[lo:hi]) for a in per_image] + [tf.constant(index)] + [tf.constant(a) for a in items]
        return stop, lo, hi, args

    acc, parts, start = None, [], 0
    # the host side of the next chunk (slicing, noise, copies) runs while the model runs this one; out of
    # device memory, the chunk is retried in halves and the batch size stays halved for the rest of the call
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare, 0, batch_size) if total else None
        while start < total:
            stop, lo, hi, args = pending.result()
            pending = pool.submit(prepare, stop, batch_size) if stop < total else None
            try:
                result = fn(*args).numpy()
            except tf.errors.ResourceExhaustedError:
                if stop - start == 1:
                    raise
                batch_size = (stop - start + 1) // 2
                note(f"warning: out of memory at {stop - start} model inputs per call; retrying with {batch_size}")
                pending = pool.submit(prepare, start, batch_size)
                continue
            if reduce:
                if acc is None:
                    acc = np.zeros((n_images, *result.shape[1:]), np.float64)
                acc[lo:hi] += result
            else:
                parts.append(result)
            start = stop
    if reduce:
        return acc
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


def per_image_items(n_images: int, per_image_count: int) -> np.ndarray:
    """``owner`` of ``per_image_count`` items for each of ``n_images`` images: ``[0,0,..,1,1,..]``."""
    return np.repeat(np.arange(n_images), per_image_count)


def target_scores(classifier, x, t):
    """Inside a traced function: the pre-softmax logit of class ``t`` (int32 ``[B]``) of ``classifier`` for ``x``
    (float32 ``[B, H, W, C]``), ``[B]``."""
    import tensorflow as tf

    logits, _ = classifier.forward(x)
    return tf.gather(logits, t, batch_dims=1)


def input_gradients(classifier, x, t):
    """Inside a traced function: ``d logit_t / d x`` ``[B, H, W, C]`` per item (``classifier``, ``x``, ``t`` as in
    ``target_scores``)."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        score = target_scores(classifier, x, t)
    return tape.gradient(score, x)


def gradient_function(classifier, key: str, reduce_map: Callable, relu: str | None = None) -> Callable:
    """Traced ``(index [B], images [B], targets [B]) -> reduce_map(x, grad) [B, H, W]``, one pass per image.

    Parameters
    ----------
    classifier, key, reduce_map, relu : Classifier, str, callable, str or None
        The trace is cached on ``classifier`` under ``(key, relu)``; ``reduce_map(x, grad)`` maps two
        ``[B, H, W, C]`` to ``[B, H, W]``; ``relu``: a ReLU gradient rule of ``_relu`` (None: true gradient).
    """
    import tensorflow as tf

    from audit.explainers._relu import relu_gradients

    def fn(index, images, targets):  # one item per image: index unused
        return reduce_map(images, input_gradients(classifier, images, targets))

    ints = tf.TensorSpec((None,), tf.int32)
    with relu_gradients(classifier, relu):
        return classifier.function((key, relu), fn, ints, classifier.image_spec(), ints)


def one_pass_maps(explainer: Explainer, classifier, images, targets, key: str, reduce_map: Callable,
                  relu: str | None = None) -> Maps:
    """Maps ``[N, H, W]`` of a method that needs one forward and backward pass per image (saliency and kin).

    ``explainer`` gives ``batch_size``; ``classifier``, ``images``, ``targets`` are as in ``Explainer.explain``,
    ``key``, ``reduce_map``, ``relu`` as in ``gradient_function``.
    """
    fn = gradient_function(classifier, key, reduce_map, relu)
    owner = np.arange(len(images))
    return run_flat(fn, owner, [], [images, targets], explainer.batch_size, len(images), reduce=False)


def max_abs_over_channels(_x, grads):
    """Magnitude map ``max_c |g|`` ``[B, H, W]`` of gradients ``grads`` ``[B, H, W, C]`` (Simonyan et al., 2014)."""
    import tensorflow as tf

    return tf.reduce_max(tf.abs(grads), axis=-1)


def resolve_baseline(explainer: Explainer, baseline: Any, images: Images, sigma: float | None,
                     seed: int, param: str = "baseline") -> Images:
    """Per-image baselines ``[N, H, W, C]`` float32.

    ``baseline``: ``"black"`` (all-zero input), ``"mean"`` (each image's per-channel
    mean), ``"blur"`` (Gaussian blur of the image, ``sigma`` pixels, default
    ``min(H, W) / 10``), ``"noise"`` (uniform in each image's [min, max], drawn from
    ``default_rng([seed, i])``), a number (constant input) or an array ``[H, W, C]``
    or ``[N, H, W, C]``.

    Parameters
    ----------
    explainer, baseline, images, sigma, seed, param : Explainer, see above, ndarray, float or None, int, str
        ``param`` is the parameter named in errors.
    """
    n, h, w, c = images.shape
    if isinstance(baseline, str):
        if baseline == "black":
            return np.zeros_like(images)
        if baseline == "mean":
            return np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape).astype(np.float32)
        if baseline == "blur":
            return blur(images, min(h, w) / 10.0 if sigma is None else sigma)
        if baseline == "noise":
            out = np.empty_like(images)
            for i, image in enumerate(images):
                rng = np.random.default_rng([seed, i])
                out[i] = rng.uniform(image.min(), image.max(), image.shape)
            return out
        raise explainer.fail(param, "black, mean, blur, noise, a number or an array [H, W, C] / [N, H, W, C]",
                             baseline)
    if isinstance(baseline, (int, float, np.number)) and not isinstance(baseline, bool):
        return np.full_like(images, float(baseline))
    array = np.asarray(baseline, np.float32)
    if array.shape == images.shape[1:]:
        return np.broadcast_to(array, images.shape).astype(np.float32)
    if array.shape == images.shape:
        return array
    raise explainer.fail(param, f"an array [{h}, {w}, {c}] or [{n}, {h}, {w}, {c}]", f"shape {list(array.shape)}")


def blur(images: Images, sigma: float) -> Images:
    """Gaussian blur of ``images`` float32 ``[N, H, W, C]`` over height and width (``sigma`` in pixels, <= 0: a
    copy; reflected borders)."""
    from scipy.ndimage import gaussian_filter

    if sigma <= 0:
        return images.copy()
    return gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode="reflect").astype(np.float32)
