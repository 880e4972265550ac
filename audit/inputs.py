"""Everything a run checks before TensorFlow is imported: required settings, the model file's
name, the nightly inputs, the data manifest and the class list.

A bad config or input stops the run here, with exit 2 and one line, in well under
three seconds (TensorFlow's import alone takes 10 to 40 s on a loaded machine). What
needs the model itself (its number of outputs, a target layer, a method's parameters)
is checked by the pipeline once the model is loaded, still before any work.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from audit import nightly
from audit.config import Config
from audit.data import load_classes, load_manifest, with_class_names
from audit.errors import UsageError
from audit.model_files import checked_path


@dataclass(frozen=True)
class Prepared:
    """A run's checked inputs: the manifest ``frame`` (``path``, ``label``, metadata), the ``root``
    its paths are relative to, the ``classes`` in output order and the ``nightly`` inputs."""

    frame: pd.DataFrame
    root: str | Path
    classes: list[str]
    nightly: nightly.Inputs


def prepare(config: Config) -> Prepared:
    """Check the config's inputs without TensorFlow; ``UsageError`` (one line) on the first problem.

    Parameters
    ----------
    config : the resolved run config (``model.path``, ``data.*``, ``select.pair``,
        ``report.templates``, ``baseline.*``, ``triage.path``).
    """
    for key, flag, value in (("model.path", "--model", config.model.path), ("data.path", "--data", config.data.path)):
        if value is None:
            raise UsageError(f"`{key}` is required ({flag} or {key} in the config)")
    checked_path(config.model.path)
    inputs = nightly.prepare(config)
    frame, root = load_manifest(config.data.path)
    classes = load_classes(config.data.classes, frame, config.data.path)
    frame = with_class_names(frame, classes, config.data.path)
    unknown = ~frame["label"].isin(classes)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise UsageError(f"{config.data.path}: row {i} ({frame['path'][i]}) has label "
                         f"{frame['label'][i]!r}, not among the classes ({int(unknown.sum())} such rows)")
    conflicting = frame.drop_duplicates(["path", "label"]).duplicated("path")
    if conflicting.any():
        path = frame["path"][conflicting].iloc[0]
        raise UsageError(f"{config.data.path}: {path} is listed with different labels")
    if config.report.templates is not None and not Path(config.report.templates).is_dir():
        raise UsageError(f"`report.templates` {config.report.templates}: no such folder")
    if config.select.pair is not None:
        for name in config.select.pair.split(":"):
            if name.strip() not in classes:
                raise UsageError(f"`select.pair`: {name.strip()!r} is not among the classes")
    return Prepared(frame, root, classes, inputs)
