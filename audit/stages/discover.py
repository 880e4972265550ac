"""Discover: cluster the explanations of each confusion pair into findings.

Features
--------
Features are built per predicted class ``c``, over every selected image paired
with ``c`` (all true classes) plus the correctly classified contrast images of
``c``. Each image gets two blocks, each centred over that group and scaled so
that its mean squared row norm is ``1 - w`` and ``w`` (``w =
discovery.semantic_weight``):

* spatial: the positive part of its map area-pooled to ``discovery.grid`` squared
  cells and L1-normalised (where the model looks);
* semantic: its attribution-weighted pooled target-layer activations (computed by
  the attribute stage), standardised and reduced by PCA to
  ``discovery.pca_components`` (what the model sees there, wherever it sits).

Clustering
----------
The selected images of each pair ``true -> c`` (at least ``discovery.min_pair_size``
of them) are clustered twice on these features:

* spectral: a kNN graph (``discovery.neighbors``) with self-tuning Gaussian
  weights ``exp(-d_ij^2 / (s_i s_j))`` (``s_i`` = distance from image i to its
  farthest kept neighbour), its symmetric normalised Laplacian, the number of
  clusters ``k`` at the largest gap among its ``discovery.max_clusters + 1``
  smallest eigenvalues, and the rows of the first ``k`` eigenvectors assigned by
  CPQR (``cluster_qr``: deterministic, no k-means restarts);
* density (``discovery.density``): HDBSCAN with ``min_cluster_size =
  discovery.min_cluster_size``, for small tight groups spectral merges away.

The eigengap often splits one cue into parts (seen at different places or on
different backgrounds), so the ``k`` spectral clusters are merged bottom-up by
Ward's criterion on the semantic block and the tree is cut at its largest gap in
merge height (the clusters sit at height 0): parts that are much closer to each
other than to the rest merge, distinct groups stay apart. Those clusters and the
density clusters are the candidates; each of at least
``discovery.min_cluster_size`` images is scored, and the best-scored become
findings in order, skipping a candidate of which more than
``discovery.max_overlap`` is already in a finding.

Score
-----
::

    score     = support * coherence * (1 + causal)
    support   = (n_errors + 0.5 * n_low_confidence) / n_true
    coherence = 1 - spread / total     (clipped to [0, 1])
    causal    = clip(max(occlusion lift, transplant lift), 0, 1)   (0 until verified)

``n_true`` counts the readable images labelled ``true``, so ``support`` is the
share of the class the finding accounts for (errors count fully, near misses
half). ``spread`` is the members' unbiased mean squared distance to their
centroid in the space of attribution-weighted pooled activations standardised
over all selected and contrast images of the run, ``total`` that of all those
images (1 for a model without layers: no target layer): a coherent finding's members see the same thing (so
coherence is relative
to the run: in a one-pair deep dive whose predicted class is explained by the same
cue, a cue group is no more coherent than that class, and its tighter sub-groups
rank first). ``causal`` comes from
the verify stage (``audit.stages.verify``); this stage sets it to 0, so its
``score`` is the pre-score that decides which findings are verified. Large,
error-rich, coherent groups rank first, and a verified causal cue can double its
score.

Each finding lists its members most central first and carries its pair's
Laplacian eigenvalues (``eigenvalues``, ``eigengap_k``) for the report.

Findings are ``audit.findings.Finding`` records; their stable IDs and ``cue``
(where the members' attribution sits) come from ``audit.findings.assign_ids``.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd
from threadpoolctl import ThreadpoolController

from audit.clustering import density_clusters, distances, pca, spectral_clusters, ward_cut
from audit.config import Config
from audit.findings import Finding, assign_ids, finding_score, ranked
from audit.maps import area_pool

# Paid when the module loads rather than in the first audit: the BLAS thread pools of the
# process are looked up once (a scan of every loaded library, tens of ms in a process with
# TensorFlow; limiting them is then cheap).
_THREAD_POOLS = ThreadpoolController()
N_EIGENVALUES_SHOWN = 16       # eigenvalues kept per pair for the report's plot
TABLE_COLUMNS = ["row", "path", "pair", "true_label", "predicted_label", "reason", "cluster", "finding_id",
                 "spectral_cluster", "density_cluster", "centrality", "is_contrast", "x", "y"]


def discover(config: Config, predictions: pd.DataFrame, selection: pd.DataFrame,
             map_rows: np.ndarray, maps: np.ndarray,
             feature_rows: np.ndarray, features: np.ndarray) -> tuple[pd.DataFrame, list[Finding]]:
    """Cluster each pair; return ``(discovery table, findings sorted by score)``.

    Parameters
    ----------
    config : Config
        ``discovery.*`` settings.
    predictions, selection : pd.DataFrame
        The predict and select stage tables.
    map_rows, maps : np.ndarray
        int ``[n]`` prediction row ids and float ``[n, H, W]`` maps of the
        first attribution method, at any resolution (the pipeline passes their positive
        part already pooled to ``discovery.grid`` squared cells).
    feature_rows, features : np.ndarray
        int ``[m]`` row ids and float ``[m, C]`` attribution-weighted pooled activations.

    Returns
    -------
    (pd.DataFrame, list of Finding)
        The discovery table (one row per clustered or contrast image, ``TABLE_COLUMNS``)
        and the findings, ranked (``rank`` 1 = highest ``score``).
    """
    with _THREAD_POOLS.limit(limits=1):  # small matrices: BLAS threads only add overhead (and stall under load)
        return _discover(config, predictions, selection, map_rows, maps, feature_rows, features)


def _discover(config: Config, predictions: pd.DataFrame, selection: pd.DataFrame,
              map_rows: np.ndarray, maps: np.ndarray,
              feature_rows: np.ndarray, features: np.ndarray) -> tuple[pd.DataFrame, list[Finding]]:
    map_of = {int(r): i for i, r in enumerate(map_rows)}
    feat_of = {int(r): i for i, r in enumerate(feature_rows)}
    labels = predictions["label"].to_numpy(dtype=object)[predictions["error"].isna().to_numpy()]
    names, counts = np.unique(labels.astype(str), return_counts=True)
    class_size = dict(zip(names.tolist(), counts.tolist()))
    sel = _Selection(selection)
    content = _Content(features[[feat_of[r] for r in sel.row]], sel.row)
    parts, findings = [], []
    for predicted in sorted(set(sel.pair_label[~sel.contrast].tolist())):
        into = np.flatnonzero(~sel.contrast & (sel.pair_label == predicted))
        contrast = np.flatnonzero(sel.contrast & (sel.pair_label == predicted))
        group = np.concatenate([into, contrast])
        x, n_spatial = pair_features(maps[[map_of[r] for r in sel.row[group]]],
                                     features[[feat_of[r] for r in sel.row[group]]], config)
        xy = _embed2d(x)
        for true in sorted(set(sel.true_label[into].tolist())):
            at = np.flatnonzero(sel.true_label[into] == true)
            part, found = _discover_pair(config, sel, into[at], x[at], n_spatial, xy[at], content, true, predicted,
                                         int(class_size.get(true, 0)))
            parts.append(part)
            findings.extend(found)
        if len(contrast):
            parts.append(_part(sel, contrast, f"* -> {predicted}", sel.true_label[contrast], predicted,
                               xy[len(into):], contrast=True))
    findings = ranked(assign_ids(findings, maps, map_of))
    table = pd.DataFrame({c: pd.Series(np.concatenate([p[c] for p in parts]) if parts else [],
                                       dtype=object if c == "finding_id" else None) for c in TABLE_COLUMNS})
    return assign_findings(table, findings), findings


class _Selection:
    """The columns of the selection table that discovery reads, as numpy arrays."""

    def __init__(self, selection: pd.DataFrame):
        self.row = selection["row"].to_numpy(np.int64)
        self.path = selection["path"].to_numpy(dtype=object).astype(str)
        self.reason = selection["reason"].to_numpy(dtype=object).astype(str)
        self.true_label = selection["true_label"].to_numpy(dtype=object).astype(str)
        self.pair_label = selection["pair_label"].to_numpy(dtype=object).astype(str)
        self.contrast = self.reason == "contrast"


def pair_features(maps: np.ndarray, features: np.ndarray, config: Config) -> tuple[np.ndarray, int]:
    """Combined features ``[n, G*G + P]`` of a group of images and the width of the
    spatial block (see the module docstring).

    ``maps`` ``[n, H, W]``, ``features`` ``[n, C]``. Each block is centred over the
    group and scaled so that its mean squared row norm is ``1 - w`` (spatial) and
    ``w`` (semantic): the squared distance to the group mean averages 1. ``config`` gives
    ``w`` (``discovery.semantic_weight``), ``G`` (``discovery.grid``) and ``P`` (at most
    ``discovery.pca_components``).
    """
    w = config.discovery.semantic_weight if features.shape[1] else 0.0   # no target layer: the maps alone
    spatial = spatial_features(maps, config.discovery.grid)
    semantic = semantic_features(features, config.discovery.pca_components) if features.shape[1] else \
        np.zeros((len(maps), 0))
    blocks = [np.sqrt(1.0 - w) * _scaled(spatial), np.sqrt(w) * _scaled(semantic)]
    return np.hstack(blocks), spatial.shape[1]


def spatial_features(maps: np.ndarray, grid: int) -> np.ndarray:
    """Positive part of each of ``maps`` ``[n, H, W]`` area-pooled to ``grid x grid``, L1-normalised,
    ``[n, grid * grid]``.

    An all-zero map gives the uniform vector.
    """
    pooled = area_pool(np.maximum(maps, 0.0), grid, grid).reshape(len(maps), -1)
    total = pooled.sum(axis=1, keepdims=True)
    return np.where(total > 0, pooled / np.where(total > 0, total, 1.0), 1.0 / max(pooled.shape[1], 1))


def semantic_features(features: np.ndarray, components: int) -> np.ndarray:
    """``features`` ``[n, C]`` standardised per column, reduced by PCA to at most ``components`` dimensions
    (and ``n - 1``): ``[n, P]``."""
    features = np.asarray(features, np.float64)
    std = features.std(axis=0)
    scaled = (features - features.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)
    return pca(scaled, min(components, scaled.shape[0] - 1, scaled.shape[1]))


def _scaled(x: np.ndarray) -> np.ndarray:
    """``x`` centred, scaled to mean squared row norm 1 (zero when constant)."""
    centred = x - x.mean(axis=0, keepdims=True)
    rms = np.sqrt(np.mean(np.sum(centred ** 2, axis=1)))
    return centred / rms if rms > 1e-12 else centred


def _embed2d(x: np.ndarray) -> np.ndarray:
    if len(x) < 3:
        return np.zeros((len(x), 2))
    out = pca(x, min(2, x.shape[1], len(x) - 1))
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def _discover_pair(config: Config, sel: _Selection, members: np.ndarray, x: np.ndarray, n_spatial: int,
                   xy: np.ndarray, content: "_Content", true: str, predicted: str,
                   n_true: int) -> tuple[dict, list[Finding]]:
    """Cluster one pair's ``members`` (positions in ``sel``); return its table part and findings."""
    part = _part(sel, members, f"{true} -> {predicted}", np.full(len(members), true, object), predicted, xy,
                 contrast=False)
    if len(members) < config.discovery.min_pair_size:
        return part, []
    min_size = config.discovery.min_cluster_size
    d = distances(x)
    spectral, values, k = spectral_clusters(d, config.discovery.neighbors, config.discovery.max_clusters)
    density = density_clusters(d, min_size) if config.discovery.density else np.full(len(x), -1)
    part["spectral_cluster"] = spectral
    part["density_cluster"] = density
    leaves = [np.flatnonzero(spectral == c) for c in np.unique(spectral)]
    candidates = ward_cut(x[:, n_spatial:], leaves)
    candidates += [np.flatnonzero(density == c) for c in sorted(set(density.tolist()) - {-1})]
    shown = [round(float(v), 6) for v in values[:N_EIGENVALUES_SHOWN]]
    scored, seen = [], set()
    for g in candidates:
        key = tuple(sorted(g.tolist()))
        if len(g) < min_size or key in seen:
            continue
        seen.add(key)
        finding = dataclasses.replace(_finding(sel, members[g], x[g], content, true, predicted, n_true,
                                               config.report.exemplars), eigenvalues=tuple(shown), eigengap_k=k)
        scored.append((finding_score(finding), len(g), finding.id, g, finding))
    scored.sort(key=lambda c: (-c[0], -c[1], c[2]))
    kept, covered = [], np.zeros(len(x), bool)
    for _, _, _, g, finding in scored:
        if covered[g].mean() <= config.discovery.max_overlap:
            kept.append(finding)
            covered[g] = True
    return part, kept


