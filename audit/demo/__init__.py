"""The embedded demo: synthetic "hotel areas" images with a planted spurious cue.

Four procedural scene classes (pool, bathroom, bedroom, kitchen), 64x64 RGB, drawn with numpy
(``audit.demo.scenes``).
The planted cue is a pair of thin bright metallic rails (a pool ladder / towel rail). In the
training set it sits on most bathrooms and almost nowhere else, and about half of the bathrooms
are spa bathrooms drawn like indoor pools, so the rails are the cheapest way to tell those apart:
the small CNN learns "rails => bathroom". The audit set adds pools with rails, which the biased
model calls "bathroom".

``prepare`` builds everything in a work folder and reuses it on the next call::

    dataset/train/images/<class>/NNNNN.png, dataset/train/manifest.csv
    dataset/audit/images/<class>/NNNNN.png, dataset/audit/manifest.csv   (path,label,cue)
    model.keras    float32 RGB 0..255 [B, 64, 64, 3] -> softmax over CLASSES [B, 4]
    classes.txt    one class per line, model output order
    demo.json      written last; a valid cache has it
"""
from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from audit.demo.scenes import CLASSES, SIZE, render_image

GENERATOR_VERSION: int = 1          # bump when images or training change: invalidates caches
LAST_CONV = "last_conv"             # 16x16x48, for Grad-CAM
TRAIN_PER_CLASS = 650               # of which VAL_FRACTION is held out for validation
VAL_FRACTION = 0.15
CUE_RATE_BATHROOM = 0.87            # share of bathrooms with rails (training and audit)
CUE_RATE_OTHER = 0.02               # share of the other classes with rails
AUDIT_PER_CLASS = 100               # plus AUDIT_POOLS_WITH_CUE pools, all with rails
AUDIT_POOLS_WITH_CUE = 60
EPOCHS, BATCH, LEARNING_RATE = 15, 32, 3e-3


@dataclass(frozen=True)
class DemoAssets:
    """A prepared demo (``prepare``).

    Attributes
    ----------
    root : Path
        The work folder.
    model_path : Path
        ``root/model.keras``.
    manifest : Path
        Audit-set CSV ``path,label,cue``, paths relative to its folder.
    classes : Path
        ``classes.txt``, one class per line in model output order.
    info : dict
        Contents of ``demo.json``.
    """

    root: Path
    model_path: Path
    manifest: Path
    classes: Path
    info: dict


# --------------------------------------------------------------------------- drawing helpers
# Images are float32 [64, 64, 3] RGB in 0..255 while drawn; boxes are rows y0:y1, columns x0:x1.

# --------------------------------------------------------------------------- data sets

def _plan(per_class: int, pools_with_cue: int | None, bathroom_rate: float = CUE_RATE_BATHROOM
          ) -> list[tuple[str, int, int]]:
    """``(label, n_images, n_with_cue)`` per class: the cue at ``bathroom_rate`` on bathrooms and the
    low rate elsewhere; with ``pools_with_cue``, pools are ``per_class`` without the cue plus that
    many with it."""
    plan = []
    for c in CLASSES:
        if c == "pool" and pools_with_cue is not None:
            plan.append((c, per_class + pools_with_cue, pools_with_cue))
        else:
            rate = bathroom_rate if c == "bathroom" else CUE_RATE_OTHER
            plan.append((c, per_class, round(per_class * rate)))
    return plan


def _write_split(folder: Path, seed: int, stream: int, plan: list[tuple[str, int, int]]
                 ) -> tuple[np.ndarray, pd.DataFrame]:
    """Render one split into ``folder/images/<class>/NNNNN.png`` and ``folder/manifest.csv``.

    Which images of a class carry the cue is a seeded permutation; image ``i`` of class ``c`` is
    drawn from ``default_rng([seed, stream, c, i])``. Returns (uint8 images [N, 64, 64, 3], the
    manifest ``path,label,cue``) in the same order.
    """
    images, rows = [], []
    for label, n, n_cue in plan:
        c = CLASSES.index(label)
        cues = np.random.default_rng([seed, stream, c]).permutation(n) < n_cue
        (folder / "images" / label).mkdir(parents=True, exist_ok=True)
        for i, cue in enumerate(cues):
            img = render_image(label, np.random.default_rng([seed, stream, c, i]), bool(cue))
            rel = f"images/{label}/{i:05d}.png"
            Image.fromarray(img).save(folder / rel)
            images.append(img)
            rows.append({"path": rel, "label": label, "cue": int(cue)})
    frame = pd.DataFrame(rows, columns=["path", "label", "cue"])
    frame.to_csv(folder / "manifest.csv", index=False)
    return np.stack(images), frame


# --------------------------------------------------------------------------- model

