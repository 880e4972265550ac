"""The model passes on the device: what they are counted as, what they run in, and what happens
when they do not fit.

* ``passes()``: every traced function of a ``Classifier`` counts the model inputs it runs
  (a counter in the graph adds each call's batch), by kind: ``forward`` (logits only),
  ``layer`` (plus a backward pass to the target layer: Grad-CAM's, the fused predict
  pass's) and ``input`` (plus a backward pass to the input). ``benchmarks/production.py``
  times these passes bare to find a run's floor.
* ``halving(run, images)``: a batch the device has not the memory for
  (``tf.errors.ResourceExhaustedError``) is retried in halves, logged.
* ``mixed_policy(layers)``: while a function is traced with ``attribution.precision:
  mixed_float16``, the model's layers but its output layer compute in float16 and keep
  float32 weights (Keras mixed precision); the traced function's logits and activations
  are float32. Maps stay within a few percent of float32's (``tests/test_production.py``).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    import numpy as np

PRECISIONS = ("float32", "mixed_float16")
_COUNTERS: list[tuple[Any, str, Any]] = []   # (function key, kind, tf.Variable of model inputs), every classifier's
LAYER_KEYS = ("fused", "gradcam", "gradcam_plus_plus")   # their backward pass stops at the target layer


def passes() -> dict[str, dict[str, int]]:
    """Model inputs run so far in this process by every classifier's traced functions.

    Returns
    -------
    dict
        ``{kind: {function key: inputs}}`` with ``kind`` one of ``forward`` (a forward
        pass), ``layer`` (forward plus a backward pass to the target layer) and ``input``
        (forward plus a backward pass to the input); keys as ``str``. A function that
        calls the model twice counts both calls.
    """
    out: dict[str, dict[str, int]] = {"forward": {}, "layer": {}, "input": {}}
    for key, kind, counter in list(_COUNTERS):
        name = key if isinstance(key, str) else "/".join(map(str, key))
        out[kind][name] = out[kind].get(name, 0) + int(counter.numpy())
    return out


def halving(run: Callable, images: "np.ndarray") -> tuple["np.ndarray", ...]:
    """``run(images)``, retried in two halves (and so on) while the device runs out of memory.

    Parameters
    ----------
    run : callable
        ``images -> tuple of arrays [n, ...]``, e.g. ``Classifier.logits_and_cam``.
    images : np.ndarray
        float32 ``[N, H, W, C]``, model input.

    Returns
    -------
    tuple of np.ndarray
        ``run``'s arrays for all ``N`` images, the halves concatenated. A single image
        that does not fit raises ``tf.errors.ResourceExhaustedError``; each retry is logged
        (``audit.progress.note``).
    """
    import numpy as np
    import tensorflow as tf

    from audit.progress import note

    try:
        return tuple(run(images))
    except tf.errors.ResourceExhaustedError:
        if len(images) <= 1:
            raise
    half = (len(images) + 1) // 2
    note(f"warning: out of memory at {len(images)} images per call; retrying with {half}")
    first, second = halving(run, images[:half]), halving(run, images[half:])
    return tuple(np.concatenate(pair) for pair in zip(first, second))


def count_passes(key: Any, graph, counter) -> None:
    """Count, under ``key``, the model inputs that ``counter`` (the ``tf.Variable`` the traced ``graph`` adds
    its batches to) records; the kind comes from the graph (``passes``)."""
    _COUNTERS.append((key, _pass_kind(key, graph), counter))


def _pass_kind(key: Any, graph) -> str:
    """``forward``, ``layer`` or ``input`` (see ``passes``) of the traced ``graph`` under ``key``."""
    backward = any(op.name.startswith("gradient_tape/") for op in graph.get_operations())
    if not backward:
        return "forward"
    base = key[0] if isinstance(key, tuple) and key and key[-1] in PRECISIONS else key
    return "layer" if base in LAYER_KEYS else "input"


@contextlib.contextmanager
def mixed_policy(layers: list) -> Iterator[None]:
    """While tracing: ``layers`` (Keras 3 layers) compute in float16 with float32 weights; restored after.

    Parameters
    ----------
    layers : list
        Every layer of the model (``audit.model_io.flat_layers``). A tf.keras 2 model's layers
        cannot change policy once built: ``ValueError`` naming ``attribution.precision``.
    """
    saved = [(layer, layer.dtype_policy) for layer in layers]
    try:
        for layer, _ in saved:
            layer.dtype_policy = "mixed_float16"
    except AttributeError:   # tf.keras 2: a read-only property
        raise ValueError("`attribution.precision` mixed_float16 needs a Keras 3 model (this one is tf.keras 2); "
                         "use float32") from None
    try:
        yield
    finally:
        for layer, policy in saved:
            layer.dtype_policy = policy
