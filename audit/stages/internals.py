"""Internals: what the model learned, for the top findings (``audit.internals``).

For each of the ``internals.findings`` best-ranked findings:

* its classes (true and predicted): the class visualization of each;
* the target layer's channels most attributed in its cue area: for its members
  (up to ``internals.max_members``), Grad-CAM weight x activation pooled over
  each member's top-attributed region (``audit.stages.verify.top_regions`` of the
  stored map), averaged; the best ``internals.finding_channels`` channels, each
  with its filter visualization and its top ``internals.patches`` patches from the
  audit images (readable prediction rows, a seeded sample of
  ``internals.max_images`` when there are more; of those, only the few whose stored
  channel maxima can be among the best: ``audit.internals.patches.scan_rows``);
* activation maps of its first ``internals.exemplars`` exemplars at the
  ``internals.layers`` (channels ordered by attribution to the predicted class).

All classes form one ascent batch, all channels another, and the patch scan is
one pass over those images. Pictures are small PNGs in ``<run>/internals/``,
described by ``internals/index.json`` (which also records the stage key: a run
resumed with the same inputs and settings reuses them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from audit import artifacts, integrity, resume
from audit.config import Config
from audit.data import load_images, preprocess
from audit.errors import UsageError
from audit.findings import Finding
from audit.internals import grids

FOLDER = "internals"
INDEX = "index.json"
PREVIEW = 128   # px, side of a class or filter visualization in the pictures


def run_internals(config: Config, root: Path, classes: list[str], predictions: pd.DataFrame,
                  findings: list[Finding], map_rows: np.ndarray, maps: np.ndarray, classifier, key: str,
                  log: Callable[[str], None] = print) -> dict:
    """Write ``<run>/internals/`` for the top findings; return its index (reused when ``key`` matches).

    Parameters
    ----------
    config : Config
        ``internals.*``, ``data.*``, ``discovery.grid``, ``verify.max_area``, ``seed``, the run folder.
    root : Path
        Folder the manifest paths are relative to.
    classes : list of str
        Class names in the model's output order.
    predictions : pd.DataFrame
        The run's predictions (``row``, ``path``, ``predicted``, ``error``).
    findings : list of Finding
        The run's findings, ranked (the first ``internals.findings`` get an entry).
    map_rows, maps : np.ndarray
        int ``[n]`` row ids and float ``[n, G, G]`` first-method maps pooled to
        ``discovery.grid`` cells, as discovery read them.
    classifier : audit.model_io.Classifier
        The model (its target layer's channels are ranked).
    key : str
        The stage key (``audit.resume.stage_keys``).
    log : callable, default print
        Progress messages.
    """
    out = Path(config.run_dir) / FOLDER
    previous = resume.reused_folder(out, INDEX, key, log)
    if previous is not None:
        return previous
    index_path = out / INDEX
    index = {"key": key, "enabled": bool(config.internals.enabled), "findings": [], "classes": {},
             "channels": {}, "layer": None if classifier.layer is None else classifier.layer.name}
    top = findings[:config.internals.findings] if config.internals.enabled else []
    if top:
        index.update(_internals(config, root, classes, predictions, top, map_rows, maps, classifier, out))
    artifacts.write_json(index_path, index)
    return index


def _internals(config, root, classes, predictions, top, map_rows, maps, classifier, out: Path) -> dict:
    from audit.internals import Ascent, attributed_channels, input_range, resolve_layers
    from audit.internals.patches import scan_rows
    from audit.maps import area_pool, top_regions

    low, high = input_range(config.data.preprocess, classifier.input_shape[2])
    layer = classifier.layer
    table = predictions.set_index(predictions["row"].astype(int), drop=False)
    readable = table[table["error"].isna()]
    map_of = {int(r): i for i, r in enumerate(map_rows)}
    h, w = (int(d) for d in layer.output.shape[1:3])
    layers = resolve_layers(classifier.model, config.internals.layers, config.internals.n_layers)

    def load(rows: list[int]) -> tuple[np.ndarray, list]:
        return load_images(root, [str(table.at[r, "path"]) for r in rows], classifier.input_size,
                           config.data.max_pixels, classifier.input_shape[2])

    entries = []
    for f in top:
        rows = [int(r) for r in f.rows if int(r) in map_of and int(r) in readable.index]
        rows = rows[:config.internals.max_members]
        pixels, errors = load(rows)
        ok = [i for i, e in enumerate(errors) if e is None]
        rows, pixels = [rows[i] for i in ok], pixels[ok]
        best: list[int] = []
        if rows:   # no member with a map and a readable image: no channels to rank
            regions = top_regions(maps[[map_of[r] for r in rows]], config.discovery.grid, config.verify.max_area)
            weights = np.stack([area_pool(m.astype(np.float64), h, w) if m is not None else np.zeros((h, w))
                                for m in regions])
            targets = np.array([classes.index(str(table.at[r, "predicted"])) for r in rows], np.int32)
            scores = attributed_channels(classifier, layer, preprocess(pixels, config.data.preprocess), targets,
                                         weights, config.internals.batch_size, also=layers)
            best = [int(c) for c in np.argsort(-scores, kind="stable")[:config.internals.finding_channels]]
        entries.append({"id": f.id, "members": sorted(int(r) for r in f.rows), "rank": f.rank,
                        "true_label": f.true_label, "predicted_label": f.predicted_label, "n_members_used": len(rows),
                        "classes": [classes.index(f.true_label), classes.index(f.predicted_label)],
                        "channels": [{"channel": c, "score": round(float(scores[c]), 6)} for c in best],
                        "exemplar_rows": _exemplar_rows(f, table, config.internals.exemplars)})

    class_ids = sorted({c for e in entries for c in e["classes"]})
    channel_ids = sorted({c["channel"] for e in entries for c in e["channels"]})
    index = {"classes": class_entries(classifier, class_ids, classes, low, high,
                                      Ascent.from_config(config, classes=True), out)}
    ids = scan_rows(config.run_dir, readable["row"].astype(int).tolist(), channel_ids, config.internals.patches,
                    config.internals.max_images, config.seed)
    index["channels"] = channel_entries(classifier, layer, channel_ids, low, high, Ascent.from_config(config),
                                        config, ids, load, out)
    index["scanned_images"] = len(ids)
    index["layers"] = [l.name for l in layers]
    for e in entries:
        e["activations"] = activation_entries(classifier, layers, e.pop("exemplar_rows"), classes, table, config,
                                              load, out, prefix=_safe(e["id"]))
    index["findings"] = entries
    index["scanned_images"] = len(ids)
    return index


def _exemplar_rows(f: Finding, table: pd.DataFrame, n: int) -> list[int]:
    by_path = dict(zip(f.members, f.rows))
    rows = [int(by_path[p]) for p in f.exemplars if p in by_path]
    return [r for r in rows if r in table.index and pd.isna(table.at[r, "error"])][:n]


def _safe(fid: str) -> str:
    import hashlib
    import re

    return fid if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fid) else \
        "finding-" + hashlib.sha1(fid.encode()).hexdigest()[:10]


def class_entries(classifier, class_ids: list[int], names: list[str], low, high, settings, out: Path,
                  layer=None) -> dict:
    """Class visualizations of ``class_ids`` (one batch): ``{str(index): {...}}``, PNGs in ``out``.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model.
    class_ids : list of int
        Class indices.
    names : list of str
        Class names by index (an index beyond them is named by its number).
    low, high : np.ndarray
        float32 ``[C]``: the model's input range (``input_range``).
    settings : audit.internals.Ascent
        Class-visualization ascent settings.
    out : Path
        Folder of the PNGs (``PREVIEW`` pixels square).
    layer : keras.layers.Layer, optional
        The layer of the filter pictures (they share the traced step); default the target layer.
    """
    from audit.internals import to_pixels, visualize_classes

    if not class_ids:
        return {}
    viz = visualize_classes(classifier, np.array(class_ids), low, high, settings, layer)
    pixels = to_pixels(viz["images"], low, high)
    entries = {}
    for n, c in enumerate(class_ids):
        name = f"class-{c}.png"
        integrity.write_atomic(out / name, grids.png(grids.tile(pixels[n], PREVIEW)))
        entries[str(c)] = {"name": names[c] if c < len(names) else str(c), "image": name,
                           "logit_start": round(float(viz["start"][n]), 4), "logit_end": round(float(viz["end"][n]), 4),
                           "probability": round(float(viz["probability"][n]), 4)}
    return entries


def channel_entries(classifier, layer, channel_ids: list[int], low, high, settings, config: Config, ids: list[int],
                    load: Callable | None, out: Path) -> dict:
    """Filter visualization (one batch) and top patches (one scan of ``ids``; none without
    ``load``) of ``channel_ids`` of ``layer``: ``{str(channel): {...}}``, PNGs in ``out``.

    Parameters
    ----------
    classifier, layer : audit.model_io.Classifier, keras.layers.Layer
        The model and a spatial layer of it.
    channel_ids : list of int
        Channels of ``layer``.
    low, high, settings
        As in ``class_entries`` (filter-visualization settings).
    config : Config
        ``internals.batch_size``, ``internals.patches``, ``data.preprocess``, ``seed``.
    ids : list of int
        Prediction rows scanned for patches.
    load : callable or None
        ``rows -> (images float32 [n, H, W, 3] RGB 0..255, errors)`` (``audit.data.load_images``).
    out : Path
        Folder of the PNGs.
    """
    from audit.internals import to_pixels, top_patches, visualize_filters
    from audit.internals.patches import image_batches

    if not channel_ids:
        return {}
    viz = visualize_filters(classifier, layer, np.array(channel_ids), low, high, settings)
    pixels = to_pixels(viz["images"], low, high)

    def model_batches():
        for batch_ids, images in image_batches(load, ids, config.internals.batch_size):
            yield batch_ids, preprocess(images, config.data.preprocess)

    found = top_patches(classifier, layer, model_batches() if load is not None else iter(()), np.array(channel_ids),
                        config.internals.patches, low, high, config.seed)
    needed = sorted({int(i) for i in found["ids"].ravel() if i >= 0})
    images, _ = load(needed) if needed else (np.zeros((0,)), [])
    image_of = {r: images[n].astype(np.uint8) for n, r in enumerate(needed)}
    entries = {}
    for n, c in enumerate(channel_ids):
        base = f"{_safe(layer.name)}-channel-{c}"
        integrity.write_atomic(out / f"{base}-filter.png", grids.png(grids.tile(pixels[n], PREVIEW)))
        crops = [image_of[int(i)][t:b, l:r] for i, (t, l, b, r) in zip(found["ids"][n], found["boxes"][n]) if i >= 0]
        entry = {"layer": layer.name, "filter": f"{base}-filter.png",
                 "mean_start": round(float(viz["start"][n]), 5), "mean_end": round(float(viz["end"][n]), 5),
                 "patches": None, "patch_rows": [int(i) for i in found["ids"][n] if i >= 0],
                 "patch_values": [round(float(v), 4) for i, v in zip(found["ids"][n], found["values"][n]) if i >= 0],
                 "patch_boxes": [[int(x) for x in box] for i, box in zip(found["ids"][n], found["boxes"][n]) if i >= 0]}
        if crops:
            entry["patches"] = f"{base}-patches.png"
            integrity.write_atomic(out / entry["patches"], grids.png(grids.square_grid(crops)))
        entries[str(c)] = entry
    return entries


def activation_entries(classifier, layers: list, rows: list[int], classes: list[str], table: pd.DataFrame,
                       config: Config, load: Callable, out: Path, prefix: str) -> list[dict]:
    """Activation-map grids of the images ``rows`` (one pass), for their predicted class.

    Parameters
    ----------
    classifier : audit.model_io.Classifier
        The model.
    layers : list of keras.layers.Layer
        Layers shown, one grid row each (``internals.channels`` channels by attribution).
    rows : list of int
        Prediction rows of the images; unreadable ones are left out.
    classes : list of str
        Class names in output order.
    table : pd.DataFrame
        Indexed by row, with ``path`` and ``predicted`` (class name).
    config : Config
        ``internals.*`` and ``data.preprocess``.
    load : callable
        As in ``channel_entries``.
    out : Path
        Folder of the PNGs, named ``<prefix>-row-<row>-activations.png``.
    prefix : str
        File-name prefix.
    """
    from audit.internals import activation_maps

    if not rows:
        return []
    pixels, errors = load(rows)
    keep = [n for n, e in enumerate(errors) if e is None]
    rows, pixels = [rows[n] for n in keep], pixels[keep]
    targets = np.array([classes.index(str(table.at[r, "predicted"])) for r in rows], np.int32)
    per_layer = activation_maps(classifier, layers, preprocess(pixels, config.data.preprocess), targets,
                                config.internals.batch_size, also=[l for l in [classifier.layer] if l is not None])
    k = config.internals.channels
    entries = []
    for n, r in enumerate(rows):
        shown = [[int(c) for c in a["order"][n][:k]] for a in per_layer]
        picture = grids.activation_grid(pixels[n].astype(np.uint8),
                                        [[a["maps"][n][..., c] for c in cs] for a, cs in zip(per_layer, shown)])
        name = f"{prefix}-row-{r}-activations.png"
        integrity.write_atomic(out / name, grids.png(picture))
        entries.append({"row": r, "path": str(table.at[r, "path"]), "predicted": str(table.at[r, "predicted"]),
                        "image": name, "layers": [{"layer": a["layer"], "channels": cs,
                                                   "attribution": [round(float(a["attribution"][n][c]), 5) for c in cs]}
                                                  for a, cs in zip(per_layer, shown)]})
    return entries


def explore(config: Config, layer_name: str, class_names: list[str] | None, only: list[str] | None,
            log: Callable[[str], None] = print) -> dict:
    """``audit internals``: every channel of one layer, and the classes, into ``config.run_dir``.

    Filter visualizations of all channels of ``layer_name`` (``internals.batch_size``
    per ascent batch); with ``data.path``, their top patches from the data set
    (``internals.max_images`` at most) and the activation maps of its first
    ``internals.exemplars`` readable images; class visualizations of ``only`` (class
    names) or of every class. Writes the PNGs and ``index.json``; returns the index.

    Parameters
    ----------
    config : Config
        ``model.*``, ``data.*``, ``internals.*``, ``seed`` and the output folder.
    layer_name : str
        ``--layer``.
    class_names : list of str or None
        Class names in output order; None: from ``data.path`` or "class i".
    only : list of str or None
        ``--class`` names to visualize; None: every class.
    log : callable, default print
        Progress messages.

    Raises
    ------
    UsageError
        For an unknown layer or class, or a class count the model contradicts.
    """
    from audit.data import load_classes, load_manifest
    from audit.internals import Ascent, input_range, resolve_layers
    from audit.model_io import cached_classifier

    classifier = cached_classifier(config.model.path, None, config.model.trust, config.model.signature,
                                   config.model.output)
    if classifier.layer is None:
        raise UsageError(f"--model {config.model.path}: loaded by signature, the model has no layers to look into")
    (layer,) = resolve_layers(classifier.model, [layer_name], 1, key="--layer")
    out = Path(config.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = root = None
    if config.data.path is not None:
        frame, root = load_manifest(config.data.path)
        frame = frame.drop_duplicates("path").reset_index(drop=True)
        frame.insert(0, "row", np.arange(len(frame)))
    if class_names is None:
        class_names = (load_classes(None, frame, config.data.path) if frame is not None
                       else [f"class {i}" for i in range(classifier.n_classes)])
    if len(class_names) != classifier.n_classes:
        where = config.data.classes or config.data.path
        raise UsageError(f"{where}: {len(class_names)} classes but the model has {classifier.n_classes} outputs")
    unknown = [name for name in only or [] if name not in class_names]
    if unknown:
        raise UsageError(f"--class {unknown[0]!r} is not among the model's classes")
    low, high = input_range(config.data.preprocess, classifier.input_shape[2])
    class_ids = [class_names.index(name) for name in only] if only else list(range(classifier.n_classes))
    log(f"  class visualization of {len(class_ids)} class(es)")
    index = {"model": str(config.model.path), "layer": layer.name, "classes": {}, "channels": {},
             "activations": [], "scanned_images": 0}
    index["classes"] = class_entries(classifier, class_ids, class_names, low, high,
                                     Ascent.from_config(config, classes=True), out, layer)
    channels = list(range(int(layer.output.shape[-1])))
    ids: list[int] = []
    load = None
    if frame is not None:
        table = frame.set_index("row", drop=False)

        def load(rows: list[int]) -> tuple[np.ndarray, list]:
            return load_images(root, [str(table.at[r, "path"]) for r in rows], classifier.input_size,
                               config.data.max_pixels, classifier.input_shape[2])

        ids = frame["row"].tolist()
        if len(ids) > config.internals.max_images:
            ids = sorted(np.random.default_rng([config.seed, 7]).choice(
                ids, config.internals.max_images, replace=False).tolist())
    log(f"  filter visualization of {len(channels)} channel(s) of {layer.name}"
        + (f", top patches from {len(ids)} image(s)" if ids else ""))
    index["channels"] = channel_entries(classifier, layer, channels, low, high, Ascent.from_config(config),
                                        config, ids, load, out)
    if load is not None:
        index["scanned_images"] = len(ids)
        layers = resolve_layers(classifier.model, config.internals.layers, config.internals.n_layers)
        if layer.name not in [l.name for l in layers]:
            layers.append(layer)
        rows, n = [], config.internals.exemplars
        for start in range(0, len(ids), max(n, 1)):
            if len(rows) >= n:
                break
            part = ids[start:start + n]
            _, errors = load(part)
            rows += [r for r, e in zip(part, errors) if e is None]
        rows = rows[:n]
        predicted = classifier.logits(preprocess(load(rows)[0], config.data.preprocess)).argmax(axis=1) if rows else []
        lookup = pd.DataFrame({"path": [str(table.at[r, "path"]) for r in rows],
                               "predicted": [class_names[p] for p in predicted]}, index=rows)
        index["layers"] = [l.name for l in layers]
        index["activations"] = activation_entries(classifier, layers, rows, class_names, lookup, config, load,
                                                  out, prefix="image")
    artifacts.write_json(out / INDEX, index)
    return index