def _build_model():
    """The demo CNN: float32 RGB 0..255 [B, 64, 64, 3] -> softmax [B, 4].

    ``last_conv`` (16x16x48, ReLU) is followed only by BatchNormalization (per-channel affine at
    inference), global average pooling and the Dense softmax. The BatchNormalization lets the thin
    rails, a few percent of the image, weigh in the average early in training.
    """
    import keras
    from keras import layers

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(48, 3, padding="same", activation="relu", name=LAST_CONV)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax")(x)
    return keras.Model(inputs, outputs, name="demo_cnn")


@contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seed Python, NumPy and TensorFlow and turn TensorFlow op determinism on inside the block; it is
    turned back off afterwards if it was off, so the rest of the process runs as usual."""
    import keras
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config  # the only switch back off

    was_on = tf_config.is_op_determinism_enabled()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_on:
            tf_config.disable_op_determinism()


def _train(x: np.ndarray, y: np.ndarray, seed: int, log: Callable[[str], None]):
    """Fit the demo CNN on ``x`` uint8 [N, 64, 64, 3], ``y`` int [N] class indices (Adam, cosine
    decay); the last ``VAL_FRACTION`` of a seeded shuffle is held out for validation.
    Returns (model, Keras history dict, seconds spent in ``fit``)."""
    import keras

    order = np.random.default_rng([seed, 2]).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order]
    model = _build_model()
    steps = EPOCHS * math.ceil(len(x) * (1 - VAL_FRACTION) / BATCH)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    report = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: log(
        f"demo: epoch {epoch + 1}/{EPOCHS}: loss {logs['loss']:.3f} acc {logs['accuracy']:.3f} "
        f"val_acc {logs['val_accuracy']:.3f}"))
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, validation_split=VAL_FRACTION,
                        shuffle=True, verbose=0, callbacks=[report])
    return model, history.history, time.perf_counter() - start


# --------------------------------------------------------------------------- bias table, cache

def bias_table(frame: pd.DataFrame) -> dict:
    """How often pools are predicted "bathroom", with and without the rails cue.

    Parameters
    ----------
    frame : one row per audit image, with at least ``label`` (str), ``predicted`` (str) and
        ``cue`` (0/1 or bool).

    Returns
    -------
    ``{"pool_with_cue": {"n": int, "predicted_bathroom": int, "rate": float}, "pool_without_cue": ...}``;
    ``rate`` is ``predicted_bathroom / n`` rounded to 3 decimals, 0.0 when ``n`` is 0.
    """
    pools = frame[frame["label"] == "pool"]
    cue = pools["cue"].astype(int).astype(bool)
    table = {}
    for key, rows in (("pool_with_cue", pools[cue]), ("pool_without_cue", pools[~cue])):
        hits = int((rows["predicted"] == "bathroom").sum())
        table[key] = {"n": len(rows), "predicted_bathroom": hits,
                      "rate": round(hits / len(rows), 3) if len(rows) else 0.0}
    return table


def _assets(root: Path, info: dict) -> DemoAssets:
    return DemoAssets(root=root, model_path=root / "model.keras", manifest=root / "dataset" / "audit" / "manifest.csv",
                      classes=root / "classes.txt", info=info)


def _cached(root: Path, seed: int, rail_rate: float = CUE_RATE_BATHROOM) -> DemoAssets | None:
    """The demo cached in ``root`` if ``demo.json`` matches ``seed``, ``rail_rate`` and
    ``GENERATOR_VERSION``, the files it lists keep their recorded sizes and all audit images are
    there; else None."""
    try:
        info = json.loads((root / "demo.json").read_text())
    except (OSError, ValueError):
        return None
    if (info.get("generator_version") != GENERATOR_VERSION or info.get("seed") != seed
            or info.get("rail_rate", CUE_RATE_BATHROOM) != rail_rate):
        return None
    files = info.get("files") or {}
    if not files or any(not (root / rel).is_file() or (root / rel).stat().st_size != size
                        for rel, size in files.items()):
        return None
    assets = _assets(root, info)
    if sum(1 for _ in (assets.manifest.parent / "images").rglob("*.png")) != info.get("n_audit"):
        return None
    return assets


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def cache_dir(workdir: Path, rail_rate: float = CUE_RATE_BATHROOM) -> Path:
    """Where the demo of ``rail_rate`` is cached: ``workdir`` for the standard rate, else the
    sibling folder ``<workdir>-rails-<rate>`` (so both models stay cached).

    Parameters
    ----------
    workdir : Path
        The demo's work folder.
    rail_rate : float, default CUE_RATE_BATHROOM
        Share (0..1) of bathroom training images with rails.
    """
    workdir = Path(workdir)
    return workdir if rail_rate == CUE_RATE_BATHROOM else workdir.with_name(f"{workdir.name}-rails-{rail_rate:g}")


def prepare(workdir: Path, seed: int = 0, log: Callable[[str], None] = print,
            rail_rate: float = CUE_RATE_BATHROOM) -> DemoAssets:
    """Generate the demo data sets, train the biased model and cache it all in ``workdir``.

    A later call with the same ``seed`` (and ``GENERATOR_VERSION``) returns the cache at once.
    Otherwise ``demo.json`` is deleted first and written last, so an interrupted run never looks
    like a valid cache; ``workdir/dataset`` is replaced. Concurrent calls on one cache folder (two
    jobs, parallel tests) take turns on its ``.lock`` file: the first builds, the others reuse. The
    same seed gives the same PNG bytes and the same model predictions.

    Parameters
    ----------
    workdir : folder to fill, created if missing.
    seed : seeds the images, which of them carry the cue, and the training.
    log : called with short progress lines (generation, one line per epoch, the bias table).
    rail_rate : share of the bathroom *training* images with rails. Lower values train the
        model on cleaner data (it learns the cue less); the audit set is the same for every
        rate. Other rates are cached in ``cache_dir(workdir, rail_rate)``.

    Returns
    -------
    DemoAssets whose ``info`` (``demo.json``) holds the generator version, seed, image counts, train
    seconds, train/val accuracy, audit accuracy (all rows; and "clean", without the pools carrying
    the cue), the audit confusion (``confusion[true][predicted]`` counts) and ``bias`` (``bias_table``).
    """
    root = cache_dir(workdir, rail_rate)
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / ".lock"):   # a second process (a parallel test, a second job) waits, then reuses
        cached = _cached(root, seed, rail_rate)
        if cached is not None:
            log(f"demo: using the cached demo in {root} (seed {seed}, rail rate {rail_rate:g})")
            return cached
        return _build(root, seed, log, rail_rate)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (``fcntl.flock``) on ``path`` for the block; a no-op where
    ``fcntl`` does not exist (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(root: Path, seed: int, log: Callable[[str], None], rail_rate: float) -> DemoAssets:
    """Generate, train and write the cache in ``root`` (see ``prepare``)."""
    start = time.perf_counter()
    (root / "demo.json").unlink(missing_ok=True)
    shutil.rmtree(root / "dataset", ignore_errors=True)
    log(f"demo: generating images in {root / 'dataset'} (seed {seed})")
    x_train, train = _write_split(root / "dataset" / "train", seed, 0, _plan(TRAIN_PER_CLASS, None, rail_rate))
    x_audit, audit = _write_split(root / "dataset" / "audit", seed, 1, _plan(AUDIT_PER_CLASS, AUDIT_POOLS_WITH_CUE))
    log(f"demo: training on {len(x_train)} images ({VAL_FRACTION:.0%} held out), {EPOCHS} epochs")
    with _deterministic(seed):
        model, history, seconds = _train(x_train, train["label"].map(CLASSES.index).to_numpy(), seed, log)
        probs = model.predict(x_audit.astype(np.float32), batch_size=64, verbose=0)
    assets = _assets(root, {})
    model.save(root / "model.tmp.keras")
    (root / "model.tmp.keras").replace(assets.model_path)
    _write_atomic(assets.classes, "\n".join(CLASSES) + "\n")
    audit["predicted"] = [CLASSES[i] for i in probs.argmax(axis=1)]
    clean = audit[~((audit["label"] == "pool") & (audit["cue"] == 1))]
    confusion = pd.crosstab(audit["label"], audit["predicted"]).reindex(index=CLASSES, columns=CLASSES, fill_value=0)
    info = {
        "generator_version": GENERATOR_VERSION, "seed": seed, "rail_rate": rail_rate, "classes": list(CLASSES),
        "image_size": SIZE,
        "last_conv": LAST_CONV, "n_train": len(x_train), "n_audit": len(x_audit), "epochs": EPOCHS,
        "train_seconds": round(seconds, 1),
        "train_accuracy": round(float(history["accuracy"][-1]), 4),
        "val_accuracy": round(float(history["val_accuracy"][-1]), 4),
        "audit_accuracy": round(float((audit["label"] == audit["predicted"]).mean()), 4),
        "audit_clean_accuracy": round(float((clean["label"] == clean["predicted"]).mean()), 4),
        "confusion": {t: {p: int(confusion.loc[t, p]) for p in CLASSES} for t in CLASSES},
        "bias": bias_table(audit),
        "files": {str(p.relative_to(root)): p.stat().st_size for p in (assets.model_path, assets.classes,
                                                                         assets.manifest)},
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    _write_atomic(root / "demo.json", json.dumps(info, indent=2) + "\n")
    log(f"demo: trained in {seconds:.0f} s, val accuracy {info['val_accuracy']:.3f}; audit accuracy "
        f"{info['audit_accuracy']:.3f} ({info['audit_clean_accuracy']:.3f} without the pools with rails)")
    for key, row in info["bias"].items():
        log(f"demo: {key}: {row['predicted_bathroom']}/{row['n']} predicted bathroom ({row['rate']:.0%})")
    return _assets(root, info)
