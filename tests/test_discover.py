"""Discover: features, spectral + density clustering and ranking on hand-made inputs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit.config import resolve
from audit.maps import area_pool
from audit.clustering import cluster_qr, density_clusters, distances, eigengap_k, spectrum, ward_cut
from audit.findings import Finding, ranked
from audit.stages.discover import assign_findings, discover, pair_features

SIDE = 32


@pytest.mark.parametrize("shape, grid", [((32, 32), 16), ((20, 24), 16), ((7, 9), 16), ((64, 48), 5)])
def test_area_pool_equals_cell_means(shape, grid):
    maps = np.random.default_rng(0).normal(size=(3, *shape))
    ys = np.linspace(0, shape[0], grid + 1).astype(int)
    xs = np.linspace(0, shape[1], grid + 1).astype(int)
    expected = np.array([[[m[ys[i]:max(ys[i + 1], ys[i] + 1), xs[j]:max(xs[j + 1], xs[j] + 1)].mean()
                           for j in range(grid)] for i in range(grid)] for m in maps])
    np.testing.assert_allclose(area_pool(maps, grid, grid), expected, rtol=1e-10, atol=1e-12)


def _blocks(sizes, noise=0.0, seed=0):
    n = sum(sizes)
    w = np.zeros((n, n))
    start = 0
    for s in sizes:
        w[start:start + s, start:start + s] = 1.0
        start += s
    w += noise * np.random.default_rng(seed).random((n, n))
    w = (w + w.T) / 2
    np.fill_diagonal(w, 0.0)
    return w


def test_eigengap_and_cluster_qr_recover_three_blocks():
    w = _blocks([7, 5, 9], noise=0.02)
    values, vectors = spectrum(w, 6)
    assert eigengap_k(values, 6) == 3
    labels = cluster_qr(vectors[:, :3])
    truth = np.repeat([0, 1, 2], [7, 5, 9])
    # the same partition, whatever the label numbers
    assert len(set(zip(labels.tolist(), truth.tolist()))) == 3 and len(set(labels.tolist())) == 3


def test_eigengap_one_cluster():
    values, _ = spectrum(_blocks([12]), 6)
    assert eigengap_k(values, 6) == 1


def test_density_finds_a_tight_group_in_noise():
    rng = np.random.default_rng(1)
    noise = rng.uniform(-1, 1, (40, 5))
    tight = 0.02 * rng.normal(size=(6, 5)) + 3.0
    labels = density_clusters(distances(np.vstack([noise, tight])), 4)
    assert set(labels[40:].tolist()) == {labels[40]} and labels[40] >= 0
    assert not np.isin(labels[:40], labels[40]).any()


def _blob(cy, cx, rng):
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    cy, cx = cy + rng.normal(0, 0.7), cx + rng.normal(0, 0.7)
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18.0) + 0.02 * rng.random((SIDE, SIDE))


def _case():
    """Pair a -> b with two planted groups (12 and 8 images), 10 contrast images of b,
    and 50 correctly classified images of a."""
    rng = np.random.default_rng(3)
    directions = rng.normal(size=(3, 24))
    groups = [("g1", 12, (8, 8), 0), ("g2", 8, (24, 22), 1), ("contrast", 10, (16, 16), 2)]
    rows, maps, feats, sel = [], [], [], []
    r = 0
    for name, n, (cy, cx), d in groups:
        for _ in range(n):
            maps.append(_blob(cy, cx, rng))
            feats.append(np.abs(directions[d] + 0.08 * rng.normal(size=24)))
            reason = "contrast" if name == "contrast" else "misclassified"
            true = "b" if name == "contrast" else "a"
            sel.append({"row": r, "path": f"{name}/{r}.png", "reason": reason, "true_label": true,
                        "pair_label": "b", "label": true})
            rows.append(r)
            r += 1
    preds = [{"row": s["row"], "path": s["path"], "label": s["label"],
              "predicted": "b", "error": None} for s in sel]
    preds += [{"row": r + i, "path": f"ok/{i}.png", "label": "a", "predicted": "a", "error": None}
              for i in range(30)]
    predictions = pd.DataFrame(preds)
    selection = pd.DataFrame(sel)
    return predictions, selection, np.array(rows), np.stack(maps), np.array(rows), np.stack(feats)


def test_two_planted_clusters_come_back_as_findings():
    predictions, selection, map_rows, maps, feature_rows, features = _case()
    config = resolve(None, [], {"out": "unused"})
    table, findings = discover(config, predictions, selection, map_rows, maps, feature_rows, features)
    members = [set(f.members) for f in findings]
    g1 = {p for p in selection["path"] if p.startswith("g1/")}
    g2 = {p for p in selection["path"] if p.startswith("g2/")}
    assert members == [g1, g2]
    top = findings[0]
    assert (top.true_label, top.predicted_label, top.rank, top.size) == ("a", "b", 1, 12)
    assert top.n_errors == 12 and top.support == pytest.approx(12 / 50)
    assert top.coherence > 0.8 and findings[1].coherence > 0.8
    assert top.score == pytest.approx(top.support * top.coherence, rel=1e-4)
    assert top.eigengap_k == 2 and len(top.eigenvalues) >= 3
    # the table: every selected image once, contrast images never in a finding
    assert sorted(table["row"]) == sorted(selection["row"])
    contrast = table[table["is_contrast"]]
    assert len(contrast) == 10 and contrast["finding_id"].isna().all()
    by_row = table.set_index("row")
    assert (by_row.loc[list(findings[0].rows), "finding_id"] == findings[0].id).all()
    # deterministic
    again = discover(config, predictions, selection, map_rows, maps, feature_rows, features)[1]
    assert again == findings


def test_small_pairs_are_not_clustered():
    predictions, selection, map_rows, maps, feature_rows, features = _case()
    config = resolve(None, ["discovery.min_pair_size=100"], {"out": "unused"})
    table, findings = discover(config, predictions, selection, map_rows, maps, feature_rows, features)
    assert findings == [] and (table["cluster"] == -1).all()


def test_pair_features_blocks_weigh_as_configured():
    _, _, _, maps, _, features = _case()
    for w in (0.5, 0.8):
        config = resolve(None, [f"discovery.semantic_weight={w}"], {"out": "unused"})
        x, n_spatial = pair_features(maps, features, config)
        assert n_spatial == 16 * 16
        assert np.mean(np.sum(x[:, :n_spatial] ** 2, axis=1)) == pytest.approx(1 - w)
        assert np.mean(np.sum(x[:, n_spatial:] ** 2, axis=1)) == pytest.approx(w)


def test_ranking_uses_the_causal_term():
    findings = [
        Finding(id="F-a", support=0.4, coherence=0.5, causal=0.0, members=("p1", "p2"), rows=(1, 2), true_label="x",
                predicted_label="y", centrality=(1.0, 0.5)),
        Finding(id="F-b", support=0.3, coherence=0.5, causal=0.9, members=("p2", "p3"), rows=(2, 3), true_label="x",
                predicted_label="y", centrality=(1.0, 0.5)),
    ]
    out = ranked(findings)
    assert [f.id for f in out] == ["F-b", "F-a"] and [f.rank for f in out] == [1, 2]
    assert out[0].score == pytest.approx(0.3 * 0.5 * 1.9) and out[1].score == pytest.approx(0.2)
    assert [f.rank for f in findings] == [0, 0]   # records are replaced, never edited
    table = pd.DataFrame({"pair": "x -> y", "row": [1, 2, 3, 4], "finding_id": None, "cluster": -1,
                          "centrality": np.nan})
    out = assign_findings(table, out)
    # row 2 is in both findings: it goes to the better-ranked one
    assert out["finding_id"].tolist() == ["F-a", "F-b", "F-b", None]
    assert out["cluster"].tolist() == [1, 0, 0, -1]


def test_ward_cut_merges_parts_and_keeps_distinct_groups_apart():
    rng = np.random.default_rng(5)
    x = np.vstack([rng.normal(0.0, 0.3, (10, 4)), rng.normal(0.6, 0.3, (12, 4)), rng.normal(8.0, 0.3, (9, 4))])
    parts = [np.arange(10), np.arange(10, 22), np.arange(22, 31)]
    cut = sorted(ward_cut(x, parts), key=len)
    assert [g.tolist() for g in cut] == [list(range(22, 31)), list(range(22))]
    # two clusters: the gap from height 0 is the only one, nothing merges
    assert len(ward_cut(x, parts[:2])) == 2