def _part(sel: _Selection, at: np.ndarray, pair: str, true: np.ndarray, predicted: str, xy: np.ndarray,
          contrast: bool) -> dict:
    """The discovery-table columns of the selection rows ``at``."""
    n = len(at)
    return {"row": sel.row[at], "path": sel.path[at], "pair": np.full(n, pair, object),
            "true_label": np.asarray(true, object), "predicted_label": np.full(n, predicted, object),
            "reason": sel.reason[at], "cluster": np.full(n, -1), "finding_id": np.full(n, None, object),
            "spectral_cluster": np.full(n, -1), "density_cluster": np.full(n, -1),
            "centrality": np.full(n, np.nan), "is_contrast": np.full(n, contrast), "x": xy[:, 0], "y": xy[:, 1]}


# ---------------------------------------------------------------- findings and ranking

class _Content:
    """The attribution-weighted pooled activations of every selected and contrast image
    of the run, standardised per channel over them all: the reference for coherence."""

    def __init__(self, features: np.ndarray, rows: np.ndarray):
        features = np.asarray(features, np.float64)
        std = features.std(axis=0) if len(features) else np.ones(features.shape[1:])
        centre = features.mean(axis=0) if len(features) else 0.0
        self.z = (features - centre) / np.where(std > 1e-12, std, 1.0)
        self.total = float(np.sum(self.z ** 2, axis=1).mean()) if len(self.z) else 0.0
        self.index = {int(r): i for i, r in enumerate(rows)}

    def coherence(self, rows: np.ndarray) -> float:
        """``1 - spread / total`` clipped to [0, 1]: ``spread`` is the members' unbiased mean
        squared distance to their centroid, ``total`` that of all images to their mean. 1 (no
        say in the score) when there are no features: a model without layers has no target layer."""
        if not self.z.shape[1]:
            return 1.0
        z = self.z[[self.index[int(r)] for r in rows]]
        m = len(z)
        if m < 2 or self.total <= 0:
            return 0.0
        spread = np.sum((z - z.mean(axis=0)) ** 2, axis=1).mean() * m / (m - 1)
        return float(np.clip(1.0 - spread / self.total, 0.0, 1.0))


