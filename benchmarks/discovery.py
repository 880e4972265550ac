"""Cue discovery on planted-cue scenarios: does the audit find the cue, and do the baselines?

For every scenario of ``scenarios.SCENARIOS`` (built offline and cached, see that
module) the full audit runs with the shipped defaults (``audit.pipeline.run``);
then the same run's artifacts are clustered by three baselines:

* ``spray``: SpRAy with CoRelAy's defaults, per confusion pair on the same selected
  images: heat maps area-pooled to 32x32 and scaled by their largest magnitude,
  Euclidean distances, binary kNN affinity (k = 10, symmetrised as
  ``(A + A^T) / 2``), symmetric normalised Laplacian, the 32 smallest eigenpairs
  with unit-length rows, k-means with ``k`` at the largest eigengap. Clusters are
  ranked by their number of errors; members by distance to their k-means centre.
* ``domino``: a Domino-style error-aware Gaussian mixture over *all* readable audit
  images: penultimate activations (PCA to at most 128 dimensions, standardised),
  the one-hot label and the predicted probabilities (both weighted x10, as Domino's
  ``y_log_likelihood_weight``), 25 diagonal components; slices ranked by their
  error rate (then size); members by responsibility.
* ``largest``: each confusion pair's misclassified images as one cluster, ranked by
  size; members most confidently wrong first.

Each scenario is audited with ``attribution.methods=[gradcam]``: discovery and
verification read the first method's maps only, so the default's integrated
gradients and occlusion would cost minutes without changing a figure. The demo is
audited with the defaults, as a user runs it.

Ground truth: the ``cue`` column of the audit manifest (never read by the audit).
The cue slice is the cue-bearing images whose label is not the cue class; the
target errors are those of them predicted as the cue class.

Metrics per scenario and method:

* ``hit@1``: the rank-1 cluster has purity >= 0.8 (share of its members in the cue
  slice) and recall >= 0.5 (share of the target errors among its members);
* ``p@10``: dcbench-style best-match precision at 10: the largest share of cue-slice
  images among the first 10 members of any cluster (a cluster of fewer than 10
  counts its missing places as misses);
* ``purity``, ``recall``: of the rank-1 cluster;
* ``false_discoveries``: the audit's findings (all of them verified for this count,
  without the run's verification budget) whose transplant flip rate exceeds the
  random-region rate by more than 0.3, other than a finding on the planted pair;
  on the null scenario every finding counts.

The demo (``audit demo``, cached in ``reports/.cache/demo``) is audited ``--demo-runs``
times, each in a fresh process, for the rank-1 finding's transplant flip rate and
occlusion lift and the time of discover + verify against attribute (median over runs).

Writes ``discovery.json`` and ``discovery.md`` into ``--out``; prints the
acceptance figures.

    python benchmarks/discovery.py --out benchmarks/results [--cache DIR] [--scenarios a,b] [--demo-runs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

import scenarios as S

ROOT = Path(__file__).resolve().parents[1]
PURITY, RECALL, FD_LIFT, K = 0.8, 0.5, 0.3, 10
METHODS = ("ours", "spray", "domino", "largest")


# ---------------------------------------------------------------- running the audit

def audit(model: Path, manifest: Path, classes: Path, out: Path, sets: tuple[str, ...] = ()) -> dict:
    from audit import pipeline
    from audit.config import resolve

    config = resolve(None, list(sets), {"model.path": str(model), "data.path": str(manifest),
                                        "data.classes": str(classes), "out": str(out), "run_id": out.name})
    summary = pipeline.run(config, log=lambda _m: None)
    return {"config": config, "summary": summary, "run": json.loads((out / "run.json").read_text())}


def load_run(out: Path) -> dict:
    from audit import artifacts

    z = np.load(out / artifacts.FEATURES)
    rows, maps = artifacts.read_maps(out, "gradcam")
    return {"predictions": artifacts.read_table(out / artifacts.PREDICTIONS),
            "selection": artifacts.read_table(out / artifacts.SELECTION),
            "map_rows": rows, "maps": maps, "feature_rows": z["row"], "features": z["features"]}


# ---------------------------------------------------------------- baselines (each: ranked list of member-row lists)

def spray(art: dict, min_pair: int = 4) -> list[list[int]]:
    from sklearn.cluster import KMeans

    from audit.maps import area_pool

    map_of = {int(r): i for i, r in enumerate(art["map_rows"])}
    sel = art["selection"]
    clusters = []
    for _, part in sel[sel["reason"] != "contrast"].groupby(["true_label", "pair_label"]):
        if len(part) < min_pair:
            continue
        rows = part["row"].astype(int).to_numpy()
        maps = area_pool(art["maps"][[map_of[r] for r in rows]], 32, 32).reshape(len(rows), -1)
        maps = maps / np.maximum(np.abs(maps).max(axis=1, keepdims=True), 1e-12)
        d = np.sqrt(np.maximum(((maps[:, None, :] - maps[None, :, :]) ** 2).sum(-1), 0))
        n, k = len(rows), min(10, len(rows) - 1)
        a = np.zeros((n, n))
        a[np.repeat(np.arange(n), k), np.argsort(d, axis=1, kind="stable")[:, 1:k + 1].ravel()] = 1.0
        a = (a + a.T) / 2
        deg = a.sum(1)
        inv = 1 / np.sqrt(np.maximum(deg, 1e-12))
        values, vectors = np.linalg.eigh(inv[:, None] * a * inv[None, :])
        values, vectors = 1 - values[::-1], vectors[:, ::-1]
        m = min(32, n - 1)
        values, vectors = values[:m], vectors[:, :m]
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        n_clusters = int(np.argmax(np.diff(values)) + 1) if m > 1 else 1
        km = KMeans(n_clusters=n_clusters, n_init=10, random_state=0).fit(vectors)
        dist = np.linalg.norm(vectors - km.cluster_centers_[km.labels_], axis=1)
        wrong = (part["reason"] == "misclassified").to_numpy()
        for c in range(n_clusters):
            inside = np.flatnonzero(km.labels_ == c)
            order = inside[np.argsort(dist[inside], kind="stable")]
            clusters.append((int(wrong[inside].sum()), len(inside), rows[order].tolist()))
    clusters.sort(key=lambda c: (-c[0], -c[1]))
    return [c[2] for c in clusters]


def penultimate(model_path: Path, root: Path, paths: list[str], preprocess: str = "none") -> np.ndarray:
    import keras

    from audit.data import load_images
    from audit.data import preprocess as prep

    model = keras.models.load_model(model_path, compile=False)
    head = keras.Model(model.inputs, model.layers[-1].input)
    images, _ = load_images(root, paths, tuple(model.inputs[0].shape[1:3]))
    return head.predict(prep(images, preprocess), batch_size=128, verbose=0)


def domino(art: dict, embeddings: np.ndarray, classes: list[str], n_components: int = 25,
           weight: float = 10.0) -> list[list[int]]:
    from sklearn.mixture import GaussianMixture

    from audit.clustering import pca

    pred = art["predictions"]
    ok = pred["error"].isna().to_numpy()
    p = pred[ok]
    emb = pca(embeddings[ok], min(128, ok.sum() - 1, embeddings.shape[1]))
    emb = emb / np.maximum(emb.std(axis=0), 1e-12)
    y = np.eye(len(classes))[p["label"].map(classes.index).to_numpy()]
    yhat = np.stack(p["probs"].to_numpy())
    x = np.hstack([emb, weight * y, weight * yhat])
    gm = GaussianMixture(n_components, covariance_type="diag", reg_covar=1e-3, random_state=0).fit(x)
    resp = gm.predict_proba(x)
    hard = resp.argmax(axis=1)
    wrong = (p["predicted"] != p["label"]).to_numpy()
    rows = p["row"].astype(int).to_numpy()
    slices = []
    for c in range(n_components):
        inside = np.flatnonzero(hard == c)
        if len(inside) == 0:
            continue
        order = inside[np.argsort(-resp[inside, c], kind="stable")]
        slices.append((float(wrong[inside].mean()), len(inside), rows[order].tolist()))
    slices.sort(key=lambda s: (-s[0], -s[1]))
    return [s[2] for s in slices]


def largest(art: dict) -> list[list[int]]:
    pred = art["predictions"]
    wrong = pred[pred["error"].isna() & (pred["predicted"] != pred["label"])]
    clusters = []
    for _, part in wrong.groupby(["label", "predicted"]):
        part = part.sort_values("confidence", ascending=False, kind="stable")
        clusters.append(part["row"].astype(int).tolist())
    clusters.sort(key=lambda c: -len(c))
    return clusters


# ---------------------------------------------------------------- metrics

def score(ranked: list[list[int]], cue_slice: set[int], targets: set[int]) -> dict:
    top = ranked[0] if ranked else []
    purity = len(set(top) & cue_slice) / len(top) if top else 0.0
    recall = len(set(top) & targets) / len(targets) if targets else 0.0
    p10 = max((len(set(c[:K]) & cue_slice) / K for c in ranked), default=0.0)
    return {"hit@1": bool(purity >= PURITY and recall >= RECALL), "p@10": round(p10, 3),
            "purity": round(purity, 3), "recall": round(recall, 3), "n_clusters": len(ranked),
            "top_size": len(top)}


def false_discoveries(config, art: dict, findings: list[dict], root: Path, classes: list[str],
                      planted: tuple[str, str] | None) -> tuple[int, list[dict]]:
    """Verify every finding (not only the top ``verify.max_findings``) and count those
    whose transplant lift exceeds ``FD_LIFT`` outside the planted pair."""
    import copy

    from audit.config import resolve
    from audit.stages.verify import verify

    everything = resolve(None, [f"verify.max_findings={max(len(findings), 1)}", "verify.budget=1000"],
                         {"model.path": config.model.path, "out": config.out})
    checked = verify(everything, root, classes, art["predictions"], art["map_rows"], art["maps"],
                     copy.deepcopy(findings))
    flagged = []
    for f in checked:
        lift = f["verification"].get("transplant", {}).get("lift")
        if lift is not None and lift > FD_LIFT and (planted is None or (f["true_label"], f["predicted_label"]) != planted):
            flagged.append({"id": f["id"], "pair": f"{f['true_label']} -> {f['predicted_label']}", "size": f["size"],
                            "transplant_lift": lift})
    return len(flagged), flagged


def run_scenario(sc: S.Scenario, cache: Path, out: Path, log) -> dict:
    prepared = S.prepare(sc, cache, log)
    classes = [c.strip() for c in prepared.classes.read_text().splitlines() if c.strip()]
    run_dir = out / "runs" / sc.name
    start = time.perf_counter()
    # discovery and verification use the first method's maps only: the others would cost time, not change a figure
    result = audit(prepared.model, prepared.manifest, prepared.classes, run_dir, ("attribution.methods=[gradcam]",))
    seconds = time.perf_counter() - start
    art = load_run(run_dir)
    pred = art["predictions"]
    cue = pred["cue"].astype(bool).to_numpy()
    rows = pred["row"].astype(int).to_numpy()
    findings = result["summary"]["findings"]
    timings = result["run"]["timings"]
    entry = {"scenario": sc.name, "base": sc.base, "cue": sc.cue, "position": sc.position, "arch": sc.arch,
             "cue_class": sc.cue_class, "victim": sc.victim, "val_accuracy": prepared.info.get("val_accuracy"),
             "audit_seconds": round(seconds, 1), "timings": timings,
             "accuracy": result["summary"]["metrics"]["accuracy"], "n_findings": len(findings)}
    victims = pred["label"] == sc.victim
    entry["victim_cue_rate"] = round(float((pred.loc[victims & cue, "predicted"] == (sc.cue_class or "")).mean()), 3) \
        if sc.cue_class else None
    if sc.cue_class is not None:
        entry["clean_victim_rate"] = round(float((pred.loc[victims & ~cue, "predicted"] == sc.cue_class).mean()), 3)
        cue_slice = set(rows[cue & (pred["label"] != sc.cue_class).to_numpy()].tolist())
        targets = set(rows[cue & (pred["label"] != sc.cue_class).to_numpy()
                           & (pred["predicted"] == sc.cue_class).to_numpy()].tolist())
        embeddings = penultimate(prepared.model, prepared.manifest.parent, pred["path"].tolist())
        ranked = {"ours": [f["rows"] for f in findings], "spray": spray(art),
                  "domino": domino(art, embeddings, classes), "largest": largest(art)}
        entry["methods"] = {m: score(ranked[m], cue_slice, targets) for m in METHODS}
        entry["n_targets"] = len(targets)
        top = findings[0] if findings else None
        entry["top"] = None if top is None else {
            "pair": f"{top['true_label']} -> {top['predicted_label']}", "size": top["size"],
            "score": top["score"], "verification": top.get("verification")}
    planted = (sc.victim, sc.cue_class) if sc.cue_class else None
    entry["false_discoveries"], entry["flagged"] = false_discoveries(
        result["config"], art, findings, prepared.manifest.parent, classes, planted)
    entry["findings"] = [{"rank": f["rank"], "pair": f"{f['true_label']} -> {f['predicted_label']}",
                          "size": f["size"], "n_errors": f["n_errors"], "score": f["score"],
                          "support": f.get("support"), "coherence": f.get("coherence"), "causal": f.get("causal"),
                          "cue_share": round(float(cue[np.isin(rows, f["rows"])].mean()), 3)}
                         for f in findings]
    return entry


def run_demo(out: Path, runs: int, log) -> dict:
    """``audit demo`` ``runs`` times, each in a fresh process as a user runs it (so the
    attribute stage includes its one-off tracing, as in every real run)."""
    import subprocess

    ratios, summary = [], None
    for i in range(runs):
        run_dir = out / "runs" / f"demo-{i}"
        result = subprocess.run([sys.executable, "-m", "audit.cli", "demo", "--out", str(run_dir), "--quiet",
                                 "--cache", str(ROOT / "reports" / ".cache" / "demo")],
                                capture_output=True, text=True, cwd=ROOT)
        if result.returncode not in (0, 1):
            raise RuntimeError(f"audit demo failed: {result.stderr[-2000:]}")
        t = json.loads((run_dir / "run.json").read_text())["timings"]
        summary = json.loads((run_dir / "summary.json").read_text())
        ratios.append({"attribute": t["attribute"], "discover": t["discover"], "verify": t.get("verify", 0.0),
                       "ratio": round((t["discover"] + t.get("verify", 0.0)) / t["attribute"], 3)})
        log(f"  demo run {i + 1}: discover {t['discover']:.3f} s + verify {t.get('verify', 0.0):.3f} s "
            f"= {ratios[-1]['ratio']:.1%} of attribute {t['attribute']:.3f} s")
    top = summary["findings"][0]
    v = top["verification"]
    return {"top": {"pair": f"{top['true_label']} -> {top['predicted_label']}", "size": top["size"],
                    "id": top["id"], "verification": v},
            "transplant_rate": v["transplant"]["rate"], "occlusion_lift": v["occlusion"]["lift"],
            "timings": ratios, "median_ratio": float(np.median([r["ratio"] for r in ratios])),
            "report": str(out / "runs" / f"demo-{runs - 1}" / "index.html")}


# ---------------------------------------------------------------- output

def markdown(results: dict) -> str:
    lines = ["# Cue discovery benchmark", "",
             f"{results['machine']}; {results['seconds']:.0f} s in all. Hit@1: rank-1 cluster purity >= {PURITY} and "
             f"recall >= {RECALL}; p@10: best-match precision at 10; purity/recall of the rank-1 cluster.", "",
             "| scenario | cue | position | model | victims fooled | " + " | ".join(
                 f"{m} hit@1 / p@10 / purity / recall" for m in METHODS) + " | false disc. |",
             "|---|---|---|---|---:|" + "---|" * len(METHODS) + "---:|"]
    for e in results["scenarios"]:
        cells = []
        for m in METHODS:
            s = e.get("methods", {}).get(m)
            cells.append("—" if s is None else
                         f"{'✓' if s['hit@1'] else '✗'} / {s['p@10']:.2f} / {s['purity']:.2f} / {s['recall']:.2f}")
        fooled = "—" if e["victim_cue_rate"] is None else f"{e['victim_cue_rate']:.0%}"
        lines.append(f"| {e['scenario']} | {e['cue']} | {e['position']} | {e['arch']} | {fooled} | "
                     + " | ".join(cells) + f" | {e['false_discoveries']} |")
    mean = results["mean_p@10"]
    lines += ["", "Mean p@10 over planted scenarios: " + ", ".join(f"{m} {mean[m]:.3f}" for m in METHODS) + ".", "",
              f"False discoveries: the audit's findings, all verified without budget, whose transplant lift exceeds "
              f"{FD_LIFT} (on planted scenarios, outside the planted pair):"]
    for e in results["scenarios"]:
        for f in e["flagged"]:
            lines.append(f"- {e['scenario']}: {f['pair']} ({f['size']} images), transplant lift {f['transplant_lift']:.2f}")
    lines.append("")
    d = results.get("demo")
    if d:
        lines += [f"Demo: rank-1 finding {d['top']['pair']} ({d['top']['size']} images): transplant flips "
                  f"{d['transplant_rate']:.0%} of clean pools, occlusion lift {d['occlusion_lift']:.2f}; "
                  f"discover + verify = {d['median_ratio']:.1%} of attribute (median of {len(d['timings'])} runs: "
                  + ", ".join(f"{t['discover'] + t['verify']:.3f}/{t['attribute']:.3f} s" for t in d["timings"]) + ")."]
    lines += ["", "## Acceptance", ""] + [f"- {a}" for a in results["acceptance"]]
    return "\n".join(lines) + "\n"


def acceptance(results: dict) -> list[str]:
    planted = [e for e in results["scenarios"] if e.get("methods")]
    nulls = [e for e in results["scenarios"] if not e.get("methods")]
    mean = results["mean_p@10"]
    positions = {}
    for e in planted:
        positions.setdefault(e["cue"], set()).add(e["position"])
    covered = all({"fixed", "random"} <= p for cue, p in positions.items() if p != {"global"})
    out = [f"every positioned cue planted both fixed and random: {covered} ("
           + ", ".join(f"{cue}: {'/'.join(sorted(p))}" for cue, p in sorted(positions.items())) + ")",
           f"Hit@1 (ours) on every planted scenario: {all(e['methods']['ours']['hit@1'] for e in planted)} ("
           + ", ".join(f"{e['scenario']} {'✓' if e['methods']['ours']['hit@1'] else '✗'}" for e in planted) + ")",
           f"ours beats every baseline on mean p@10: {all(mean['ours'] > mean[m] for m in METHODS[1:])} ("
           + ", ".join(f"{m} {mean[m]:.3f}" for m in METHODS) + ")",
           "zero false discoveries on the null scenarios: "
           + ", ".join(f"{e['scenario']} {e['false_discoveries']}" for e in nulls)]
    d = results.get("demo")
    if d:
        out += [f"demo transplant flips >= 50% of clean pools: {d['transplant_rate'] >= 0.5} ({d['transplant_rate']:.0%})",
                f"demo occlusion lift > 0.3: {d['occlusion_lift'] > 0.3} ({d['occlusion_lift']:.2f})",
                f"demo discover + verify <= 15% of attribute: {d['median_ratio'] <= 0.15} ({d['median_ratio']:.1%})"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--cache", default=None, help="scenario cache (default <out>/cache)")
    parser.add_argument("--scenarios", default=",".join(s.name for s in S.SCENARIOS))
    parser.add_argument("--demo-runs", type=int, default=3, help="0 skips the demo")
    args = parser.parse_args()
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "cache"
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.scenarios.split(","))
    start = time.perf_counter()
    log = lambda m: print(m, flush=True)  # noqa: E731
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                          f"Python {platform.python_version()}", "scenarios": []}
    for sc in S.SCENARIOS:
        if sc.name not in wanted:
            continue
        log(f"[{sc.name}]")
        entry = run_scenario(sc, cache, out, log)
        results["scenarios"].append(entry)
        for m, s in entry.get("methods", {}).items():
            log(f"  {m:8s} hit@1 {s['hit@1']!s:5s} p@10 {s['p@10']:.2f} purity {s['purity']:.2f} recall {s['recall']:.2f}")
        log(f"  false discoveries {entry['false_discoveries']}; victims fooled {entry['victim_cue_rate']}")
    planted = [e for e in results["scenarios"] if e.get("methods")]
    results["mean_p@10"] = {m: float(np.mean([e["methods"][m]["p@10"] for e in planted])) if planted else 0.0
                            for m in METHODS}
    if args.demo_runs > 0:
        log("[demo]")
        results["demo"] = run_demo(out, args.demo_runs, log)
    results["seconds"] = time.perf_counter() - start
    results["acceptance"] = acceptance(results)
    (out / "discovery.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "discovery.md").write_text(markdown(results))
    print("\n".join(["", "Acceptance:"] + [f"  {a}" for a in results["acceptance"]]))
    print(f"wrote {out / 'discovery.json'} and {out / 'discovery.md'} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
