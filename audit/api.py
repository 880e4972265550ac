"""The Python API, for notebooks and scripts: ``audit.run`` audits, ``audit.load`` reopens a run.

``run(model, data, classes=None, out=None, **settings)`` runs the same pipeline as
``audit run`` (``audit.pipeline.run``), into the same run folder, with the same
artifacts and the same resume. What exists only in memory is first written into
the run folder's ``input/`` folder, so that the pipeline's tasks (Dask workers
included) read it by path, as they read everything else:

* a ``keras.Model``: ``input/model.keras`` (written again only when its
  architecture or weights changed, so a repeated call resumes);
* a pandas DataFrame manifest: ``input/manifest.parquet``;
* an ``(images, labels)`` pair of arrays or a ``tf.data.Dataset`` of
  ``(image, label)``: ``input/images/NNNNN.png`` (8-bit PNG) and
  ``input/manifest.csv``;
* a list of class names: ``input/classes.txt``.

Settings are the config's dotted keys with ``__`` for the dot
(``select__margin=0.1``), a section as a dict (``select={"margin": 0.1}``) or the
dotted keys themselves (``**{"select.margin": 0.1}``). A bad key or value raises
``audit.errors.UsageError`` with the line the CLI would print.

``Audit`` reads a finished run folder; it needs TensorFlow only for ``explain``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import UsageError

INPUT = "input"
FINDING_COLUMNS = ["id", "rank", "kind", "true_label", "predicted_label", "size", "score", "cue", "confirmed",
                   "status", "triage", "members"]


class Audit:
    """A finished run folder, read for a notebook.

    Parameters
    ----------
    run_dir : the run folder (it holds ``summary.json``).

    Attributes
    ----------
    run_dir : Path of the run folder.
    summary : dict, the contents of ``summary.json`` (keys in DESIGN.md).
    report_path : Path of the HTML report, ``index.html``.
    """

    def __init__(self, run_dir: str | Path):
        import audit.artifacts as artifacts

        self.run_dir = Path(run_dir)
        if not (self.run_dir / artifacts.SUMMARY).is_file():
            raise UsageError(f"{self.run_dir}: not a finished run folder (no summary.json)")
        self.summary: dict = artifacts.read_json(self.run_dir / artifacts.SUMMARY)
        self.report_path = self.run_dir / "index.html"

    def __repr__(self) -> str:
        m = self.summary.get("metrics") or {}
        return (f"Audit({str(self.run_dir)!r}: {self.summary.get('status')}, {m.get('n_images')} images, "
                f"{len(self.summary.get('findings') or [])} finding(s))")

    @functools.cached_property
    def findings(self):
        """The findings as a DataFrame, best first: one row per finding with ``id``, ``rank``,
        ``true_label``, ``predicted_label``, ``size`` (members), ``score``, ``confirmed`` (the
        cue confirmed by intervention: True / False / None when untested), ``status`` (against
        the baseline), ``triage`` and ``members`` (list of manifest paths); plus ``kind`` and
        ``cue`` (the cue in plain words) when the summary has them."""
        import pandas as pd

        found = self.summary.get("findings") or []
        rows = [{**{k: f.get(k) for k in FINDING_COLUMNS}, "confirmed": (f.get("trust") or {}).get("confirmed"),
                 "kind": f.get("kind"), "cue": (f.get("cue") or {}).get("text")} for f in found]
        columns = [c for c in FINDING_COLUMNS if c not in ("kind", "cue") or any(r[c] is not None for r in rows)]
        return pd.DataFrame(rows, columns=columns)

    @functools.cached_property
    def predictions(self):
        """``predictions.parquet`` as a DataFrame: one row per manifest row (``row``, ``path``,
        ``label``, ``predicted``, ``confidence``, ``margin``, ``probs``, ``error``, metadata)."""
        import audit.artifacts as artifacts

        return artifacts.read_table(self.run_dir / artifacts.PREDICTIONS)

    @functools.cached_property
    def _run(self) -> dict:
        import audit.artifacts as artifacts

        return artifacts.read_json(self.run_dir / artifacts.RUN_JSON)

    def explain(self, image: int | str | Path, method: str | None = None, target: int | str | None = None,
                show: bool = False) -> np.ndarray:
        """Explain one image with the run's model, as the attribute stage does.

        Parameters
        ----------
        image : a manifest row (``predictions.row``), a path as the manifest writes it, or any
            image file.
        method : a registered attribution method (``audit.available()``); default the run's
            first ``attribution.methods``. Its ``attribution.params`` apply.
        target : class name or index to explain; default the class the model predicts.
        show : also display the image and the map over it (in a notebook).

        Returns
        -------
        float32 ``[H, W]`` raw map at the model's input resolution (not normalised).
        """
        import dataclasses

        from audit.config import recorded
        from audit.data import load_images, preprocess
        from audit.model_io import classifier_for
        from audit.stages.attribute import explainers

        config = recorded(self._run.get("config"))
        method = method or config.attribution.methods[0]
        config = dataclasses.replace(config, attribution=dataclasses.replace(config.attribution, methods=(method,)))
        classes = list(self._run.get("classes") or [])
        root = Path(self._run["data"]["root"])
        path = self._image_path(image, root)
        classifier = classifier_for(config)
        pixels, errors = load_images(root, [path], classifier.input_size, config.data.max_pixels)
        if errors[0] is not None:
            raise UsageError(f"{path}: cannot read the image ({errors[0]})")
        x = preprocess(pixels, config.data.preprocess)
        if target is None:
            index = int(np.argmax(classifier.logits(x)[0]))
        elif isinstance(target, str):
            if target not in classes:
                raise UsageError(f"target {target!r} is not among the classes ({', '.join(classes)})")
            index = classes.index(target)
        else:
            index = int(target)
        cam = explainers(config)[method].explain(classifier, x, np.array([index], np.int32))[0]
        if show:
            _show(pixels[0], cam, f"{path}: {method} for {classes[index] if index < len(classes) else index}")
        return cam

    def _image_path(self, image: int | str | Path, root: Path) -> str:
        pred = self.predictions
        if isinstance(image, (int, np.integer)):
            match = pred.loc[pred["row"] == int(image), "path"]
            if match.empty:
                raise UsageError(f"row {image}: not in this run's predictions (rows 0..{len(pred) - 1})")
            return str(match.iloc[0])
        from audit.data import resolve

        if str(image) in set(pred["path"]) or resolve(root, str(image)).is_file():
            return str(image)
        raise UsageError(f"{image}: neither a path of this run's manifest nor an image file")

    @functools.cached_property
    def _html(self) -> str:
        from audit.report import summary
        from audit.report.assets import Assets
        from audit.report.jinja import environment
        from audit.report.loading import Run

        run = Run.load(self.run_dir)
        view = summary.section(run, Assets(self.run_dir, "single"))   # single: pictures as data: URIs
        return environment(run.config.report.templates).get_template("notebook.html.j2").render(
            s=view, report=str(self.report_path))

    def _repr_html_(self) -> str:
        """The report's summary (verdict, metric cards, gates, top findings with their cue
        montages) as self-contained HTML: styles scoped to the output, pictures inline."""
        return self._html


def load(run_dir: str | Path) -> Audit:
    """The ``Audit`` of a finished run folder (no TensorFlow needed until ``explain``).

    Parameters
    ----------
    run_dir : a folder written by ``audit run``, ``audit demo`` or ``audit.run``.
    """
    return Audit(run_dir)


def run(model: Any, data: Any, classes: Any = None, out: str | Path | None = None, *, quiet: bool = False,
        **settings: Any) -> Audit:
    """Audit ``model`` on ``data``, as ``audit run`` does, and return the finished run.

    Parameters
    ----------
    model : path of a ``.keras`` / ``.h5`` file, or an in-memory ``keras.Model``.
    data : a folder of class subfolders or a CSV/parquet manifest (path); a pandas
        DataFrame manifest with at least ``path,label`` (relative paths are taken from the
        current folder; extra columns are kept as metadata); an ``(images, labels)`` pair:
        images ``[N, H, W, 3]`` or ``[N, H, W]`` RGB / grey in 0..255 (uint8, or floats that
        are rounded to 8 bits), labels ``[N]`` class names or indices into ``classes`` (or
        one-hot ``[N, K]``); or a ``tf.data.Dataset`` of ``(image, label)``, batched or not.
    classes : class names in the model's output order, as a list or a text file with one
        per line; default the sorted labels (required with integer labels).
    out : the run folder; default ``reports/<run_id>``. Asked again with the same inputs
        and settings, a run resumes (only the last step is repeated).
    quiet : no progress lines.
    **settings : config keys, ``select__margin=0.1`` or ``select={"margin": 0.1}``.

    Returns
    -------
    Audit of the run folder. Raises ``UsageError`` (one line naming the key or input) on
    bad input; the run's gates decide ``summary["status"]``, never an exception.
    """
    import audit.pipeline as pipeline
    from audit.config import resolve
    from audit.progress import Progress

    def configured(**inputs: Any):
        try:
            return resolve(None, (), {**_flags(settings), **inputs})
        except UsageError as exc:   # name the caller, not the CLI's "flag"
            raise UsageError(str(exc).replace("flag: ", "audit.run: ", 1)) from None

    first = configured(out=None if out is None else str(out))
    folder = first.run_dir / INPUT
    config = configured(run_id=first.run_id, out=str(first.run_dir), **{
        "model.path": _model_path(model, folder), "data.path": _data_path(data, classes, folder),
        "data.classes": _classes_path(classes, folder)})
    pipeline.run(config, log=Progress("quiet" if quiet else "text"))
    return Audit(config.run_dir)


def _flags(settings: dict) -> dict:
    """``select__margin=0.1`` / ``select={"margin": 0.1}`` / ``{"select.margin": 0.1}`` to dotted keys."""
    from audit.config import SECTIONS

    flat = {}
    for key, value in settings.items():
        key = key.replace("__", ".")
        items = value.items() if isinstance(value, dict) and key in SECTIONS else [(None, value)]
        for sub, v in items:
            flat[key if sub is None else f"{key}.{sub}"] = list(v) if isinstance(v, tuple) else v
    return flat


def _model_path(model: Any, folder: Path) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.path.abspath(model)
    import keras

    if not isinstance(model, keras.Model):
        raise UsageError(f"model: expected a .keras/.h5 path or a keras.Model (got {type(model).__name__})")
    digest = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    path, stamp = folder / "model.keras", folder / "model.sha256"
    if not (path.is_file() and stamp.is_file() and stamp.read_text() == digest.hexdigest()):
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "model.tmp.keras"
        model.save(tmp)
        tmp.replace(path)
        stamp.write_text(digest.hexdigest())
    return str(path)


def _classes_path(classes: Any, folder: Path) -> str | None:
    if classes is None or isinstance(classes, (str, os.PathLike)):
        return None if classes is None else os.path.abspath(classes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    return str(folder / "classes.txt")


def _data_path(data: Any, classes: Any, folder: Path) -> str:
    import pandas as pd

    if isinstance(data, (str, os.PathLike)):
        return os.path.abspath(data)
    if isinstance(data, pd.DataFrame):
        missing = [c for c in ("path", "label") if c not in data.columns]
        if missing:
            raise UsageError(f"data: the DataFrame lacks column(s) {', '.join(missing)} (needs at least path,label)")
        frame = data.reset_index(drop=True).copy()
        frame["path"] = [p if os.path.isabs(p) else os.path.abspath(p) for p in frame["path"].astype(str)]
        folder.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(folder / "manifest.parquet", index=False)
        return str(folder / "manifest.parquet")
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return _write_arrays(np.asarray(data[0]), np.asarray(data[1]), classes, folder)
    if type(data).__module__.startswith("tensorflow") and hasattr(data, "element_spec"):
        return _write_arrays(*_dataset_arrays(data), classes, folder)
    raise UsageError(f"data: expected a path, a DataFrame, (images, labels) arrays or a tf.data.Dataset "
                     f"(got {type(data).__name__})")


def _dataset_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of a ``tf.data.Dataset`` of ``(image, label)`` pairs, batched or not."""
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) < 2:
        raise UsageError("data: the tf.data.Dataset must yield (image, label) pairs")
    if spec[0].shape.rank == 4:
        dataset = dataset.unbatch()
    images, labels = [], []
    for x, y, *_ in dataset.as_numpy_iterator():
        images.append(x)
        labels.append(y)
    if not images:
        raise UsageError("data: the tf.data.Dataset is empty")
    return np.stack(images), np.stack(labels)


