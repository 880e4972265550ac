"""Cue discovery on planted-cue scenarios: does the audit find the cue, and do the baselines?

Two families of scenarios, built offline and cached (see ``scenarios.py``):

* ``scenarios.SCENARIOS``: procedural hotel and landscape scenes, one cue each
  (rails, watermark, shape, texture, tint; fixed or random place), and the null
  scenarios (``null``, ``null-mislabels``);
* ``scenarios.SHORTCUTS`` (issue 14): scikit-image photos (grass, gravel, brick, moon)
  and scikit-learn digits: ``clever-hans`` (a text watermark on most brick images, in
  training and audit, on no other class: a strategy, not an error), ``ring-shortcut``
  (a magenta ring on 95% of gravel: grass with a ring is called gravel and plain
  gravel, the missing-cue group, grass), ``waterbirds`` (a water background on most
  fours), ``blur`` (most brick images out of focus: a global cue), ``two-cues`` (a
  ring for gravel and a star for brick in one model), ``mobilenet-nested`` (a
  MobileNetV2 nested in a Sequential after its Rescaling) and ``null-texture`` (a
  clean model).

Each scenario's audit runs as ``audit run`` in a subprocess, with ``PYTHONPATH`` set
to ``--audit-root`` (default: this checkout), ``attribution.methods=[gradcam]`` and
``internals.enabled=false`` (discovery and verification read the first method's maps
only; the other methods and the internals pictures would cost minutes without
changing a figure) and every ``--set``. The demo is audited with the defaults, as a
user runs it.

Ground truth: the audit manifest's ``cue`` column (and ``cue_name``, ``group`` for
the shortcut scenarios), never read by the audit. For a planted cue on class C with
victim class V, a finding of our audit *hits* when

* its pair is right: an error finding ``V -> C`` or a strategy finding ``C -> C``
  (``kind`` in summary.json; absent means error; clever-hans accepts only a strategy);
* purity >= 0.8: the share of its members carrying the cue;
* recall >= 0.5 of the planted images: for an error finding the victims called C,
  for a strategy finding the cue-carrying images of C predicted C;

and it is ranked within ``k``: k = 1 for single-cue scenarios, 3 for ``clever-hans``
(the strategy finding within the top 3) and ``two-cues`` (both cues within the top 3).
The position counted is the finding's ``story`` when summary.json has one (findings
linked by one cue rank together: the victims, the strategy and the missing-cue group
are one story), else its ``rank``.
Confirmed: the finding's ``trust.confirmed`` (best verification lift >=
``trust.min_lift``), else any verification test's lift >= ``MIN_LIFT``. Ring-shortcut
also reports whether the missing-cue group (the best-ranked finding ``gravel -> x``
of at least 80% images without the ring) is linked to the rank-1 finding
(``related``); blur whether the rank-1 finding's ``cue`` is ``type: global``, names
``sharpness`` and is confirmed; null scenarios count the confirmed findings (there
must be none); planted ones the confirmed findings on no planted pair (nor on a
missing-cue pair: the cue class called the class its look-alikes are drawn as).

Baselines on the same audit images, each scored with the same rule over its own
ranked list of error clusters and, where it makes sense, of strategy clusters (a
favour: ours ranks both kinds in one list):

* ``spray``: SpRAy with CoRelAy's defaults on Grad-CAM maps (``audit.explain``,
  computed here): per confusion pair of the selected images (errors and low
  confidence, from ``selection.parquet``) and, for strategies, per class over its
  correct predictions (at most ``SPRAY_PER_CLASS``, a seeded sample): maps
  area-pooled to 32x32 and scaled by their largest magnitude, Euclidean distances,
  binary kNN affinity (k = 10, symmetrised), symmetric normalised Laplacian, the 32
  smallest eigenpairs with unit rows, k-means with k at the largest eigengap. Error
  clusters ranked by their number of errors, strategy clusters by size;
* ``domino``: a Domino-style error-aware Gaussian mixture over all readable audit
  images (penultimate activations, PCA to <= 128 dimensions, standardised, with the
  one-hot label and the predicted probabilities weighted x10; 25 diagonal
  components): slices ranked by error rate; for strategies, each slice's correct
  predictions of one class, ranked by size;
* ``largest``: each confusion pair's errors as one cluster, ranked by size (errors only).

``p@10`` (dcbench-style best-match precision at 10 over every error cluster: the
largest share of cue-carrying images of other classes than the cue class among the
first 10 members) is kept from the first version of this benchmark.

The demo (``audit demo``, cached under ``--cache``/demo) runs ``--demo-runs`` times in
fresh processes: rank-1 hit (pool -> bathroom), the strategy finding "bathroom
relies on rails" and whether it is confirmed, and discover + verify time against
attribute.

Writes ``discovery.json`` and ``discovery.md`` into ``--out``; prints the acceptance figures.

    python benchmarks/discovery.py --out benchmarks/results [--cache DIR] [--scenarios a,b] [--demo-runs 3]
        [--no-baselines] [--audit-root PATH] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pandas as pd

import scenarios as S

ROOT = Path(__file__).resolve().parents[1]
PURITY, RECALL, K, MIN_LIFT, MINORITY = 0.8, 0.5, 10, 0.1, 0.8
SPRAY_PER_CLASS = 200
METHODS = ("ours", "spray", "domino", "largest")
SCENARIO_SETS = ("attribution.methods=[gradcam]", "internals.enabled=false")


# ---------------------------------------------------------------- the planted truth of a scenario

def planted(sc) -> list[S.Plant]:
    """The scenario's cues as ``Plant`` records (old scenarios: one, error or strategy)."""
    if isinstance(sc, S.Shortcut):
        return list(sc.plants)
    return [] if sc.null else [S.Plant(sc.cue, sc.cue_class, sc.victim)]


