"""Predict: run the classifier over one partition of the manifest.

Each partition decodes its images, runs the model in batches and returns one row
per image. An unreadable image, or one for which the model outputs a non-finite
value, gets its reason in ``error`` and no prediction; the run goes on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from audit.config import Config
from audit.data import load_images, preprocess
from audit.model_io import classifier_for


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` ``[N, K]``: probabilities ``[N, K]`` summing to 1 per row (max subtracted)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_partition(config: Config, root: Path, classes: list[str], part: pd.DataFrame) -> pd.DataFrame:
    """Predictions for ``part`` (manifest rows with a ``row`` column).

    Returns the rows with ``label_idx``, ``predicted``, ``predicted_idx``,
    ``confidence`` (top-1 probability), ``margin`` (top-1 minus top-2),
    ``runner_up``, ``probs`` (per class, softmax of the logits) and ``error``.

    Parameters
    ----------
    config : Config
        ``model.*``, ``data.*`` and ``predict.batch_size``.
    root : Path
        Folder the manifest paths are relative to.
    classes : list of str
        Class names in the model's output order.
    part : pd.DataFrame
        Manifest rows (``row``, ``path``, ``label``, metadata).
    """
    classifier = classifier_for(config)
    images, errors = load_images(root, part["path"].tolist(), classifier.input_size,
                                 config.data.max_pixels, classifier.input_shape[2])
    ok = np.array([e is None for e in errors])
    logits = np.full((len(part), classifier.n_classes), np.nan, np.float32)
    batch = config.predict.batch_size
    index = np.flatnonzero(ok)
    for start in range(0, len(index), batch):
        chunk = index[start:start + batch]
        logits[chunk] = classifier.logits(preprocess(images[chunk], config.data.preprocess))
    finite = np.isfinite(logits).all(axis=1)
    for i in np.flatnonzero(ok & ~finite):
        errors[i] = "model output is not finite (NaN or inf)"
    probs = softmax(np.where(finite[:, None], logits, 0.0))
    order = np.argsort(-probs, axis=1)
    top1, top2 = order[:, 0], order[:, 1] if probs.shape[1] > 1 else order[:, 0]
    valid = np.array([e is None for e in errors])
    out = part.copy()
    lookup = {name: i for i, name in enumerate(classes)}
    out["label_idx"] = out["label"].map(lookup).fillna(-1).astype(int)
    out["predicted_idx"] = np.where(valid, top1, -1)
    out["predicted"] = [classes[i] if v else None for i, v in zip(top1, valid)]
    rows = np.arange(len(part))
    out["confidence"] = np.where(valid, probs[rows, top1], np.nan)
    out["margin"] = np.where(valid, probs[rows, top1] - probs[rows, top2], np.nan)
    out["runner_up"] = [classes[i] if v else None for i, v in zip(top2, valid)]
    out["probs"] = [p.astype(np.float32) if v else None for p, v in zip(probs, valid)]
    out["error"] = errors
    return out
