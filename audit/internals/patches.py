"""Maximally activating patches (Zeiler & Fergus 2014): the dataset crops that excite a channel most.

One pass over the images (``batch`` per model call, all requested channels at
once): for every image and channel, the largest activation of the channel over
space and where it is. A channel's top patches are its ``k`` best images (one
patch per image, so a single image cannot fill a channel's grid), each cropped to
the unit's receptive field in input pixels (measured by ``receptive_field`` for
one unit and moved by the measured stride), shifted to stay inside the image.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from audit.internals._layers import capturing, layer_shape, receptive_field


def max_activations_function(classifier, layer):
    """Traced ``images [N, H, W, C] -> (max [N, K], argmax [N, K])``: each channel's
    largest activation over space in ``layer``'s output and its flat position.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model; the trace is cached on it per layer.
    layer : keras.layers.Layer
        A spatial layer of its model, output ``[h, w, K]``.
    """
    import tensorflow as tf

    h, w, k = layer_shape(layer)

    def fn(images):
        captured: dict = {}
        with capturing([layer], captured):
            classifier.forward(images)
        flat = tf.reshape(captured[layer.name], (-1, h * w, k))
        return tf.reduce_max(flat, axis=1), tf.argmax(flat, axis=1, output_type=tf.int32)

    return classifier.function(("internals.max", layer.name), fn, classifier.image_spec())


def top_patches(classifier, layer, batches: Iterable[tuple[np.ndarray, np.ndarray]], channels: np.ndarray,
                k: int, low: np.ndarray, high: np.ndarray, seed: int = 0) -> dict:
    """The ``k`` most activating images of each channel and the boxes to crop from them.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model.
    layer : keras.layers.Layer
        A spatial layer of its model.
    batches : iterable of (np.ndarray, np.ndarray)
        ``(ids int [n], images float32 [n, H, W, C])`` in the model's input
        space; ``ids`` name the images (e.g. manifest rows).
    channels : np.ndarray
        int ``[m]`` channel indices of ``layer``.
    k : int
        Images per channel.
    low, high : np.ndarray
        float32 ``[C]``: the input range, for ``receptive_field``'s random inputs.
    seed : int, default 0
        Seed of those inputs.

    Returns
    -------
    dict
        ``{"ids": int [m, k'], "values": float32 [m, k'], "boxes": int [m, k', 4]}`` with
        ``k' = min(k, number of images)``, best first; a box is ``(top, left, bottom,
        right)`` in model-input pixels (bottom/right exclusive). ``ids`` is -1 where a
    channel was not above zero, or where its peak is the same on every image (a dead
    unit behind a bias: nothing excites it more on one image than on another).
    """
    channels = np.asarray(channels, np.int64)
    fn = max_activations_function(classifier, layer)
    ids, values, where = [], [], []
    for batch_ids, images in batches:
        if not len(images):
            continue
        v, a = fn(images)
        ids.append(np.asarray(batch_ids, np.int64))
        values.append(v.numpy()[:, channels])
        where.append(a.numpy()[:, channels])
    m = len(channels)
    if not ids:
        return {"ids": np.zeros((m, 0), np.int64), "values": np.zeros((m, 0), np.float32),
                "boxes": np.zeros((m, 0, 4), np.int64)}
    ids_all, values_all, where_all = np.concatenate(ids), np.concatenate(values), np.concatenate(where)
    kk = min(k, len(ids_all))
    order = np.argsort(-values_all, axis=0, kind="stable")[:kk].T          # [m, kk] image positions
    best = np.take_along_axis(values_all.T, order, axis=1)
    pos = np.take_along_axis(where_all.T, order, axis=1)
    rf = receptive_field(classifier, layer, low, high, seed)
    boxes = unit_boxes(pos, layer_shape(layer)[1], classifier.input_size, rf)
    varies = (values_all.max(axis=0) > values_all.min(axis=0))[:, None]   # a constant channel ranks nothing
    out_ids = np.where((best > 0) & varies, ids_all[order], -1)
    return {"ids": out_ids, "values": best.astype(np.float32), "boxes": boxes}


CANDIDATES = 3   # images per patch kept per channel by the stored presence, in units of k (float16 ranks)


def candidates(rows: np.ndarray, presence: np.ndarray, channels: np.ndarray, k: int) -> np.ndarray:
    """The images a patch scan of ``channels`` needs, chosen by each channel's stored spatial maximum.

    The predict stage keeps every image's ``presence`` (each target-layer channel's
    spatial maximum, float16): the very value ``top_patches`` ranks by. So only each
    channel's ``CANDIDATES * k`` best images by it (float16 rounding can swap near-ties,
    the exact scan of these settles them) and its lowest one (so that ``top_patches`` still
    tells a channel whose best images tie from one that is the same on every image) need
    the model pass that finds where the maximum is.

    Parameters
    ----------
    rows : np.ndarray
        int ``[n]`` image ids (prediction rows).
    presence : np.ndarray
        float ``[n, K]``: each image's spatial maximum per channel of the layer.
    channels : np.ndarray
        int ``[m]`` channels to find patches for.
    k : int
        Patches per channel.

    Returns
    -------
    np.ndarray
        int64 ``[<= n]`` sorted ids: the images to scan.
    """
    values = np.asarray(presence, np.float32)[:, np.asarray(channels, np.int64)]     # [n, m]
    best = np.argsort(-values, axis=0, kind="stable")[:CANDIDATES * k]
    lowest = np.argmin(values, axis=0)
    picked = np.concatenate([best.ravel(), lowest]) if len(values) else np.zeros(0, np.int64)
    return np.unique(np.asarray(rows, np.int64)[picked])


def scan_rows(run_dir, rows: list[int], channels: list[int], k: int, max_images: int, seed: int) -> list[int]:
    """The images ``top_patches`` scans for ``channels``' ``k`` patches each.

    Of ``rows``, a seeded sample of ``max_images`` when there are more; then, when the
    run folder ``run_dir`` holds the predict stage's presence (each target-layer channel's
    spatial maximum, ``audit.artifacts.read_cams``) of them all, only the ``candidates``:
    a few times ``k`` per channel instead of a model pass over every image.

    Parameters
    ----------
    run_dir : str or Path
        The run folder (``cams/`` in it, or not).
    rows : list of int
        Readable prediction rows.
    channels : list of int
        Channels of the classifier's target layer.
    k, max_images, seed : int
        ``internals.patches``, ``internals.max_images``, ``seed``.

    Returns
    -------
    list of int
        Sorted prediction rows.
    """
    from audit import artifacts

    if len(rows) > max_images:
        rows = sorted(np.random.default_rng([seed, 7]).choice(rows, max_images, replace=False).tolist())
    if not channels:
        return list(rows)
    stored, presence = artifacts.read_cams(run_dir, "presence", np.asarray(rows, np.int64),
                                           lambda part: part[:, channels])
    if len(stored) != len(rows):
        return list(rows)
    return candidates(stored, presence, np.arange(len(channels)), k).tolist()


def unit_boxes(flat_positions: np.ndarray, width_units: int, size: tuple[int, int], rf: dict) -> np.ndarray:
    """Input-pixel boxes ``(top, left, bottom, right)`` of the units at ``flat_positions``
    (row-major over ``width_units`` columns), from the measured receptive field ``rf``
    (``receptive_field``) moved by the stride; shifted to lie inside the ``H x W`` input
    (and cut to it when larger).

    Parameters
    ----------
    flat_positions : np.ndarray
        int ``[...]``: unit positions ``i * width_units + j`` in the layer's output.
    width_units : int
        Columns ``w`` of the layer's output.
    size : (int, int)
        The input's ``(H, W)`` in pixels.
    rf : dict
        ``receptive_field``'s ``{"unit", "box", "stride"}``.

    Returns
    -------
    np.ndarray
        int64 ``[..., 4]`` boxes in input pixels (bottom/right exclusive).
    """
    height, width = size
    i, j = np.divmod(np.asarray(flat_positions, np.int64), width_units)
    (ui, uj), (top, left, bottom, right), (sy, sx) = rf["unit"], rf["box"], rf["stride"]
    box_h, box_w = min(bottom - top, height), min(right - left, width)
    y0 = np.clip(np.round(top + (i - ui) * sy).astype(np.int64), 0, height - box_h)
    x0 = np.clip(np.round(left + (j - uj) * sx).astype(np.int64), 0, width - box_w)
    return np.stack([y0, x0, y0 + box_h, x0 + box_w], axis=-1)


def image_batches(load: Callable[[list], tuple[np.ndarray, list]], ids: list, batch: int):
    """``(ids, images)`` batches from ``load(ids) -> (images, errors)``, unreadable images left out.

    Parameters
    ----------
    load : callable
        ``ids -> (images float32 [n, H, W, C], errors [n])``, an error None for a readable image.
    ids : list
        Image ids (int, e.g. prediction rows), ``batch`` per call of ``load``.
    batch : int
        Images per batch.
    """
    for start in range(0, len(ids), batch):
        part = ids[start:start + batch]
        images, errors = load(part)
        ok = [n for n, e in enumerate(errors) if e is None]
        yield np.asarray([part[n] for n in ok], np.int64), images[ok]
