"""Clustering of feature rows: the math behind discovery, on plain numpy arrays.

* ``spectral_clusters``: a kNN graph with self-tuning Gaussian weights, its normalised
  Laplacian, ``k`` at the largest eigengap and the eigenvector rows assigned by
  column-pivoted QR (deterministic);
* ``density_clusters``: HDBSCAN on precomputed distances;
* ``ward_cut``: clusters merged bottom-up by Ward's criterion, cut at the largest gap;
* ``pca``: principal-axis scores with fixed signs.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import qr, svd
from sklearn.cluster import HDBSCAN

# scikit-learn's first fit looks up its dataframe plugins (a few ms): paid when the module
# loads rather than in the first audit
HDBSCAN(min_cluster_size=2, metric="precomputed", copy=True).fit(np.zeros((2, 2)))


def pca(x: np.ndarray, n: int) -> np.ndarray:
    """Scores of the centred rows of ``x`` on their ``n`` principal axes.

    Eigen-decomposition of the smaller Gram or covariance matrix; signs fixed so the
    largest loading of each axis is positive.

    Parameters
    ----------
    x : np.ndarray
        ``[rows, features]``.
    n : int
        Number of axes; ``n < 1`` returns ``x`` centred.

    Returns
    -------
    np.ndarray
        ``[rows, n]`` (``[rows, features]`` for ``n < 1``).
    """
    x = x - x.mean(axis=0, keepdims=True)
    if n < 1:
        return x
    if x.shape[0] < x.shape[1]:
        values, vectors = np.linalg.eigh(x @ x.T)
        scores = vectors[:, ::-1][:, :n] * np.sqrt(np.maximum(values[::-1][:n], 0.0))
        axes = x.T @ scores
    else:
        _, vectors = np.linalg.eigh(x.T @ x)
        axes = vectors[:, ::-1][:, :n]
        scores = x @ axes
    signs = np.sign(axes[np.argmax(np.abs(axes), axis=0), np.arange(axes.shape[1])])
    return scores * np.where(signs == 0, 1.0, signs)


def distances(x: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[n, n]`` between the rows of ``x`` ``[n, features]`` (zero diagonal).

    Parameters
    ----------
    x : np.ndarray
        ``[n, features]``.
    """
    sq = np.sum(x * x, axis=1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0))
    np.fill_diagonal(d, 0.0)
    return d


def affinity(d: np.ndarray, neighbors: int) -> np.ndarray:
    """Symmetric kNN affinity ``[n, n]`` from distances ``d``, with self-tuning Gaussian
    weights (zero diagonal).

    ``W_ij = exp(-d_ij^2 / (s_i s_j))`` when ``j`` is among the ``neighbors`` nearest of
    ``i`` or ``i`` among those of ``j``; ``s_i`` is the distance from ``i`` to its
    farthest kept neighbour.

    Parameters
    ----------
    d : np.ndarray
        ``[n, n]`` distances.
    neighbors : int
        Neighbours per point (capped at ``n - 1``; below 1 the affinity is all zero).
    """
    n = len(d)
    k = min(neighbors, n - 1)
    if k < 1:
        return np.zeros((n, n))
    off = d + np.diag(np.full(n, np.inf))
    nearest = np.argsort(off, axis=1, kind="stable")[:, :k]
    scale = np.maximum(d[np.arange(n), nearest[:, -1]], 1e-12)
    keep = np.zeros((n, n), bool)
    keep[np.repeat(np.arange(n), k), nearest.ravel()] = True
    keep |= keep.T
    return np.where(keep, np.exp(-d ** 2 / (scale[:, None] * scale[None, :])), 0.0)


def spectrum(w: np.ndarray, n_vectors: int) -> tuple[np.ndarray, np.ndarray]:
    """Spectrum of the symmetric normalised Laplacian ``I - D^-1/2 W D^-1/2`` of ``w``.

    Parameters
    ----------
    w : np.ndarray
        ``[n, n]`` symmetric affinity.
    n_vectors : int
        Eigenvectors to return.

    Returns
    -------
    (np.ndarray, np.ndarray)
        All ``n`` eigenvalues, ascending, clipped to [0, 2]; the first ``n_vectors``
        eigenvectors ``[n, n_vectors]``.
    """
    degree = w.sum(axis=1)
    inv = np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)), 0.0)
    lap = np.eye(len(w)) - inv[:, None] * w * inv[None, :]
    values, vectors = np.linalg.eigh((lap + lap.T) / 2.0)
    return np.clip(values, 0.0, 2.0), vectors[:, :n_vectors]


