"""Predict: run the classifier over one partition of the manifest.

Each partition decodes its images, runs the model in batches and returns one row
per image. An unreadable image, or one for which the model outputs a non-finite
value, gets its reason in ``error`` and no prediction; the run goes on.

The same pass (``Classifier.logits_and_cam``: the forward pass plus the short backward
pass from the predicted logit to the target layer) keeps, for every image, its
Grad-CAM at the target layer's resolution and its attention-pooled and max-pooled
target-layer features, written to ``cams/`` (``audit.artifacts.write_cam_chunk``):
discovery clusters correct predictions from them (strategies), the attribute stage
reads its semantic features from them, and cue slices are measured on all images
with them, without another pass over the data. A model without a target layer (no
spatial layer to explain) gets logits only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from audit.config import Config
from audit.artifacts import write_cam_chunk
from audit.data import prefetched, preprocess
from audit.model_io import classifier_for, halving


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` ``[N, K]``: probabilities ``[N, K]`` summing to 1 per row (max subtracted)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_partition(config: Config, root: Path, classes: list[str], part: pd.DataFrame,
                      chunk: int | None = None) -> pd.DataFrame:
    """Predictions for ``part`` (manifest rows with a ``row`` column).

    With ``chunk`` (the partition's number), the fused pass's maps and features of the
    readable images are written as ``cams/chunk-<chunk>.npz`` in the run folder.

    Returns the rows with ``label_idx``, ``predicted``, ``predicted_idx``,
    ``confidence`` (top-1 probability), ``margin`` (top-1 minus top-2),
    ``runner_up``, ``probs`` (per class, softmax of the logits) and ``error``.

    Parameters
    ----------
    config : Config
        ``model.*``, ``data.*`` and ``predict.batch_size`` (halved for a batch the device has not the
        memory for, ``audit.model_io.halving``).
    root : Path
        Folder the manifest paths are relative to.
    classes : list of str
        Class names in the model's output order.
    part : pd.DataFrame
        Manifest rows (``row``, ``path``, ``label``, metadata).
    """
    classifier = classifier_for(config)
    logits = np.full((len(part), classifier.n_classes), np.nan, np.float32)
    errors: list[str | None] = []
    fused = chunk is not None and getattr(classifier, "layer", None) is not None
    run = classifier.logits_and_cam if fused else lambda x: (classifier.logits(x),)
    kept: list[tuple[np.ndarray, ...]] = []
    # the reader thread decodes and preprocesses the next batch while the model runs this one
    for where, images, batch_errors in prefetched(root, part["path"].tolist(), classifier.input_size,
                                                  config.predict.batch_size, config.data.max_pixels,
                                                  classifier.input_shape[2],
                                                  lambda x: preprocess(x, config.data.preprocess)):
        errors.extend(batch_errors)
        ok = np.flatnonzero([e is None for e in batch_errors])
        if not len(ok):
            continue
        at = where.start + ok
        logits[at], *extra = halving(run, images[ok])
        if fused:
            kept.append((at, *extra))
    ok = np.array([e is None for e in errors], bool)
    if fused and kept:
        at = np.concatenate([k[0] for k in kept])
        write_cam_chunk(config.run_dir, chunk, part["row"].to_numpy(np.int64)[at],
                        *(np.concatenate([k[i] for k in kept]) for i in (1, 2, 3)))
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