def cue_names(pred: pd.DataFrame, sc) -> np.ndarray:
    """Per prediction row, the name of the cue it carries ("" for none)."""
    if "cue_name" in pred:
        return pred["cue_name"].astype("string").fillna("").to_numpy(dtype=str)
    name = sc.cue if isinstance(sc, S.Scenario) else ""
    return np.where(pred["cue"].astype(bool).to_numpy(), name, "")


def targets_of(plant: S.Plant, kind: str, pred: pd.DataFrame, cues: np.ndarray) -> set[int]:
    """The planted images a finding of ``kind`` must recall: victims called the cue class
    (error) or cue-carrying images of the cue class predicted as it (strategy)."""
    carries = cues == plant.cue
    label, predicted = pred["label"].to_numpy(), pred["predicted"].to_numpy()
    if kind == "error":
        if plant.victim is None:
            return set()
        chosen = carries & (label == plant.victim) & (predicted == plant.cue_class)
    else:
        chosen = carries & (label == plant.cue_class) & (predicted == plant.cue_class)
    return set(pred["row"].to_numpy()[chosen].astype(int).tolist())


def pair_of(plant: S.Plant, kind: str) -> tuple[str, str] | None:
    if kind == "error":
        return None if plant.victim is None else (plant.victim, plant.cue_class)
    return plant.cue_class, plant.cue_class


# ---------------------------------------------------------------- running the audit