def _finding(sel: _Selection, at: np.ndarray, x: np.ndarray, content: _Content, true: str, predicted: str,
             n_true: int, n_exemplars: int) -> Finding:
    rows = sel.row[at]
    coherence = content.coherence(rows)
    n_errors = int(np.sum(sel.reason[at] == "misclassified"))
    n_unsure = int(np.sum(sel.reason[at] == "low_confidence"))
    n_right = int(np.sum(sel.reason[at] == "strategy"))   # correct predictions (audit.stages.strategies)
    support = (n_errors + 0.5 * n_unsure + 0.5 * n_right) / max(n_true, 1)
    centrality = 1.0 - np.sum((x - x.mean(axis=0)) ** 2, axis=1)
    order = np.argsort(-centrality, kind="stable")
    paths = sel.path[at][order].tolist()
    # A key of the membership, only to order equal-scored candidates and seed their verification
    # until ``assign_ids`` gives the kept findings their stable IDs.
    digest = hashlib.sha1("\n".join([true, predicted, *sorted(paths)]).encode()).hexdigest()[:8]
    return Finding(id=f"F-{digest}", true_label=true, predicted_label=predicted, members=tuple(paths),
                   rows=tuple(int(r) for r in rows[order]), n_errors=n_errors, n_low_confidence=n_unsure,
                   support=round(float(support), 6), coherence=round(coherence, 6),
                   centrality=tuple(round(float(c), 4) for c in centrality[order]),
                   exemplars=tuple(paths[:n_exemplars]))


def assign_findings(table: pd.DataFrame, findings: list[Finding]) -> pd.DataFrame:
    """Set each row's ``finding_id``, ``cluster`` (the finding's position in ``findings``,
    unique across pairs) and ``centrality`` from the best-ranked finding that holds it
    (findings ranked; contrast rows are never members), in a copy of the discovery ``table``."""
    table = table.copy()
    finding_id = np.full(len(table), None, object)
    cluster = np.full(len(table), -1)
    centrality = np.full(len(table), np.nan)
    position = {k: i for i, k in enumerate(zip(table["pair"].tolist(), table["row"].astype(int).tolist()))}
    for index, f in reversed(list(enumerate(findings))):
        pair = f"{f.true_label} -> {f.predicted_label}"
        for r, c in zip(f.rows, f.centrality or [np.nan] * len(f.rows)):
            i = position.get((pair, int(r)))
            if i is not None:
                finding_id[i], cluster[i], centrality[i] = f.id, index, c
    table["finding_id"] = pd.Series(finding_id, index=table.index, dtype=object)
    table["cluster"], table["centrality"] = cluster, centrality
    return table