def _write_arrays(images: np.ndarray, labels: np.ndarray, classes: Any, folder: Path) -> str:
    """Write images as ``input/images/NNNNN.png`` and ``input/manifest.csv`` (path,label)."""
    import pandas as pd
    from PIL import Image

    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise UsageError(f"data: images must be [N, H, W, 3] or [N, H, W] (got shape {list(images.shape)})")
    if labels.ndim == 2:   # one-hot
        labels = labels.argmax(axis=1)
    if labels.ndim != 1 or len(labels) != len(images):
        raise UsageError(f"data: {len(images)} images but labels of shape {list(labels.shape)}")
    if images.dtype != np.uint8:
        low, high = float(np.min(images)), float(np.max(images))
        if low < 0 or high > 255:
            raise UsageError(f"data: image values must lie in 0..255 (got {low:g}..{high:g})")
        if high <= 1.0:
            raise UsageError("data: images look scaled to 0..1; pass them in 0..255 "
                             "(data__preprocess says what the model takes)")
        images = np.rint(images).astype(np.uint8)
    if labels.dtype.kind in "iu":
        if classes is None or isinstance(classes, (str, os.PathLike)):
            raise UsageError("data: integer labels need classes=[names in the model's output order]")
        if labels.min() < 0 or labels.max() >= len(classes):
            raise UsageError(f"data: label {int(labels.max())} is out of range for {len(classes)} classes")
        labels = np.array([classes[i] for i in labels])
    else:
        labels = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in labels])
    shutil.rmtree(folder / "images", ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    width = max(5, len(str(len(images) - 1)))
    paths = [f"images/{i:0{width}d}.png" for i in range(len(images))]
    for path, image in zip(paths, images):
        Image.fromarray(image).save(folder / path)
    pd.DataFrame({"path": paths, "label": labels}).to_csv(folder / "manifest.csv", index=False)
    return str(folder / "manifest.csv")


def _show(image: np.ndarray, cam: np.ndarray, title: str) -> None:
    """Display the image and the map over it side by side (IPython), enlarged to >= 192 px."""
    from IPython.display import display
    from PIL import Image

    from audit.report.plots import overlay

    rgb = np.clip(image, 0, 255).astype(np.uint8)
    pair = np.concatenate([rgb, np.full((rgb.shape[0], 4, 3), 255, np.uint8), overlay(rgb, cam)], axis=1)
    scale = max(1, -(-192 // rgb.shape[0]))
    print(title)
    display(Image.fromarray(pair).resize((pair.shape[1] * scale, pair.shape[0] * scale), Image.NEAREST))
