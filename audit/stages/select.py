"""Select: the images worth explaining.

* ``misclassified``: predicted class differs from the label; pair ``label -> predicted``,
  most confidently wrong first.
* ``low_confidence``: correct, but top-1 minus top-2 probability below
  ``select.margin``; pair ``label -> runner-up``, smallest margin first.
* ``contrast``: correctly and confidently classified images of each class that
  appears on the predicted side of a selected pair (``select.contrast_per_class``,
  drawn at random with ``seed``); discovery compares errors against them.

At most ``select.max_per_pair`` images per pair (misclassified before low
confidence). ``select.pair = "true:predicted"`` keeps that one pair only.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from audit.config import Config


def select(config: Config, predictions: pd.DataFrame) -> pd.DataFrame:
    """Selected rows of ``predictions`` with ``reason``, ``true_label``, ``pair_label``, ``pair``.

    Parameters
    ----------
    config : audit.config.Config
        ``select.*`` and ``seed`` (the contrast draw).
    predictions : pd.DataFrame
        One row per image (``audit.stages.predict``): ``row``, ``label``, ``label_idx``
        (-1: not a known class), ``predicted``, ``runner_up``, ``confidence``,
        ``margin`` (top-1 minus top-2 probability, 0..1) and ``error`` (None when read).

    Returns
    -------
    pd.DataFrame
        The selected rows sorted by ``row``, index reset; ``reason`` is
        ``misclassified``, ``low_confidence`` or ``contrast``; ``pair`` is
        ``"true_label -> pair_label"``.
    """
    valid = predictions[predictions["error"].isna() & (predictions["label_idx"] >= 0)]
    wrong = valid[valid["predicted"] != valid["label"]].assign(reason="misclassified", pair_label=lambda f: f["predicted"])
    wrong = wrong.sort_values("confidence", ascending=False, kind="stable")
    right = valid[valid["predicted"] == valid["label"]]
    unsure = right[right["margin"] < config.select.margin].assign(
        reason="low_confidence", pair_label=lambda f: f["runner_up"])
    unsure = unsure.sort_values("margin", kind="stable")
    chosen = pd.concat([wrong, unsure]).assign(true_label=lambda f: f["label"])
    if config.select.pair is not None:
        true, predicted = (part.strip() for part in config.select.pair.split(":"))
        chosen = chosen[(chosen["true_label"] == true) & (chosen["pair_label"] == predicted)]
    chosen = chosen.groupby(["true_label", "pair_label"], sort=False, group_keys=False).head(config.select.max_per_pair)
    contrast = _contrast(config, right.drop(index=unsure.index), sorted(chosen["pair_label"].unique()))
    out = pd.concat([chosen, contrast])
    out["pair"] = out["true_label"] + " -> " + out["pair_label"]
    return out.sort_values("row", kind="stable").reset_index(drop=True)


def _contrast(config: Config, confident: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(config.seed)
    parts = []
    for name in classes:
        pool = confident[confident["label"] == name]
        n = min(config.select.contrast_per_class, len(pool))
        if n:
            parts.append(pool.iloc[np.sort(rng.choice(len(pool), n, replace=False))])
    if not parts:
        return confident.iloc[:0].assign(reason="contrast", true_label="", pair_label="")
    picked = pd.concat(parts)
    return picked.assign(reason="contrast", true_label=picked["label"], pair_label=picked["label"])
