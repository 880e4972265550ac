"""Strategies: what the model relies on when it is right (SpRAy's original setting).

Per class ``C``, the correctly classified images (all of them up to
``strategies.max_per_class``, else a sample spread evenly over the confidence
ranking) are clustered exactly like an error pair (``audit.stages.discover``), on
the predict stage's Grad-CAM of ``C`` pooled to ``discovery.grid`` cells and its
attention-pooled target-layer features: no extra pass over the data. Each cluster
is a candidate ``Finding`` with ``kind="strategy"`` and ``true_label ==
predicted_label == C``; its support counts its members half, like near misses,
over the class's readable images (a strategy is a risk, not yet an error):

    support = 0.5 * n_members / n_C

Only compact candidates are worth an intervention: members' mean ``focus``
(``audit.cues.cue_descriptor``) of at least ``strategies.min_focus``, the
``strategies.max_tested`` best pre-scored over all classes. The verify stage
hides their region and pastes it onto other classes' clean images; a strategy is
kept only when both tests beat a random region of the same area by
``strategies.min_lift`` (``kept``), so a clean model reports none.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from audit.config import Config
from audit.findings import Finding, Verification, assign_ids, ranked
from audit.stages.discover import _THREAD_POOLS, _Content, _discover_pair, _embed2d, _Selection, pair_features


def strategy_pool(config: Config, predictions: pd.DataFrame) -> pd.DataFrame:
    """The correct predictions clustered per class, as a selection-like table.

    Parameters
    ----------
    config : the run's settings (``strategies.*``).
    predictions : the predict stage's table (``row``, ``path``, ``label``, ``predicted``,
        ``confidence``, ``error``).

    Returns
    -------
    Rows with ``row``, ``path``, ``reason`` ("strategy"), ``true_label`` and ``pair_label``
    (both the class), at most ``strategies.max_per_class`` per class: above that, the
    images at evenly spaced ranks of confidence (so confident and hesitant ones both count).
    """
    valid = predictions[predictions["error"].isna() & (predictions["predicted"] == predictions["label"])]
    parts = []
    for _, group in valid.groupby("label", sort=True):
        group = group.sort_values("confidence", kind="stable")
        n = config.strategies.max_per_class
        if len(group) > n:
            group = group.iloc[np.unique(np.linspace(0, len(group) - 1, n).round().astype(int))]
        parts.append(group)
    pool = pd.concat(parts) if parts else valid.iloc[:0]
    return pd.DataFrame({"row": pool["row"].to_numpy(np.int64), "path": pool["path"].astype(str).to_numpy(),
                         "reason": "strategy", "true_label": pool["label"].astype(str).to_numpy(),
                         "pair_label": pool["label"].astype(str).to_numpy()})


def discover_strategies(config: Config, predictions: pd.DataFrame, pool: pd.DataFrame, cam_rows: np.ndarray,
                        cams: np.ndarray, features: np.ndarray) -> list[Finding]:
    """Candidate strategy findings, best pre-scored first, the compact ones worth testing.

    Parameters
    ----------
    config : the run's settings (``strategies.*``, ``discovery.*``).
    predictions : the predict stage's table.
    pool : ``strategy_pool``'s table.
    cam_rows, cams : int ``[n]`` row ids and float ``[n, G, G]`` Grad-CAMs of the pool's
        images (predicted class), pooled to ``discovery.grid`` cells.
    features : float ``[n, c]`` attention-pooled features of the same rows.

    Returns
    -------
    At most ``strategies.max_tested`` findings (``kind="strategy"``, stable IDs and ``cue``
    set), ranked by pre-score; verification decides which are kept (``kept``).
    """
    if not len(pool) or not len(cam_rows):
        return []
    with _THREAD_POOLS.limit(limits=1):
        at = {int(r): i for i, r in enumerate(cam_rows)}
        pool = pool[pool["row"].isin(at)].reset_index(drop=True)
        sel = _Selection(pool)
        index = np.array([at[int(r)] for r in sel.row], int)
        content = _Content(features[index], sel.row)
        labels = predictions.loc[predictions["error"].isna(), "label"].astype(str)
        found = []
        for name in sorted(set(sel.true_label.tolist())):
            members = np.flatnonzero(sel.true_label == name)
            if len(members) < config.discovery.min_pair_size:
                continue
            x, n_spatial = pair_features(cams[index[members]], features[index[members]], config)
            _, kept = _discover_pair(config, sel, members, x, n_spatial, _embed2d(x), content, name, name,
                                     int((labels == name).sum()))
            found.extend(dataclasses.replace(f, kind="strategy") for f in kept)
        found = assign_ids(found, cams, at)
        compact = [f for f in ranked(found) if f.cue.focus >= config.strategies.min_focus]
        return compact[:config.strategies.max_tested]


def kept(config: Config, findings: list[Finding]) -> tuple[list[Finding], int]:
    """The verified ``findings`` without the strategies that intervention did not confirm (``config``:
    ``strategies.min_lift``).

    A strategy stays when hiding its region and pasting it both beat a random region by
    at least ``strategies.min_lift`` with ``lift - 3 se > 0`` (``Verification.confirmed``),
    or when one of its property tests does. Returns ``(findings, number dropped)``.
    """
    out = [f for f in findings if f.kind != "strategy" or _confirmed(config, f)]
    return out, len(findings) - len(out)


def _confirmed(config: Config, finding: Finding) -> bool:
    v: Verification | None = finding.verification
    if v is None or not v.verified:
        return False
    threshold = config.strategies.min_lift
    region = all(t is not None and t.confirmed(threshold) for t in (v.occlusion, v.transplant))
    threshold = max(threshold, config.verify.min_property_lift)
    return region or any(p.test is not None and p.test.confirmed(threshold) for p in finding.properties)
