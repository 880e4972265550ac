"""Discover: cluster the explanations of each confusion pair into findings.

For a pair ``true -> predicted`` (its misclassified and low-confidence images)
each image is described by two blocks, each scaled to unit length so that they
weigh the same:

* spatial: the positive part of its map pooled to ``discovery.grid`` squared cells,
  L1-normalised (where the model looks);
* semantic: its attention-pooled target-layer activations, standardised and
  reduced by PCA fitted on the pair together with the contrast images of the
  predicted class (what the model sees there, wherever it sits).

The images are clustered spectrally on a symmetric kNN graph
(``discovery.neighbors``); the number of clusters is the largest eigengap of the
normalised graph Laplacian among the first ``discovery.max_clusters``
eigenvalues. Clusters smaller than ``discovery.min_cluster_size`` are dropped.

Each remaining cluster is a finding, scored

    score = (n_errors + 0.5 * n_low_confidence) / n_true_class * coherence

where ``n_true_class`` counts the readable images labelled ``true`` and
``coherence`` is the members' mean cosine similarity to their centroid (0..1):
large groups of errors, relative to their class, that share one explanation
rank first.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from scipy.sparse.csgraph import laplacian
from sklearn.cluster import SpectralClustering
from sklearn.decomposition import PCA
from sklearn.neighbors import kneighbors_graph
from sklearn.preprocessing import StandardScaler

from audit.config import Config
from audit.stages.attribute import area_pool


def discover(config: Config, predictions: pd.DataFrame, selection: pd.DataFrame,
             map_rows: np.ndarray, maps: np.ndarray,
             feature_rows: np.ndarray, features: np.ndarray) -> tuple[pd.DataFrame, list[dict]]:
    """Cluster each pair; return ``(discovery table, findings sorted by score)``.

    ``maps`` ``[n, H, W]`` and ``features`` ``[m, C]`` are indexed by their ``*_rows``
    (prediction row ids).
    """
    map_of = {int(r): i for i, r in enumerate(map_rows)}
    feat_of = {int(r): i for i, r in enumerate(feature_rows)}
    valid = predictions[predictions["error"].isna()]
    class_size = valid.groupby("label").size()
    tables, findings = [], []
    candidates = selection[selection["reason"] != "contrast"]
    for (true, predicted), members in candidates.groupby(["true_label", "pair_label"], sort=True):
        contrast = selection[(selection["reason"] == "contrast") & (selection["pair_label"] == predicted)]
        group = pd.concat([members, contrast])
        spatial = _spatial(maps[[map_of[int(r)] for r in group["row"]]], config["discovery.grid"])
        semantic = _semantic(features[[feat_of[int(r)] for r in group["row"]]], config["discovery.pca_components"])
        x = np.hstack([_unit_rows(spatial), _unit_rows(semantic)]) / np.sqrt(2.0)
        is_member = np.arange(len(group)) < len(members)
        labels = np.full(len(group), -1)
        if len(members) >= config["discovery.min_pair_size"]:
            labels[is_member] = _cluster(x[is_member], config)
        xy = _embed2d(x)
        table = pd.DataFrame({
            "row": group["row"].to_numpy(), "path": group["path"].to_numpy(),
            "pair": f"{true} -> {predicted}", "true_label": true, "predicted_label": predicted,
            "reason": group["reason"].to_numpy(), "cluster": labels, "finding_id": None,
            "is_contrast": ~is_member, "x": xy[:, 0], "y": xy[:, 1],
        })
        for cluster in sorted(set(labels[is_member]) - {-1}):
            inside = labels == cluster
            finding = _finding(table[inside], x[inside], true, predicted, int(class_size.get(true, 0)),
                               config["report.exemplars"])
            table.loc[inside, "finding_id"] = finding["id"]
            findings.append(finding)
        tables.append(table)
    findings.sort(key=lambda f: (-f["score"], f["id"]))
    for rank, finding in enumerate(findings, start=1):
        finding["rank"] = rank
    columns = ["row", "path", "pair", "true_label", "predicted_label", "reason", "cluster", "finding_id",
               "is_contrast", "x", "y"]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)
    return table, findings


def _spatial(maps: np.ndarray, grid: int) -> np.ndarray:
    pooled = np.stack([area_pool(np.maximum(m, 0.0), grid, grid).ravel() for m in maps])
    total = pooled.sum(axis=1, keepdims=True)
    return np.where(total > 0, pooled / np.where(total > 0, total, 1.0), 1.0 / pooled.shape[1])


def _semantic(features: np.ndarray, components: int) -> np.ndarray:
    scaled = StandardScaler().fit_transform(features)
    n = min(components, scaled.shape[0] - 1, scaled.shape[1])
    return PCA(n_components=n, random_state=0).fit_transform(scaled) if n >= 1 else scaled


def _unit_rows(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=0, keepdims=True)
    norm = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.where(norm > 0, norm, 1.0)


def _embed2d(x: np.ndarray) -> np.ndarray:
    if len(x) < 3:
        return np.zeros((len(x), 2))
    out = PCA(n_components=2, random_state=0).fit_transform(x)
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def _cluster(x: np.ndarray, config: Config) -> np.ndarray:
    """Spectral clustering of the rows of ``x`` with k from the eigengap; small clusters -> -1."""
    n = len(x)
    k_nn = min(config["discovery.neighbors"], n - 1)
    graph = kneighbors_graph(x, k_nn, mode="connectivity", include_self=False)
    graph = ((graph + graph.T) > 0).astype(float)
    k = eigengap_k(graph.toarray(), min(config["discovery.max_clusters"], n - 1))
    if k <= 1:
        labels = np.zeros(n, int)
    else:
        labels = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=config["seed"],
                                    assign_labels="cluster_qr").fit_predict(graph.toarray())
    sizes = np.bincount(labels)
    return np.where(sizes[labels] >= config["discovery.min_cluster_size"], labels, -1)


def eigengap_k(affinity: np.ndarray, k_max: int) -> int:
    """Number of clusters: position of the largest gap among the smallest ``k_max + 1``
    eigenvalues of the symmetric normalised Laplacian of ``affinity``."""
    if k_max <= 1:
        return 1
    values = np.sort(np.linalg.eigvalsh(laplacian(affinity, normed=True)))[: k_max + 1]
    return int(np.argmax(np.diff(values)) + 1)


def _finding(members: pd.DataFrame, x: np.ndarray, true: str, predicted: str, n_true: int,
             n_exemplars: int) -> dict:
    centroid = x.mean(axis=0)
    norms = np.linalg.norm(x, axis=1) * max(np.linalg.norm(centroid), 1e-12)
    cosine = (x @ centroid) / np.where(norms > 0, norms, 1.0)
    coherence = float(np.clip(cosine.mean(), 0.0, 1.0))
    n_errors = int((members["reason"] == "misclassified").sum())
    n_unsure = int((members["reason"] == "low_confidence").sum())
    score = (n_errors + 0.5 * n_unsure) / max(n_true, 1) * coherence
    paths = members["path"].tolist()
    digest = hashlib.sha1("\n".join([true, predicted, *sorted(paths)]).encode()).hexdigest()[:8]
    closest = np.argsort(-cosine, kind="stable")[:n_exemplars]
    return {
        "id": f"F-{digest}", "rank": 0, "true_label": true, "predicted_label": predicted,
        "size": len(members), "score": round(float(score), 6), "members": paths,
        "rows": members["row"].astype(int).tolist(), "n_errors": n_errors, "n_low_confidence": n_unsure,
        "coherence": round(coherence, 6), "exemplars": [paths[i] for i in closest],
    }