def eigengap_k(values: np.ndarray, k_max: int) -> int:
    """Number of clusters: ``k`` in ``[1, k_max]`` maximising ``values[k] - values[k - 1]``.

    Parameters
    ----------
    values : np.ndarray
        Ascending Laplacian eigenvalues ``[n]``.
    k_max : int
        Largest ``k`` (capped at ``n - 1``; 1 when that is <= 1).
    """
    k_max = min(k_max, len(values) - 1)
    if k_max <= 1:
        return 1
    return int(np.argmax(np.diff(values[: k_max + 1])) + 1)


def cluster_qr(vectors: np.ndarray) -> np.ndarray:
    """Cluster labels int ``[n]`` in ``[0, k)`` by column-pivoted QR (Damle, Minden and Ying 2019).

    Deterministic, no k-means restarts.

    Parameters
    ----------
    vectors : np.ndarray
        ``[n, k]``: the first ``k`` Laplacian eigenvectors.
    """
    k = vectors.shape[1]
    _, _, piv = qr(vectors.T, pivoting=True)
    ut, _, v = svd(vectors[piv[:k], :].T)
    return np.abs(vectors @ (ut @ v.conj())).argmax(axis=1)


def spectral_clusters(d: np.ndarray, neighbors: int, max_clusters: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Spectral clustering of points with distances ``d``.

    Parameters
    ----------
    d : np.ndarray
        ``[n, n]`` distances.
    neighbors : int
        Neighbours per point of the kNN graph (``affinity``).
    max_clusters : int
        Largest ``k``; ``k`` is at the largest eigengap (``eigengap_k``).

    Returns
    -------
    (np.ndarray, np.ndarray, int)
        Labels int ``[n]`` (all 0 when ``k <= 1``), the ``[n]`` eigenvalues, and ``k``.
    """
    w = affinity(d, neighbors)
    values, vectors = spectrum(w, min(max_clusters, len(d)))
    k = eigengap_k(values, max_clusters)
    labels = np.zeros(len(d), int) if k <= 1 else cluster_qr(vectors[:, :k])
    return labels, values, k


def density_clusters(d: np.ndarray, min_size: int) -> np.ndarray:
    """HDBSCAN labels int ``[n]`` (``-1`` = noise) of points with distances ``d``.

    Parameters
    ----------
    d : np.ndarray
        ``[n, n]`` distances (precomputed metric).
    min_size : int
        HDBSCAN's ``min_cluster_size``; fewer than ``2 * min_size`` points are all noise.
    """
    if len(d) < 2 * min_size:
        return np.full(len(d), -1)
    return HDBSCAN(min_cluster_size=min_size, metric="precomputed", copy=True).fit(d).labels_


def ward_cut(x: np.ndarray, clusters: list[np.ndarray]) -> list[np.ndarray]:
    """Merge ``clusters`` (row index arrays into ``x``) bottom-up by Ward's criterion and
    cut the tree at its largest gap in merge height (the clusters themselves at
    height 0): parts of one group merge, distinct groups stay apart.

    Parameters
    ----------
    x : np.ndarray
        ``[rows, features]``.
    clusters : list of np.ndarray
        Row index arrays into ``x``.

    Returns
    -------
    list of np.ndarray
        The groups after the cut, row indices (merged groups sorted).
    """
    groups = [np.asarray(c) for c in clusters]
    states, heights = [list(groups)], [0.0]
    while len(groups) > 1:
        best = None
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                a, b = groups[i], groups[j]
                cost = np.sum((x[a].mean(axis=0) - x[b].mean(axis=0)) ** 2) * len(a) * len(b) / (len(a) + len(b))
                if best is None or cost < best[0]:
                    best = (cost, i, j)
        cost, i, j = best
        groups = [g for n, g in enumerate(groups) if n not in (i, j)] + [np.sort(np.concatenate([groups[i], groups[j]]))]
        states.append(list(groups))
        heights.append(max(float(cost), heights[-1]))
    if len(states) == 1:
        return states[0]
    return states[int(np.argmax(np.diff(heights)))]
