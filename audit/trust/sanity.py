"""Sanity checks of attribution methods (Adebayo et al., 2018, "Sanity checks for saliency maps").

* Cascading randomization: a copy of the model has its weighted layers
  re-initialised from the top (the output) down, cumulatively, in at most
  ``steps`` steps (one layer per step when the model has no more weighted layers
  than that, else groups of consecutive layers). After each step every method
  explains the same images for the same classes again; the Spearman rank
  correlation and SSIM between the original and the randomized maps are
  recorded. A method whose maps still look the same once the whole model is
  random does not explain the model.
* Random logit: the maps for a random other class (seeded per image) compared
  with the maps for the explained class. A method that draws the same map
  whatever class it is asked about is not class sensitive.

Re-initialisation: a variable ``kernel`` of a layer is redrawn from the layer's
``kernel_initializer`` (``bias``, ``gamma``, ``moving_mean``, ... likewise) with
a seed; a variable without an initializer is drawn from a seeded normal with the
variable's own standard deviation.

The randomization is applied to the model's own variables and undone when the
check ends (``randomized``: every weight is saved first and restored in a
``finally``), so the methods run through the functions already traced for the
attribute stage: a clone would need every method traced again, which on a small
model costs more than the check itself. Nested base models are randomized like
any other layers (their variables belong to the model). While the check runs,
no other thread may use the same model object (in the pipeline it runs in the
driver after the attribute tasks have finished).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np

from audit.trust.similarity import spearman, ssim


def weighted_layers(model) -> list:
    """Layers of ``model`` (a ``keras.Model``) with weights, in order from the input, nested models flattened."""
    from audit.model_io import flat_layers

    return [layer for layer in flat_layers(model) if layer.weights]


def cascade(layers: list, steps: int) -> list[list]:
    """The ``layers`` (input first) randomized *at* each step, top first: at most ``steps`` groups of consecutive
    layers of near-equal size."""
    top_first = layers[::-1]
    n = min(steps, len(top_first))
    bounds = np.linspace(0, len(top_first), n + 1).round().astype(int)
    return [top_first[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@contextlib.contextmanager
def randomized(model) -> Iterator[None]:
    """Inside the block the weights of ``model`` (a ``keras.Model``) may be changed; on leaving, every weight is
    restored."""
    saved = [(variable, np.array(variable.numpy())) for variable in model.weights]
    try:
        yield
    finally:
        for variable, value in saved:
            variable.assign(value)


def reinitialise(layer, seed: int) -> None:
    """Redraw every variable of ``layer`` from its initializer (or a seeded normal), in place.

    Variable ``i`` uses initializer seed ``seed * 1000 + i`` (when the initializer takes one),
    or ``default_rng([seed, i])`` and the variable's own standard deviation (0.05 if zero).
    """
    from audit.model_io import keras_of

    keras = keras_of(layer)
    for i, variable in enumerate(layer.weights):
        name = variable.name.split("/")[-1].split(":")[0]
        init = getattr(layer, f"{name}_initializer", None)
        shape, dtype = tuple(variable.shape), getattr(variable.dtype, "name", variable.dtype)  # tf.keras 2: a tf.DType
        if isinstance(init, keras.initializers.Initializer):
            settings = init.get_config()
            if "seed" in settings:
                settings["seed"] = seed * 1000 + i
            value = type(init).from_config(settings)(shape, dtype=dtype)
        else:
            current = np.asarray(variable.numpy(), np.float64)
            scale = float(current.std()) or 0.05
            value = np.random.default_rng([seed, i]).normal(0.0, scale, shape).astype(dtype)
        variable.assign(value)


def cascading_randomization(classifier, images: np.ndarray, targets: np.ndarray, methods: dict,
                            originals: dict[str, np.ndarray], steps: int, seed: int = 0) -> list[dict]:
    """Spearman and SSIM of each method's maps after each cumulative randomization step.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        Of the model under audit (its weights are randomized during the call and
        restored before it returns).
    images, targets : np.ndarray
        float32 ``[n, H, W, C]`` and int ``[n]``.
    methods : dict
        Name -> explainer instance (``explain(classifier, images, targets)``).
    originals : dict
        Name -> maps ``[n, H, W]`` of the unmodified model.
    steps : int
        At most this many randomization steps.
    seed : int, default 0
        Layer ``j`` of step ``k`` is reinitialised with seed ``seed * 7919 + k * 101 + j``.

    Returns
    -------
    list of dict
        One per step: ``{"step", "layers": [names randomized at this step], "top_layer",
        "methods": {name: {"spearman", "ssim"}}}`` (means over images; a map made constant
        by the randomization counts as Spearman 0).
    """
    out = []
    with randomized(classifier.model):
        for k, group in enumerate(cascade(weighted_layers(classifier.model), steps), start=1):
            for j, layer in enumerate(group):
                reinitialise(layer, seed * 7919 + k * 101 + j)
            scores = {name: compare(originals[name], explainer.explain(classifier, images, targets))
                      for name, explainer in methods.items()}
            out.append({"step": k, "layers": [layer.name for layer in group], "top_layer": group[-1].name,
                        "methods": scores})
    return out


def random_logit(classifier, images: np.ndarray, targets: np.ndarray, methods: dict,
                 originals: dict[str, np.ndarray], seed: int = 0) -> dict[str, dict] | None:
    """Spearman and SSIM between each method's maps for ``targets`` and for a random other class.

    ``None`` when the model has a single output.

    Parameters
    ----------
    classifier, images, targets, methods, originals
        As in ``cascading_randomization``.
    seed : int, default 0
        Image ``i``'s other class is ``(t + 1 + default_rng([seed, i]).integers(k - 1)) % k``.
    """
    k = classifier.n_classes
    if k < 2:
        return None
    others = np.array([(t + 1 + np.random.default_rng([seed, i]).integers(k - 1)) % k
                       for i, t in enumerate(np.asarray(targets))], np.int32)
    return {name: compare(originals[name], explainer.explain(classifier, images, others))
            for name, explainer in methods.items()}


def compare(original: np.ndarray, other: np.ndarray) -> dict:
    """Mean Spearman (NaN, a constant map, as 0) and SSIM of two stacks of maps ``original`` and ``other``
    ``[n, H, W]``: ``{"spearman", "ssim"}`` (None for no image)."""
    rho = np.nan_to_num(spearman(original, other), nan=0.0)
    return {"spearman": float(rho.mean()) if len(rho) else None,
            "ssim": float(ssim(original, other).mean()) if len(rho) else None}