def audit_env(audit_root: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(audit_root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_audit(audit_root: Path, prepared: S.Prepared, out: Path, sets: list[str]) -> dict:
    """``audit run`` on the scenario in a subprocess importing ``audit`` from ``audit_root``."""
    cmd = [sys.executable, "-m", "audit.cli", "run", "--model", str(prepared.model), "--data", str(prepared.manifest),
           "--classes", str(prepared.classes), "--out", str(out), "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=audit_root, env=audit_env(audit_root))
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise RuntimeError(f"audit run on {prepared.manifest} exited {result.returncode}: {result.stderr[-3000:]}")
    return {"summary": json.loads((out / "summary.json").read_text()),
            "run": json.loads((out / "run.json").read_text()), "seconds": seconds}


def finding_rows(f: dict, row_of: dict[str, int]) -> list[int]:
    if f.get("rows"):
        return [int(r) for r in f["rows"]]
    return [row_of[m] for m in f.get("members", []) if m in row_of]


def kind_of(f: dict) -> str:
    return f.get("kind") or "error"


def related_ids(f: dict) -> dict[str, str | None]:
    """``related`` as {id: relation} (a list of ids or of {"id", "relation"})."""
    out = {}
    for r in f.get("related") or []:
        if isinstance(r, dict):
            out[str(r.get("id"))] = r.get("relation")
        else:
            out[str(r)] = None
    return out


def confirmed(f: dict) -> bool:
    """Confirmed by intervention: ``trust.confirmed``, else a verification lift >= ``MIN_LIFT``."""
    trust = f.get("trust") or {}
    if trust.get("confirmed") is not None:
        return bool(trust["confirmed"])
    v = f.get("verification") or {}
    if not v.get("verified", False):
        return False
    lifts = [t.get("lift") for t in v.values() if isinstance(t, dict)]
    return any(lift is not None and lift >= MIN_LIFT for lift in lifts)


# ---------------------------------------------------------------- baselines (each: ranked lists of member-row lists)

def _spray_cluster(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SpRAy (CoRelAy defaults) over maps ``[n, H, W]``: cluster labels and distance to centre."""
    from sklearn.cluster import KMeans

    from audit.maps import area_pool

    n = len(maps)
    x = area_pool(maps, 32, 32).reshape(n, -1)
    x = x / np.maximum(np.abs(x).max(axis=1, keepdims=True), 1e-12)
    d = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0))
    k = min(10, n - 1)
    a = np.zeros((n, n))
    a[np.repeat(np.arange(n), k), np.argsort(d, axis=1, kind="stable")[:, 1:k + 1].ravel()] = 1.0
    a = (a + a.T) / 2
    inv = 1 / np.sqrt(np.maximum(a.sum(1), 1e-12))
    values, vectors = np.linalg.eigh(inv[:, None] * a * inv[None, :])
    values, vectors = 1 - values[::-1], vectors[:, ::-1]
    m = min(32, n - 1)
    values, vectors = values[:m], vectors[:, :m]
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    n_clusters = int(np.argmax(np.diff(values)) + 1) if m > 1 else 1
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=0).fit(vectors)
    return km.labels_, np.linalg.norm(vectors - km.cluster_centers_[km.labels_], axis=1)


class Maps:
    """Grad-CAM maps of audit images (``audit.explain``), computed once per (row, target)."""

    def __init__(self, model_path: Path, root: Path, pred: pd.DataFrame, classes: list[str]):
        import keras

        self.model = keras.models.load_model(model_path, compile=False)
        self.root, self.classes = root, classes
        self.path_of = dict(zip(pred["row"].astype(int), pred["path"]))

    def __call__(self, rows: list[int], targets: list[str]) -> np.ndarray:
        from audit import explain
        from audit.data import load_images

        size = tuple(int(v) for v in self.model.inputs[0].shape[1:3])
        images, _ = load_images(self.root, [self.path_of[r] for r in rows], size)
        return explain(self.model, images.astype(np.float32), np.array([self.classes.index(t) for t in targets]),
                       method="gradcam")


def spray(sel: pd.DataFrame, pred: pd.DataFrame, maps: Maps, min_pair: int = 4) -> dict[str, list[list[int]]]:
    errors = []
    for (_, pair_label), part in sel[sel["reason"] != "contrast"].groupby(["true_label", "pair_label"]):
        if len(part) < min_pair:
            continue
        rows = part["row"].astype(int).to_numpy()
        labels, dist = _spray_cluster(maps(rows.tolist(), [pair_label] * len(rows)))
        wrong = (part["reason"] == "misclassified").to_numpy()
        for c in np.unique(labels):
            inside = np.flatnonzero(labels == c)
            errors.append((int(wrong[inside].sum()), len(inside), rows[inside[np.argsort(dist[inside], kind="stable")]].tolist()))
    errors.sort(key=lambda c: (-c[0], -c[1]))
    strategies = []
    ok = pred[pred["error"].isna() & (pred["predicted"] == pred["label"])]
    for label, part in ok.groupby("label"):
        if len(part) < min_pair:
            continue
        if len(part) > SPRAY_PER_CLASS:
            part = part.sample(SPRAY_PER_CLASS, random_state=0)
        rows = part["row"].astype(int).to_numpy()
        labels, dist = _spray_cluster(maps(rows.tolist(), [label] * len(rows)))
        for c in np.unique(labels):
            inside = np.flatnonzero(labels == c)
            strategies.append(rows[inside[np.argsort(dist[inside], kind="stable")]].tolist())
    strategies.sort(key=lambda c: -len(c))
    return {"error": [c[2] for c in errors], "strategy": strategies}


def penultimate(model_path: Path, root: Path, paths: list[str]) -> np.ndarray:
    """The input of the last layer, through a nested model (a Sequential around an application) too."""
    import keras

    from audit.data import load_images

    def head(model):
        last = model.layers[-1]
        if not isinstance(last, keras.Model):
            return keras.Model(model.inputs, last.input)
        inputs = x = keras.Input(model.inputs[0].shape[1:])
        for layer in model.layers[:-1]:
            if not isinstance(layer, keras.layers.InputLayer):
                x = layer(x)
        return keras.Model(inputs, head(last)(x))

    model = keras.models.load_model(model_path, compile=False)
    images, _ = load_images(root, paths, tuple(model.inputs[0].shape[1:3]))
    return head(model).predict(images.astype(np.float32), batch_size=128, verbose=0).reshape(len(paths), -1)


def domino(pred: pd.DataFrame, embeddings: np.ndarray, classes: list[str], n_components: int = 25,
           weight: float = 10.0) -> dict[str, list[list[int]]]:
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    ok = pred["error"].isna().to_numpy()
    p = pred[ok]
    emb = PCA(min(128, int(ok.sum()) - 1, embeddings.shape[1]), random_state=0).fit_transform(embeddings[ok])
    emb = emb / np.maximum(emb.std(axis=0), 1e-12)
    y = np.eye(len(classes))[p["label"].map(classes.index).to_numpy()]
    yhat = np.stack(p["probs"].to_numpy())
    gm = GaussianMixture(n_components, covariance_type="diag", reg_covar=1e-3, random_state=0).fit(
        np.hstack([emb, weight * y, weight * yhat]))
    resp = gm.predict_proba(np.hstack([emb, weight * y, weight * yhat]))
    hard = resp.argmax(axis=1)
    wrong = (p["predicted"] != p["label"]).to_numpy()
    label, rows = p["label"].to_numpy(), p["row"].astype(int).to_numpy()
    slices, strategies = [], []
    for c in range(n_components):
        inside = np.flatnonzero(hard == c)
        if len(inside) == 0:
            continue
        order = inside[np.argsort(-resp[inside, c], kind="stable")]
        slices.append((float(wrong[inside].mean()), len(inside), rows[order].tolist()))
        for name in np.unique(label[order]):
            right = order[(label[order] == name) & ~wrong[order]]
            if len(right):
                strategies.append(rows[right].tolist())
    slices.sort(key=lambda s: (-s[0], -s[1]))
    strategies.sort(key=lambda s: -len(s))
    return {"error": [s[2] for s in slices], "strategy": strategies}


def largest(pred: pd.DataFrame) -> dict[str, list[list[int]]]:
    wrong = pred[pred["error"].isna() & (pred["predicted"] != pred["label"])]
    clusters = [part.sort_values("confidence", ascending=False, kind="stable")["row"].astype(int).tolist()
                for _, part in wrong.groupby(["label", "predicted"])]
    clusters.sort(key=lambda c: -len(c))
    return {"error": clusters, "strategy": []}


# ---------------------------------------------------------------- scoring

def match(members: list[int], cue_rows: set[int], targets: set[int]) -> dict:
    purity = len(set(members) & cue_rows) / len(members) if members else 0.0
    recall = len(set(members) & targets) / len(targets) if targets else 0.0
    return {"purity": round(purity, 3), "recall": round(recall, 3), "size": len(members),
            "hit": bool(purity >= PURITY and recall >= RECALL)}


def score_ours(findings: list[dict], plant: S.Plant, k: int, pred: pd.DataFrame, cues: np.ndarray,
               row_of: dict[str, int]) -> dict:
    """The best finding on ``plant`` within rank ``k`` (hits first), and where the first hit sits at all."""
    cue_rows = set(pred["row"].to_numpy()[cues == plant.cue].astype(int).tolist())
    best, first_hit = None, None
    for f in findings:
        kind = kind_of(f)
        if kind not in plant.kinds or (f["true_label"], f["predicted_label"]) != pair_of(plant, kind):
            continue
        # the position that k counts: the finding's story (its group of findings linked by one cue,
        # audit.stages.link: victims, strategy, missing-cue group) when summary.json has one, else its rank
        place = f.get("story") or f["rank"]
        m = {"rank": f["rank"], "story": f.get("story"), "kind": kind, "id": f["id"], "confirmed": confirmed(f),
             **match(finding_rows(f, row_of), cue_rows, targets_of(plant, kind, pred, cues))}
        if m["hit"] and first_hit is None:
            first_hit = m["rank"]
        if place <= k and (best is None or (m["hit"], m["recall"]) > (best["hit"], best["recall"])):
            best = m
    return {"hit": bool(best and best["hit"]), "best": best, "first_hit_rank": first_hit}


def score_baseline(ranked: dict[str, list[list[int]]], plant: S.Plant, k: int, pred: pd.DataFrame,
                   cues: np.ndarray) -> dict:
    cue_rows = set(pred["row"].to_numpy()[cues == plant.cue].astype(int).tolist())
    best = None
    for kind in plant.kinds:
        if pair_of(plant, kind) is None:
            continue
        targets = targets_of(plant, kind, pred, cues)
        for rank, members in enumerate(ranked.get(kind, [])[:k], start=1):
            m = {"rank": rank, "kind": kind, **match(members, cue_rows, targets)}
            if best is None or (m["hit"], m["recall"]) > (best["hit"], best["recall"]):
                best = m
    return {"hit": bool(best and best["hit"]), "best": best}


def p_at_10(clusters: list[list[int]], pred: pd.DataFrame, cues: np.ndarray, plants: list[S.Plant]) -> float | None:
    label = pred["label"].to_numpy()
    slice_ = set()
    for p in plants:
        slice_ |= set(pred["row"].to_numpy()[(cues == p.cue) & (label != p.cue_class)].astype(int).tolist())
    if not slice_:
        return None
    return round(max((len(set(c[:K]) & slice_) / K for c in clusters), default=0.0), 3)


def missing_cue_link(findings: list[dict], plant: S.Plant, pred: pd.DataFrame, cues: np.ndarray,
                     row_of: dict[str, int]) -> dict:
    """The best-ranked finding ``cue_class -> other`` whose members mostly lack the cue, and
    whether it is linked (``related``, either way) to the rank-1 finding."""
    carries = dict(zip(pred["row"].astype(int), cues == plant.cue))
    group = None
    for f in findings:
        if f["true_label"] == plant.cue_class and f["predicted_label"] != plant.cue_class:
            rows = finding_rows(f, row_of)
            if rows and np.mean([not carries[r] for r in rows]) >= MINORITY:
                group = f
                break
    if group is None or not findings:
        return {"found": False, "linked": False}
    top = findings[0]
    relation = related_ids(top).get(group["id"], related_ids(group).get(top["id"], "none"))
    linked = group["id"] in related_ids(top) or top["id"] in related_ids(group)
    return {"found": True, "rank": group["rank"], "pair": f"{group['true_label']} -> {group['predicted_label']}",
            "size": len(finding_rows(group, row_of)), "linked": bool(linked and group is not top),
            "relation": relation if linked else None}


def global_cue(findings: list[dict]) -> dict:
    top = findings[0] if findings else {}
    cue = top.get("cue") or {}
    prop = str(cue.get("property") or "")
    return {"type": cue.get("type"), "property": prop or None, "text": cue.get("text"),
            "confirmed": confirmed(top) if top else False,
            "ok": bool(cue.get("type") == "global" and "sharpness" in prop and top and confirmed(top))}


# ---------------------------------------------------------------- one scenario

def prepare(sc, cache: Path, log):
    return S.prepare_shortcut(sc, cache, log) if isinstance(sc, S.Shortcut) else S.prepare(sc, cache, log)


def scenario_k(sc) -> int:
    return sc.k if isinstance(sc, S.Shortcut) else 1


def run_scenario(sc, cache: Path, out: Path, audit_root: Path, sets: list[str], baselines: bool, log) -> dict:
    prepared = prepare(sc, cache, log)
    classes = [c.strip() for c in prepared.classes.read_text().splitlines() if c.strip()]
    run_dir = out / "runs" / sc.name
    null = sc.null
    result = run_audit(audit_root, prepared, run_dir, list(SCENARIO_SETS) + sets)
    pred = pd.read_parquet(run_dir / "predictions.parquet")
    cues = cue_names(pred, sc)
    row_of = dict(zip(pred["path"], pred["row"].astype(int)))
    findings = result["summary"]["findings"]
    plants, k = planted(sc), scenario_k(sc)
    info = prepared.info
    clean = pred["error"].isna() & (pred["group"] == "production" if "group" in pred else ~pred["cue"].astype(bool))
    entry = {"scenario": sc.name, "family": "shortcut" if isinstance(sc, S.Shortcut) else "procedural",
             "arch": sc.arch, "k": k, "null": null,
             "cues": [{"cue": p.cue, "class": p.cue_class, "victim": p.victim, "kinds": list(p.kinds)} for p in plants],
             "flip_rates": info.get("flip_rates"), "val_accuracy": info.get("val_accuracy"),
             "clean_accuracy": round(float((pred.loc[clean, "predicted"] == pred.loc[clean, "label"]).mean()), 3),
             "audit_size": len(pred), "accuracy": result["summary"]["metrics"]["accuracy"],
             "audit_seconds": round(result["seconds"], 1), "timings": result["run"].get("timings"),
             "n_findings": len(findings)}
    entry["victims_fooled"] = {p.cue: round(float((pred.loc[(cues == p.cue) & (pred["label"] == p.victim).to_numpy(),
                                                           "predicted"] == p.cue_class).mean()), 3)
                               for p in plants if p.victim is not None}
    entry["ours"] = {p.cue: score_ours(findings, p, k, pred, cues, row_of) for p in plants}
    on_plant = {pair_of(p, kind) for p in plants for kind in p.kinds}
    on_plant |= {(p.cue_class, c) for p in plants for c in classes       # missing-cue errors: the cue's absence
                 if c != p.cue_class and p.lookalike_class in (c, "*")}
    entry["confirmed"] = [{"rank": f["rank"], "kind": kind_of(f), "pair": f"{f['true_label']} -> {f['predicted_label']}",
                           "planted": (f["true_label"], f["predicted_label"]) in on_plant}
                          for f in findings if confirmed(f)]
    entry["false_discoveries"] = sum(not c["planted"] for c in entry["confirmed"])
    if sc.name == "ring-shortcut":
        entry["missing_cue"] = missing_cue_link(findings, plants[0], pred, cues, row_of)
    if any(p.cue == "blur" for p in plants):
        entry["global_cue"] = global_cue(findings)
    entry["findings"] = [{"rank": f["rank"], "kind": kind_of(f), "pair": f"{f['true_label']} -> {f['predicted_label']}",
                          "size": f["size"], "score": f["score"], "confirmed": confirmed(f),
                          "cue": (f.get("cue") or {}).get("text") or (f.get("cue") or {}).get("cell"),
                          "related": related_ids(f),
                          "cue_share": round(float(np.mean(cues[np.isin(pred["row"].astype(int), finding_rows(f, row_of))] != "")), 3)
                          if f["size"] else None}
                         for f in findings]
    entry["p@10"] = {"ours": p_at_10([finding_rows(f, row_of) for f in findings if kind_of(f) == "error"],
                                     pred, cues, plants)} if plants else {}
    if baselines and plants:
        sel = pd.read_parquet(run_dir / "selection.parquet")
        root = prepared.manifest.parent
        ranked = {"spray": spray(sel, pred, Maps(prepared.model, root, pred, classes)),
                  "domino": domino(pred, penultimate(prepared.model, root, pred["path"].tolist()), classes),
                  "largest": largest(pred)}
        for m, r in ranked.items():
            entry[m] = {p.cue: score_baseline(r, p, k, pred, cues) for p in plants}
            entry["p@10"][m] = p_at_10(r["error"], pred, cues, plants)
    return entry


def scenario_hit(entry: dict, method: str) -> bool | None:
    scores = entry.get(method)
    return None if not scores else all(s["hit"] for s in scores.values())


# ---------------------------------------------------------------- the demo

def run_demo(out: Path, runs: int, cache: Path, audit_root: Path, sets: list[str], log) -> dict:
    """``audit demo`` ``runs`` times, each in a fresh process as a user runs it (so the
    attribute stage includes its one-off tracing, as in every real run)."""
    runs_out = []
    for i in range(runs):
        run_dir = out / "runs" / f"demo-{i}"
        cmd = [sys.executable, "-m", "audit.cli", "demo", "--out", str(run_dir), "--quiet", "--cache", str(cache / "demo")]
        for s in sets:
            cmd += ["--set", s]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=audit_root, env=audit_env(audit_root))
        if result.returncode not in (0, 1):
            raise RuntimeError(f"audit demo failed: {result.stderr[-2000:]}")
        t = json.loads((run_dir / "run.json").read_text())["timings"]
        findings = json.loads((run_dir / "summary.json").read_text())["findings"]
        pred = pd.read_parquet(run_dir / "predictions.parquet")
        cues = np.where(pred["cue"].astype(bool).to_numpy(), "rails", "")
        row_of = dict(zip(pred["path"], pred["row"].astype(int)))
        error = score_ours(findings, S.Plant("rails", "bathroom", "pool", kinds=("error",)), 1, pred, cues, row_of)
        strategy = score_ours(findings, S.Plant("rails", "bathroom", None, kinds=("strategy",)), len(findings),
                              pred, cues, row_of)
        top = findings[0] if findings else {}
        ratio = round((t["discover"] + t.get("verify", 0.0)) / t["attribute"], 3)
        runs_out.append({"top": f"{top.get('true_label')} -> {top.get('predicted_label')}" if top else None,
                         "top_kind": kind_of(top) if top else None, "rank1": error, "strategy": strategy,
                         "transplant_rate": ((top.get("verification") or {}).get("transplant") or {}).get("rate"),
                         "timings": {k: t.get(k) for k in ("predict", "attribute", "discover", "verify")},
                         "ratio": ratio})
        log(f"  demo run {i + 1}: rank 1 {runs_out[-1]['top']} hit {error['hit']}; strategy bathroom "
            f"{'found at rank ' + str(strategy['best']['rank']) if strategy['best'] else 'not found'}; "
            f"discover + verify = {ratio:.1%} of attribute")
    return {"runs": runs_out, "median_ratio": float(np.median([r["ratio"] for r in runs_out])),
            "report": str(out / "runs" / f"demo-{runs - 1}" / "index.html")}


# ---------------------------------------------------------------- output

def _cell(score: dict | None) -> str:
    if not score:
        return "—"
    b = score["best"]
    if b is None:
        return "✗ (none)"
    where = f"#{b['rank']} {b['kind'][0]}"
    return f"{'✓' if score['hit'] else '✗'} {where} {b['purity']:.2f}/{b['recall']:.2f}"


def _flips(e: dict) -> str:
    rates = e.get("flip_rates")
    if rates:
        return ", ".join(f"{c} {r['rate']:.0%}" for c, r in rates.items())
    return "—"


def markdown(results: dict) -> str:
    lines = ["# Cue discovery benchmark", "",
             f"{results['machine']}; audit from `{results['audit_root']}` ({results['audit_commit']}); "
             f"{results['seconds']:.0f} s in all; audit settings "
             + ", ".join(f"`{s}`" for s in results["sets"]) + ".", "",
             f"Hit@k: a finding within rank k on the right pair (error `victim -> cue class`, or strategy "
             f"`cue class -> cue class`), purity >= {PURITY} (members carrying the cue), recall >= {RECALL} of the "
             f"planted images (errors: victims called the cue class; strategies: cue-carrying images of the class "
             f"called it). A cell reads hit, rank and kind (e error, s strategy) of the best such finding within k, "
             f"purity/recall; two-cue scenarios list each cue. Baselines are scored over their own error and strategy "
             f"lists. Flip: share of correctly classified clean images of other classes called the cue class once "
             f"the cue is applied (shortcut scenarios; built with the model). Clean acc.: accuracy on the audit "
             f"images drawn as in training (procedural scenarios: the images without the cue). Confirmed off-plant: "
             f"findings confirmed by intervention on no planted pair (the pairs above, and the missing-cue pairs "
             f"`cue class -> look-alike class`; null: every confirmed finding).", "",
             "| scenario | model | cue -> class (victim) | flip | victims fooled | clean acc. | audit images | k | "
             + " | ".join(METHODS) + " | confirmed off-plant |",
             "|---|---|---|---|---|---:|---:|---:|" + "---|" * len(METHODS) + "---:|"]
    for e in results["scenarios"]:
        cues = "; ".join(f"{c['cue']} -> {c['class']} ({c['victim'] or '—'})" for c in e["cues"]) or "none (null)"
        cells = []
        for m in METHODS:
            scores = e.get(m)
            cells.append("—" if not scores else "<br>".join(
                (f"{c}: " if len(scores) > 1 else "") + _cell(s) for c, s in scores.items()))
        fooled = ", ".join(f"{c} {r:.0%}" for c, r in e["victims_fooled"].items()) or "—"
        lines.append(f"| {e['scenario']} | {e['arch']} | {cues} | {_flips(e)} | {fooled} | {e['clean_accuracy']:.3f} | "
                     f"{e['audit_size']} | {e['k']} | " + " | ".join(cells) + f" | {e['false_discoveries']} |")
    lines += ["", "Hit@k per method over planted scenarios: "
              + ", ".join(f"{m} {h}/{n}" for m, (h, n) in results["hits"].items()) + ". Mean p@10 (best-match "
              "precision at 10 over error clusters, scenarios with victims): " + ", ".join(
                  f"{m} {v:.3f}" for m, v in results["mean_p@10"].items()) + ".", ""]
    for e in results["scenarios"]:
        if "missing_cue" in e:
            mc = e["missing_cue"]
            lines.append(f"- {e['scenario']}: missing-cue group " + (
                f"{mc['pair']} ({mc['size']} images) at rank {mc['rank']}, linked to rank 1: {mc['linked']}"
                + (f" ({mc['relation']})" if mc["relation"] else "") if mc["found"] else "not found") + ".")
        if "global_cue" in e:
            g = e["global_cue"]
            lines.append(f"- {e['scenario']}: rank-1 cue type {g['type']}, property {g['property']}, confirmed "
                         f"{g['confirmed']}: {'ok' if g['ok'] else 'not ok'}.")
        if e["false_discoveries"]:
            lines.append(f"- {e['scenario']}: confirmed off-plant: " + ", ".join(
                f"#{c['rank']} {c['kind']} {c['pair']}" for c in e["confirmed"] if not c["planted"]) + ".")
    lines += ["", "Findings per scenario (rank, kind, pair, size, confirmed, share of members with a cue):", ""]
    for e in results["scenarios"]:
        lines.append(f"- {e['scenario']}: " + ("; ".join(
            f"#{f['rank']} {f['kind'][0]} {f['pair']} {f['size']}{' ✓' if f['confirmed'] else ''} "
            f"({f['cue_share']:.0%})" for f in e["findings"][:6]) or "no finding"))
    d = results.get("demo")
    if d:
        lines += ["", "Demo (`audit demo`, default settings): " + "; ".join(
            f"run {i + 1}: rank 1 {r['top']} ({r['top_kind']}) {_cell(r['rank1'])}, strategy bathroom "
            + (f"#{r['strategy']['best']['rank']} purity {r['strategy']['best']['purity']:.2f} confirmed "
               f"{r['strategy']['best']['confirmed']}" if r["strategy"]["best"] else "none")
            + f", discover + verify {r['ratio']:.1%} of attribute" for i, r in enumerate(d["runs"])) + "."]
    lines += ["", "## Acceptance", ""] + [f"- {a}" for a in results["acceptance"]]
    return "\n".join(lines) + "\n"


def acceptance(results: dict) -> list[str]:
    planted_ = [e for e in results["scenarios"] if not e["null"]]
    nulls = [e for e in results["scenarios"] if e["null"]]
    out = [f"every planted scenario hits within its k (ours): {all(scenario_hit(e, 'ours') for e in planted_)} ("
           + ", ".join(f"{e['scenario']} {'✓' if scenario_hit(e, 'ours') else '✗'}" for e in planted_) + ")",
           "null scenarios, findings confirmed by intervention: "
           + ", ".join(f"{e['scenario']} {len(e['confirmed'])}" for e in nulls)]
    for e in results["scenarios"]:
        if "missing_cue" in e:
            ring = e["ours"]["ring"]
            out.append(f"ring-shortcut: ring at rank 1 {bool(ring['hit'])}, missing-cue group linked to it "
                       f"{e['missing_cue']['linked']}")
        if "global_cue" in e:
            g = e["global_cue"]
            out.append(f"blur: rank-1 finding global, names sharpness, confirmed: {g['ok']} "
                       f"(type {g['type']}, property {g['property']}, confirmed {g['confirmed']})")
    d = results.get("demo")
    if d:
        r = d["runs"][-1]
        s = r["strategy"]["best"]
        out += [f"demo rank 1 pool -> bathroom, purity >= {PURITY}, recall >= {RECALL}: {r['rank1']['hit']}",
                f"demo strategy finding bathroom relies on rails, confirmed: {bool(s and s['hit'] and s['confirmed'])}"]
    return out


def mean_p10(entries: list[dict]) -> dict[str, float]:
    """Mean p@10 per method over the scenarios where every method has one."""
    scored = [e["p@10"] for e in entries if e.get("p@10") and all(e["p@10"].get(m) is not None for m in METHODS)]
    return {m: round(float(np.mean([p[m] for p in scored])), 3) for m in METHODS} if scored else {}


def git_commit(path: Path) -> str:
    result = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or "unknown commit"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [s.name for s in S.SHORTCUTS] + [s.name for s in S.SCENARIOS]
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--cache", default=None, help="scenario and demo cache (default <out>/cache)")
    parser.add_argument("--scenarios", default=",".join(names), help="comma-separated subset of: " + ", ".join(names))
    parser.add_argument("--demo-runs", type=int, default=3, help="0 skips the demo")
    parser.add_argument("--no-baselines", action="store_true", help="score our audit only (a fast iteration)")
    parser.add_argument("--audit-root", default=str(ROOT),
                        help="checkout whose audit package runs the audits (PYTHONPATH for the audit and the baselines)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every audit run (after the scenario settings)")
    args = parser.parse_args()
    out, audit_root = Path(args.out).resolve(), Path(args.audit_root).resolve()
    if not (audit_root / "audit" / "__init__.py").is_file():
        parser.error(f"--audit-root {audit_root}: no audit package there")
    wanted = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        parser.error(f"--scenarios: unknown {', '.join(unknown)} (known: {', '.join(names)})")
    sys.path.insert(0, str(audit_root))       # the baselines import audit (explain, maps, data) from there too
    cache = Path(args.cache).resolve() if args.cache else out / "cache"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = lambda m: print(m, flush=True)  # noqa: E731
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                          f"Python {platform.python_version()}", "audit_root": str(audit_root),
               "audit_commit": git_commit(audit_root), "sets": list(SCENARIO_SETS) + args.set, "scenarios": []}
    for sc in list(S.SHORTCUTS) + list(S.SCENARIOS):
        if sc.name not in wanted:
            continue
        log(f"[{sc.name}]")
        entry = run_scenario(sc, cache, out, audit_root, args.set, not args.no_baselines, log)
        results["scenarios"].append(entry)
        log(f"  flip {_flips(entry)}; clean accuracy {entry['clean_accuracy']:.3f}; {entry['audit_size']} audit images; "
            f"audit {entry['audit_seconds']:.0f} s; {entry['n_findings']} findings, {len(entry['confirmed'])} confirmed")
        for m in METHODS:
            if entry.get(m):
                log(f"  {m:8s} hit@{entry['k']} {scenario_hit(entry, m)!s:5s} "
                    + "; ".join(f"{c}: {_cell(s)}" for c, s in entry[m].items()))
        for key in ("missing_cue", "global_cue"):
            if key in entry:
                log(f"  {key}: {entry[key]}")
        (out / "discovery.partial.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    planted_ = [e for e in results["scenarios"] if not e["null"]]
    results["hits"] = {m: (sum(bool(scenario_hit(e, m)) for e in planted_), sum(e.get(m) is not None for e in planted_))
                       for m in METHODS}
    results["mean_p@10"] = mean_p10(results["scenarios"])
    if args.demo_runs > 0:
        log("[demo]")
        results["demo"] = run_demo(out, args.demo_runs, cache, audit_root, args.set, log)
    results["seconds"] = time.perf_counter() - start
    results["acceptance"] = acceptance(results)
    (out / "discovery.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "discovery.md").write_text(markdown(results))
    (out / "discovery.partial.json").unlink(missing_ok=True)
    print("\n".join(["", "Acceptance:"] + [f"  {a}" for a in results["acceptance"]]))
    print(f"wrote {out / 'discovery.json'} and {out / 'discovery.md'} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
