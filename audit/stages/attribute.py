"""Attribute: explain one partition of the selection with every configured method.

Methods and their parameters come from ``attribution.methods`` and
``attribution.params`` (``{method: {param: value}}``, the keyword arguments of the
method's class in ``audit.explainers``). Each selected image is explained for its ``pair_label`` (the predicted class for
an error, the runner-up for a low-confidence image, its own class for contrast).
Maps are written to the run folder as float16 chunks (IG's with each image's
completeness gap ``sum(map) - (f(x) - f(baseline))`` and ``f(x) - f(baseline)``); the
partition returns only the rows it explained. The semantic features discovery reads
(what the model sees where it looks) come from the predict stage's fused pass.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import time
from pathlib import Path

import numpy as np
import pandas as pd

from audit import progress
from audit.artifacts import write_map_chunk
from audit.config import Config
from audit.data import prefetched, preprocess
from audit.errors import UsageError
from audit.explainers import IntegratedGradients, get
from audit.explainers.base import Explainer
from audit.model_io import classifier_for
from audit.stages.later import Allowance


def attribute_partition(config: Config, root: Path, classes: list[str], part: pd.DataFrame,
                        chunk: int, planned: dict[str, np.ndarray] | None = None, probe: bool = False,
                        allowance: Allowance | None = None) -> dict:
    """Write the maps of ``part`` (chunk number ``chunk``); return the rows explained.

    Parameters
    ----------
    config : audit.config.Config
        ``attribution.*``, ``data.*`` and the run folder the chunks go to.
    root : Path
        Folder the manifest paths are relative to.
    classes : list of str
        Class names in the model's output order.
    part : pd.DataFrame
        Selected rows with ``row``, ``path`` and ``pair_label`` (the class explained).
    chunk : int
        Number of this partition's map chunk.
    planned : dict of str to np.ndarray, optional
        Per method, the prediction rows it explains (``audit.stages.plan.Plan.rows``); default:
        every method explains every row of ``part``.
    probe : bool
        Also time one bare forward pass of each batch (the plan's unit of the later stages' work).
    allowance : audit.stages.later.Allowance, optional
        Under ``run.budget``: a costly method's batch starts only while the allowance affords it;
        the images it leaves out are counted in ``skipped`` (and get no map).

    Returns
    -------
    dict
        ``{"rows": [prediction row ids], "seconds": {method: seconds spent explaining}, "wall": seconds
        of the whole partition, "forward": seconds of the bare forward passes (0 unless probe),
        "skipped": {method: planned images left out for lack of time}}`` (the
        semantic features come from the predict stage's fused pass, ``audit.stages.predict``).
    """
    started = time.perf_counter()
    classifier = classifier_for(config)
    lookup = {name: i for i, name in enumerate(classes)}
    targets = part["pair_label"].map(lookup).to_numpy(np.int32)
    rows = part["row"].to_numpy(np.int64)
    methods = explainers(config)
    chosen = {m: np.ones(len(rows), bool) if planned is None else np.isin(rows, planned[m]) for m in methods}
    done: dict[str, list] = {method: [] for method in methods}
    seconds = dict.fromkeys(methods, 0.0)
    skipped = dict.fromkeys(methods, 0)
    forward = 0.0
    # batch by batch, the reader thread decoding the next batch while every method explains this one;
    # progress.advance counts images as they are done: a long stage logs its ETA (audit.progress)
    reader = prefetched(root, part["path"].tolist(), classifier.input_size, config.attribution.batch_size,
                        config.data.max_pixels, classifier.input_shape[2],
                        lambda x: preprocess(x, config.data.preprocess))
    with precision(classifier, config.attribution.precision):
        for where, images, _ in reader:
            if probe:
                start = time.perf_counter()
                classifier.logits(images)
                forward += time.perf_counter() - start
            for method, explainer in methods.items():
                use = chosen[method][where]
                if not use.any():
                    continue
                if allowance is not None and not allowance.affords(method, int(use.sum())):
                    skipped[method] += int(use.sum())
                    chosen[method][where.start + np.flatnonzero(use)] = False   # no map, none written
                    continue
                start = time.perf_counter()
                if isinstance(explainer, IntegratedGradients):  # its completeness gap costs 2 passes here
                    done[method].append(explainer.explain_with_gap(classifier, images[use], targets[where][use]))
                else:
                    done[method].append((explainer.explain(classifier, images[use], targets[where][use]),))
                seconds[method] += time.perf_counter() - start
                progress.advance(int(use.sum()))
    for method, explainer in methods.items():
        maps = np.concatenate([d[0] for d in done[method]]) if done[method] else \
            np.zeros((0, *classifier.input_size), np.float32)
        explained = rows[chosen[method]]
        if isinstance(explainer, IntegratedGradients):
            gap = np.concatenate([d[1] for d in done[method]]) if done[method] else np.zeros(0)
            write_map_chunk(config.run_dir, method, chunk, explained, maps, gap=gap,
                            difference=maps.sum(axis=(1, 2), dtype=np.float64) - gap)
        else:
            write_map_chunk(config.run_dir, method, chunk, explained, maps)
    return {"rows": rows.tolist(), "seconds": {m: round(t, 4) for m, t in seconds.items()},
            "wall": round(time.perf_counter() - started, 4), "forward": round(forward, 4), "skipped": skipped}


def precision(classifier, name: str):
    """``classifier.precision(name)`` (``attribution.precision``); a model loaded by signature runs float32.

    Parameters
    ----------
    classifier : audit.model_io.Classifier or SignatureClassifier
        The model.
    name : str
        ``float32`` or ``mixed_float16`` (a ``UsageError`` for a model without Keras layers).
    """
    if getattr(classifier, "layer", None) is None:
        if name != "float32":
            raise UsageError(f"`attribution.precision` {name} needs the model's Keras layers; this model was "
                             "loaded by signature: use float32")
        return contextlib.nullcontext()
    return classifier.precision(name)


def explainers(config: Config) -> dict[str, Explainer]:
    """The configured methods, built with ``attribution.batch_size`` and their ``attribution.params``.

    A parameter the method does not take, or a bad value, is a ``UsageError`` naming
    the key, e.g. "`attribution.params.occlusion.patch` must be a positive int (got 0)".

    Parameters
    ----------
    config : audit.config.Config
        ``attribution.methods``, ``attribution.params`` and ``attribution.batch_size``.

    Returns
    -------
    dict of str to Explainer
        In the order of ``attribution.methods``.
    """
    params = config.attribution.params
    built = {}
    for method in config.attribution.methods:
        cls, given = get(method), dict(params.get(method) or {})
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "batch_size")]
        for name in given:
            if name not in accepted:
                raise UsageError(f"`attribution.params.{method}.{name}` is not a parameter of {method} "
                                 f"(it takes: {', '.join(accepted) or 'none'})")
        try:
            built[method] = cls(batch_size=config.attribution.batch_size, **given)
        except ValueError as exc:
            raise UsageError(str(exc).replace(f"`{method}.", f"`attribution.params.{method}.", 1)) from None
    return built


def without_layers(config: Config, classifier) -> tuple[Config, list[str]]:
    """``config`` without what needs the model's layers, when it has none; and why, in words.

    A model loaded by signature (``classifier.layer is None``) runs the methods that
    only need input gradients or model passes. The methods that need a layer
    (``Explainer.needs_layers``: Grad-CAM, guided backprop, LRP, ...) leave
    ``attribution.methods`` and ``trust.methods`` (the first one left drives
    discovery), and the target layer's features, the sanity checks (they randomize
    layers) and internals are off. Returns the config unchanged and no line for a
    model with layers; a ``UsageError`` when no configured method is left.

    Returns
    -------
    (config, lines): each line starts "Not computed: ...", for the log and the report.
    """
    if classifier.layer is not None:
        return config, []
    why = f"the model ({config.model.path}) was loaded by signature and has no layers"
    methods = config.attribution.methods
    kept = tuple(m for m in methods if not get(m).needs_layers)
    dropped = [m for m in methods if m not in kept]
    if not kept:
        raise UsageError(f"`attribution.methods` [{', '.join(methods)}]: every method needs the model's layers and "
                         f"{why}; use integrated_gradients, saliency, smoothgrad or occlusion")
    lines = [f"Not computed: {', '.join(dropped)} because {why} (discovery uses {kept[0]})"] if dropped else []
    lines.append(f"Not computed: target-layer features (findings' coherence counts 1), sanity checks and internals "
                 f"because {why}")
    trust_methods = config.trust.methods
    trust_methods = None if trust_methods is None else tuple(m for m in trust_methods if m in kept) or None
    config = dataclasses.replace(
        config, attribution=dataclasses.replace(config.attribution, methods=kept),
        trust=dataclasses.replace(config.trust, methods=trust_methods, sanity_sample=0),
        internals=dataclasses.replace(config.internals, enabled=False))
    return config, lines


def check_methods(config: Config, classifier) -> None:
    """Build every configured method and explain one blank image with it, so that a bad
    parameter (say an occlusion patch larger than the image) stops the run before any work
    (and every method, like the predict stage's fused pass run on it too, is traced once, here).

    Parameters
    ----------
    config : audit.config.Config
        The run's settings (``explainers``).
    classifier : audit.model_io.Classifier
        The model; the blank image is all zeros of its input shape, target class 0.

    Raises
    ------
    UsageError
        Naming ``attribution.params.<method>.<param>``.
    """
    blank = np.zeros((1, *classifier.input_shape), np.float32)
    if classifier.layer is not None:   # the predict stage's fused pass, traced here too: before any work, once
        classifier.logits_and_cam(blank)
    classifier.logits(blank)           # the plan's probe times the bare forward pass (audit.stages.plan)
    for method, explainer in explainers(config).items():
        try:
            with precision(classifier, config.attribution.precision):
                explainer.explain(classifier, blank, np.zeros(1, np.int32))
        except ValueError as exc:
            raise UsageError(str(exc).replace(f"`{method}.", f"`attribution.params.{method}.", 1)) from None
