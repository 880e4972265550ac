"""Trust: does each attribution method, and each finding, deserve to be believed?

Runs after attribute, in the driver, on the run's stored maps (``trust.methods``,
default every attribution method), read chunk by chunk: all of them only pooled to
``trust.grid``, the sample's at full resolution; the metrics live in ``audit.trust``:

1. agreement: rank correlation between every pair of methods, on every
   attributed image (maps area-pooled to ``trust.grid`` squared cells);
2. faithfulness: deletion and insertion curves (blur baseline, ``trust.steps``
   steps, cells of the same ``trust.grid`` first) of each method's maps and of
   ``trust.random_maps`` uniform random maps (one seed each) on a seeded sample
   of ``trust.sample`` attributed images;
3. sanity, once per audit on the first images of that sample: cascading
   randomization of the model's layers from the top (at most
   ``trust.randomization_steps`` steps) and the random-logit test. Each image is
   explained again by every method once per step and once for the random class,
   so the number of images is bounded like verification's work: at most
   ``trust.sanity_sample``, and at most ``trust.sanity_budget`` times the
   attributed images divided by (steps + 1), but at least 2 (``sanity_size``);
4. the completeness gap of integrated gradients on every attributed image
   (when the run has IG maps), as the attribute stage stored it beside the maps.

Badges. A method passes sanity when its maps of the fully randomized model have
a mean Spearman correlation with the original maps below ``trust.max_spearman``
in absolute value (an inverted ranking is as much the image's as the same one)
and its maps for a random other class stay below
``trust.max_random_logit_spearman`` likewise. It is faithful when its deletion AUC is
below, and its insertion AUC above, the random maps' by more than
``trust.min_margin``. A finding's maps agree when its members' mean agreement
is at least ``trust.min_agreement``, and its cue is confirmed when its occlusion and
transplant lifts (those that ran) are at least ``trust.min_lift``, or a property
test's at least ``verify.min_property_lift``, each conclusive (``lift - 3 se > 0``;
``audit.findings.Finding.confirmed``); its
trust ``level`` is ``high`` when both hold, ``medium`` when one does, else ``low``.

``trust(...)`` returns the whole result (written to the run folder);
``summary_figures`` is what ``summary.json`` keeps of it (top-level ``"trust"``) and
``with_trust`` gives each finding its ``trust`` record (its level capped below high when
the finding is smaller than ``trust.min_size`` or the method driving discovery fails
its own checks, and a line in plain words).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from audit import artifacts
from audit.config import Config
from audit.data import load_images, preprocess
from audit.findings import Finding, FindingTrust
from audit.maps import area_pool
from audit.trust import agreement, faithfulness, sanity

IG = "integrated_gradients"
GAP_BINS = 20


def methods_of(config: Config) -> list[str]:
    """The methods ``config`` checks: ``trust.methods`` (in attribution order) or every attribution method."""
    chosen = config.trust.methods
    return [m for m in config.attribution.methods if chosen is None or m in chosen]


def explainer_for(config: Config, method: str):
    """The explainer of ``method`` as the attribute stage builds it from ``config`` (``attribution.params``
    included, so the same maps)."""
    from audit.stages.attribute import explainers

    return explainers(config)[method]


def sanity_size(config: Config, n_attributed: int, n_sample: int, classifier) -> int:
    """Images for the sanity checks: within ``trust.sanity_sample`` and ``trust.sanity_budget``.

    ``config`` gives both; ``n_attributed``: images the attribute stage explained (the budget's
    base, shared by ``steps + 1`` re-explanations); ``n_sample``: the faithfulness sample;
    ``classifier``: its weighted layers cap the randomization steps. At least 2 (within the sample).
    """
    steps = min(config.trust.randomization_steps, len(sanity.weighted_layers(classifier.model)))
    budget = int(config.trust.sanity_budget * n_attributed / (steps + 1))
    return min(config.trust.sanity_sample, n_sample, max(budget, 2))


def trust(config: Config, root: Path, classes: list[str], selection: pd.DataFrame, run_dir: Path,
          classifier=None) -> dict:
    """All trust figures of a run.

    Parameters
    ----------
    config : Config
        ``trust.*``, ``attribution.*``, ``data.*`` and ``seed``.
    root, classes : Path, list of str
        The manifest's folder and the class names in model output order.
    selection : pd.DataFrame
        The select stage's table (``row``, ``path``, ``pair_label``).
    run_dir : Path
        The run folder, whose maps (and IG's stored gaps) the attribute stage wrote.
    classifier : audit.model_io.Classifier, optional
        Default ``classifier_for(config)``.

    Returns
    -------
    dict
        JSON-ready: ``methods`` (per method: ``faithfulness``, ``sanity``,
        ``badge``), ``random``, ``agreement`` (with per-image ``rows``/``values``),
        ``completeness_gap``, ``sample``, ``settings``.
    """
    if classifier is None:
        from audit.model_io import classifier_for

        classifier = classifier_for(config)
    grid = config.trust.grid
    pooled = {m: artifacts.read_maps(run_dir, m, each=lambda x: area_pool(np.maximum(x, 0.0), grid, grid))
              for m in methods_of(config)}
    methods = list(pooled)
    rows = _common_rows([pooled[m][0] for m in methods])
    by_row = selection.set_index(selection["row"].astype(np.int64), drop=False)
    chosen = by_row.loc[rows] if len(rows) else selection.iloc[:0]
    lookup = {name: i for i, name in enumerate(classes)}
    targets = chosen["pair_label"].map(lookup).to_numpy(np.int32)
    paths = chosen["path"].tolist()

    rng = np.random.default_rng(config.seed)
    sample = np.sort(rng.choice(len(rows), size=min(config.trust.sample, len(rows)), replace=False))
    images = _load(config, root, classifier, [paths[i] for i in sample])
    steps, seed = config.trust.steps, config.seed
    batch = config.attribution.batch_size
    n_random = config.trust.random_maps
    hw = classifier.input_size
    sampled = {m: _aligned(artifacts.read_maps(run_dir, m, rows=rows[sample]), rows[sample]) for m in methods}
    curve_maps = [sampled[m] for m in methods] + \
                 [faithfulness.random_maps(len(sample), hw, seed=seed * 1000 + r) for r in range(n_random)]
    deletion, insertion = faithfulness.curves(classifier, images, targets[sample], curve_maps, steps, batch,
                                                 grid=config.trust.grid, seed=seed)
    random = _random_baseline(deletion[len(methods):], insertion[len(methods):])

    n_sanity = sanity_size(config, len(rows), len(sample), classifier)
    explainers = {m: explainer_for(config, m) for m in methods}
    originals = {m: sampled[m][:n_sanity] for m in methods}
    sanity_images, sanity_targets = images[:n_sanity], targets[sample[:n_sanity]]
    cascade = sanity.cascading_randomization(classifier, sanity_images, sanity_targets, explainers, originals,
                                             config.trust.randomization_steps, seed) if n_sanity else []
    logit = sanity.random_logit(classifier, sanity_images, sanity_targets, explainers, originals, seed) \
        if n_sanity else None

    result_methods = {}
    for j, m in enumerate(methods):
        faith = _faithfulness(deletion[j], insertion[j], random, config,
                              deletion[len(methods):], insertion[len(methods):])
        check = _sanity(m, cascade, logit, config)
        result_methods[m] = {"faithfulness": faith, "sanity": check,
                             "badge": {"sanity": check["passed"], "faithful": faith["passed"],
                                       "trusted": bool(check["passed"] and faith["passed"])}}

    pairs = agreement.per_image({m: _aligned(pooled[m], rows) for m in methods}, grid)
    per_image = agreement.image_agreement(pairs)
    return {
        "methods": result_methods,
        "random": random,
        "agreement": {"mean": agreement.nanmean(per_image),
                      "pairs": {p: agreement.nanmean(v) for p, v in pairs.items()},
                      "n_images": int(np.isfinite(per_image).sum()),
                      "rows": rows.tolist(), "values": _json_floats(per_image)},
        "completeness_gap": _gap(run_dir, rows) if IG in methods else None,
        "sample": {"faithfulness": int(len(sample)), "sanity": int(n_sanity),
                   "rows": rows[sample].tolist()},
        "settings": {"steps": steps, "random_maps": n_random, "grid": config.trust.grid,
                     "randomization_steps": config.trust.randomization_steps},
    }


def summary_figures(result: dict | None) -> dict | None:
    """The run's trust figures for ``summary.json`` (``trust``): ``result`` without its per-image detail."""
    if result is None:
        return None
    return {
        **{k: v for k, v in result.items() if k not in ("agreement", "sample")},
        "agreement": {k: v for k, v in result["agreement"].items() if k not in ("rows", "values")},
        "sample": {k: v for k, v in result["sample"].items() if k != "rows"},
        "completeness_gap": {k: v for k, v in result["completeness_gap"].items() if k != "values"}
        if result["completeness_gap"] else None,
    }


def with_trust(config: Config, findings: list[Finding], result: dict | None) -> list[Finding]:
    """Each of ``findings`` with its ``trust`` (``finding_trust`` under ``config``'s thresholds; None when the
    trust stage did not run: ``result`` None, else the ``trust`` stage's figures)."""
    if result is None:
        return [dataclasses.replace(f, trust=None) for f in findings]
    by_row = dict(zip(result["agreement"]["rows"], result["agreement"]["values"]))
    driver = result["methods"].get(config.attribution.methods[0], {}).get("badge")
    return [dataclasses.replace(f, trust=finding_trust(config, f, by_row, driver)) for f in findings]


def finding_trust(config: Config, finding: Finding, agreement_by_row: dict[int, float | None],
                  driver: dict | None = None) -> FindingTrust:
    """Agreement of the members of ``finding`` and its verification lift, their badges, the trust level
    and one line in plain words.

    ``agreement_by_row``: the mean Spearman between methods per prediction row (None where
    undefined); ``config``: ``trust.min_agreement``, ``trust.min_lift``, ``trust.min_size``.
    The level is high (agrees and confirmed), medium (one) or low, but never high when the
    finding, or the number of images its intervention test ran on, is below ``trust.min_size``,
    nor when the method driving discovery (``driver``: its badge, ``sanity`` / ``faithful``)
    fails one of its own checks; ``limits`` says which of these capped it.
    """
    values = [agreement_by_row.get(int(r)) for r in finding.rows]
    finite = [v for v in values if v is not None]
    mean = agreement.nanmean(finite) if finite else None
    v = finding.verification
    lift = finding.best_lift
    agrees = None if mean is None else bool(mean >= config.trust.min_agreement)
    confirmed = None if lift is None else finding.confirmed(config.trust.min_lift, config.verify.min_property_lift)
    level = ("low", "medium", "high")[int(bool(agrees)) + int(bool(confirmed))]
    tested = max((t.n for t in (v.occlusion, v.transplant) if t is not None and t.n), default=None) \
        if v is not None and v.verified else None
    limits = []
    if finding.size < config.trust.min_size:
        limits.append(f"only {finding.size} images (trust.min_size {config.trust.min_size})")
    elif tested is not None and tested < config.trust.min_size:
        limits.append(f"tested on only {tested} images (trust.min_size {config.trust.min_size})")
    method = config.attribution.methods[0]
    for check, words in (("faithful", "faithfulness"), ("sanity", "the sanity checks")):
        if driver is not None and driver.get(check) is False:
            limits.append(f"{method}, which drives discovery, fails {words}")
    if limits and level == "high":
        level = "medium"
    return FindingTrust(agreement=_round(mean), n_images=len(finite), lift=_round(lift),
                        agrees=agrees, confirmed=confirmed, level=level,
                        text=trust_text(agrees, _best_test(v), limits), limits=tuple(limits))


def _best_test(v) -> tuple[str, int, int] | None:
    """The intervention test with the larger lift: (name, images flipped, images tested)."""
    if v is None or not v.verified:
        return None
    tests = [(t.lift, name, t.flipped, t.n) for name, t in (("hiding", v.occlusion), ("pasting", v.transplant))
             if t is not None and t.n and t.lift is not None]
    return max(tests)[1:] if tests else None


def trust_text(agrees: bool | None, test: tuple[str, int, int] | None, limits: list[str]) -> str:
    """The trust judgement in plain words, e.g. "the maps agree and hiding the region flips 100% of 32 images".

    ``agrees``: the maps' agreement badge; ``test``: (verb, flipped, n) of the best intervention
    test, or None; ``limits``: caveats appended after "but".
    """
    maps = {True: "the maps agree", False: "the maps disagree", None: "the maps were not compared"}[agrees]
    if test is None:
        region = "the region was not tested by intervention"
    else:
        name, flipped, n = test
        region = f"{name} the region flips {flipped / n:.0%} of {n} images"
    return f"{maps} and {region}" + (f"; but {'; '.join(limits)}" if limits else "")


def _common_rows(row_sets: list[np.ndarray]) -> np.ndarray:
    if not row_sets:
        return np.zeros(0, np.int64)
    common = row_sets[0]
    for other in row_sets[1:]:
        common = np.intersect1d(common, other)
    return np.unique(common).astype(np.int64)


def _aligned(stored: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """The values of ``stored`` (rows, values) in the order of ``rows``."""
    index = {int(r): i for i, r in enumerate(stored[0])}
    return np.asarray(stored[1])[[index[int(r)] for r in rows]] if len(rows) else stored[1][:0]


def _load(config: Config, root: Path, classifier, paths: list[str]) -> np.ndarray:
    images, _ = load_images(root, paths, classifier.input_size, config.data.max_pixels, classifier.input_shape[2])
    return preprocess(images, config.data.preprocess)


def _random_baseline(deletion: np.ndarray, insertion: np.ndarray) -> dict:
    """Random-map AUCs: mean over seeds and images, and each seed's mean (its spread)."""
    per_seed_del = faithfulness.auc(deletion).mean(axis=1) if deletion.size else np.zeros(0)
    per_seed_ins = faithfulness.auc(insertion).mean(axis=1) if insertion.size else np.zeros(0)
    return {"deletion_auc": _round(per_seed_del.mean()) if len(per_seed_del) else None,
            "insertion_auc": _round(per_seed_ins.mean()) if len(per_seed_ins) else None,
            "deletion_auc_per_seed": _json_floats(per_seed_del),
            "insertion_auc_per_seed": _json_floats(per_seed_ins),
            "curves": {"deletion": _json_floats(deletion.mean(axis=(0, 1))) if deletion.size else [],
                       "insertion": _json_floats(insertion.mean(axis=(0, 1))) if insertion.size else []}}


def _faithfulness(deletion: np.ndarray, insertion: np.ndarray, random: dict, config: Config,
                  random_deletion: np.ndarray | None = None, random_insertion: np.ndarray | None = None) -> dict:
    """AUCs of one method ``[n, steps + 1]`` and their margins over the random maps (positive = better).

    With the random maps' curves (``[seeds, n, steps + 1]``), each margin also gets its standard
    error over the ``n`` images (paired: each image against its own random maps), ``*_se``, and
    ``conclusive`` says whether both margins are at least 2 standard errors from
    ``trust.min_margin``, i.e. whether a run on another sample would likely say the same.
    """
    if not deletion.size or random["deletion_auc"] is None:
        return {"deletion_auc": None, "insertion_auc": None, "deletion_margin": None,
                "insertion_margin": None, "passed": None, "n": 0, "deletion_se": None, "insertion_se": None,
                "conclusive": None, "curves": {"deletion": [], "insertion": []}}
    d, i = float(faithfulness.auc(deletion).mean()), float(faithfulness.auc(insertion).mean())
    d_margin, i_margin = random["deletion_auc"] - d, i - random["insertion_auc"]
    n = int(len(deletion))
    d_se = i_se = None
    if random_deletion is not None and random_deletion.size and n > 1:
        d_each = faithfulness.auc(random_deletion).mean(axis=0) - faithfulness.auc(deletion)
        i_each = faithfulness.auc(insertion) - faithfulness.auc(random_insertion).mean(axis=0)
        d_se, i_se = (float(np.std(x, ddof=1) / np.sqrt(n)) for x in (d_each, i_each))
    floor = config.trust.min_margin
    conclusive = None if d_se is None else bool(abs(d_margin - floor) >= 2 * d_se and abs(i_margin - floor) >= 2 * i_se)
    return {"deletion_auc": _round(d), "insertion_auc": _round(i),
            "deletion_margin": _round(d_margin), "insertion_margin": _round(i_margin),
            "passed": bool(d_margin > floor and i_margin > floor), "n": n,
            "deletion_se": _round(d_se), "insertion_se": _round(i_se), "conclusive": conclusive,
            "curves": {"deletion": _json_floats(deletion.mean(axis=0)),
                       "insertion": _json_floats(insertion.mean(axis=0))}}


def _sanity(method: str, cascade: list[dict], logit: dict | None, config: Config) -> dict:
    steps = [{"step": s["step"], "top_layer": s["top_layer"], "layers": s["layers"],
              "spearman": _round(s["methods"][method]["spearman"]), "ssim": _round(s["methods"][method]["ssim"])}
             for s in cascade]
    final = steps[-1]["spearman"] if steps else None
    cascade_ok = None if final is None else bool(abs(final) < config.trust.max_spearman)
    rl = logit.get(method) if logit else None
    rl_out = None if rl is None else {"spearman": _round(rl["spearman"]), "ssim": _round(rl["ssim"]),
                                      "passed": bool(abs(rl["spearman"]) < config.trust.max_random_logit_spearman)}
    checks = [c for c in (cascade_ok, None if rl_out is None else rl_out["passed"]) if c is not None]
    return {"cascading": steps, "final_spearman": final, "cascading_passed": cascade_ok,
            "random_logit": rl_out, "passed": all(checks) if checks else None}


def _gap(run_dir: Path, rows: np.ndarray) -> dict | None:
    """IG completeness gap over every attributed image, as the attribute stage stored it."""
    gaps, diffs = (artifacts.read_map_values(run_dir, IG, name) for name in ("gap", "difference"))
    if gaps is None or diffs is None or not len(rows):
        return None
    gap, diff = _aligned(gaps, rows), _aligned(diffs, rows)
    relative = np.abs(gap) / np.maximum(np.abs(diff), 1e-6)
    counts, edges = np.histogram(gap, bins=GAP_BINS)
    return {"n": int(len(gap)), "mean": _round(gap.mean()), "mean_abs": _round(np.abs(gap).mean()),
            "median_abs": _round(np.median(np.abs(gap))), "p90_abs": _round(np.quantile(np.abs(gap), 0.9)),
            "median_relative": _round(np.median(relative)),
            "histogram": {"counts": counts.tolist(), "edges": _json_floats(edges)},
            "values": _json_floats(gap)}


def _round(x, digits: int = 6) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), digits)


def _json_floats(values) -> list[float | None]:
    return [_round(v) for v in np.asarray(values, np.float64).ravel()]
