"""Trust signals: faithfulness, sanity checks, agreement, completeness gap, summary and report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from audit.errors import UsageError
from audit.explainers import register
from audit.explainers.base import unregister
from audit.explainers.base import Explainer, blur, check_inputs
from audit.trust import agreement, faithfulness, sanity
from audit.trust.similarity import spearman, ssim
from tests.conftest import build_model

EDGE = "edge_detector"


class EdgeDetector(Explainer):
    """Tests only: the image's gradient magnitude, which ignores the model entirely."""

    def explain(self, classifier, images, targets):
        images, _ = check_inputs(classifier, images, targets)
        gy, gx = np.gradient(images.mean(axis=-1), axis=(1, 2))
        return np.hypot(gy, gx).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def edge_detector():
    """The test-only method, registered for this module's tests only (other modules run every
    registered method and must not see it, whatever the test order)."""
    register(EDGE)(EdgeDetector)
    yield EDGE
    unregister(EDGE)


# ---------------------------------------------------------------- similarity

def test_spearman_and_ssim_by_hand():
    a = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    assert spearman(a, a)[0] == pytest.approx(1.0)
    assert spearman(a, 11 - a)[0] == pytest.approx(-1.0)
    assert spearman(a, 2 * a + 5)[0] == pytest.approx(1.0)       # ranks only
    assert np.isnan(spearman(a, np.zeros_like(a))[0])            # a constant map has no ranking
    assert ssim(a, a)[0] == pytest.approx(1.0)
    assert ssim(a, 3 * a)[0] == pytest.approx(1.0)               # each map scaled by its peak
    assert ssim(a, 11 - a)[0] < 0.5


# ---------------------------------------------------------------- faithfulness

def test_pixel_ranks_order_ties_and_regions():
    m = np.array([[[0.0, 5.0, 0.0, 1.0], [2.0, 0.0, 0.0, 0.0]]])
    ranks = faithfulness.pixel_ranks(m)[0]
    assert ranks[0, 1] == 0 and ranks[1, 0] == 1 and ranks[0, 3] == 2
    assert sorted(ranks.ravel().tolist()) == list(range(8))
    zeros = ranks[m[0] == 0]
    other_seed = faithfulness.pixel_ranks(m, seed=1)[0][m[0] == 0]
    assert set(zeros.tolist()) == set(range(3, 8)) and not np.array_equal(zeros, other_seed)
    # regions first: the right 2x2 cell (mean 0.25) goes before the left cell's zeros but the
    # left cell (mean 1.75) holds the two largest pixels, so it goes first as a whole
    regions = faithfulness.pixel_ranks(m, grid=2)[0]
    assert sorted(regions[:, :2].ravel().tolist()) == [0, 1, 2, 3]
    assert regions[0, 3] == 4


def _max_red_model(shape=(24, 24, 3)):
    """logit_0 = 12 * (max over pixels of red / 255 - 0.5), logit_1 = 0: the evidence is the brightest red."""
    import keras

    inputs = keras.Input(shape)
    red = keras.layers.Conv2D(1, 1, use_bias=False, name="red")(inputs)
    pooled = keras.layers.GlobalMaxPooling2D()(red)
    logits = keras.layers.Dense(2, name="head")(pooled)
    model = keras.Model(inputs, logits)
    model.get_layer("red").set_weights([np.array([1.0, 0.0, 0.0], np.float32).reshape(1, 1, 3, 1) / 255.0])
    model.get_layer("head").set_weights([np.array([[12.0, 0.0]], np.float32), np.array([-6.0, 0.0], np.float32)])
    return model


def _red_squares(n=6, shape=(24, 24, 3), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 40, (n, *shape)).astype(np.float32)
    for i in range(n):
        y0, x0 = rng.integers(2, shape[0] - 6, 2)
        x[i, y0:y0 + 4, x0:x0 + 4, 0] = 255.0
    return x


def test_curves_endpoints_are_the_image_and_its_blur():
    from audit.explainers.base import classifier_of

    classifier = classifier_of(_max_red_model())
    images = _red_squares(3)
    targets = np.zeros(3, np.int32)
    deletion, insertion = faithfulness.curves(classifier, images, targets, [images[..., 0]], steps=4,
                                              batch_size=5)
    assert deletion.shape == insertion.shape == (1, 3, 5)

    def prob(x):
        logits = classifier.logits(x)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True))[:, 0]

    full, blurred = prob(images), prob(blur(images, 24 / 10.0))
    np.testing.assert_allclose(deletion[0, :, 0], full, atol=1e-5)
    np.testing.assert_allclose(deletion[0, :, -1], blurred, atol=1e-4)   # device blur = explainers' blur
    np.testing.assert_allclose(insertion[0, :, 0], blurred, atol=1e-4)
    np.testing.assert_allclose(insertion[0, :, -1], full, atol=1e-5)
    # batch size does not change anything
    again = faithfulness.curves(classifier, images, targets, [images[..., 0]], steps=4, batch_size=64)
    np.testing.assert_allclose(again[0], deletion, atol=1e-6)


def test_oracle_map_beats_random_and_anti_oracle_loses():
    from audit.explainers.base import classifier_of

    classifier = classifier_of(_max_red_model())
    images = _red_squares(8)
    targets = np.zeros(8, np.int32)
    oracle = images[..., 0]
    maps = [oracle, -oracle] + [faithfulness.random_maps(8, (24, 24), seed=s) for s in range(3)]
    deletion, insertion = faithfulness.curves(classifier, images, targets, maps, steps=8, batch_size=32, grid=6)
    d, i = faithfulness.auc(deletion).mean(axis=1), faithfulness.auc(insertion).mean(axis=1)
    assert d[0] < d[2:].min() - 0.05 and i[0] > i[2:].max() + 0.05
    assert d[1] > d[2:].max() and i[1] < i[2:].min()


def test_auc_by_hand():
    assert faithfulness.auc(np.array([1.0, 0.0])) == pytest.approx(0.5)
    assert faithfulness.auc(np.array([[1.0, 1.0, 0.0]]))[0] == pytest.approx(0.75)


# ---------------------------------------------------------------- sanity

def test_cascade_groups_layers_from_the_top():
    layers = list(range(7))
    groups = sanity.cascade(layers, 3)
    assert [len(g) for g in groups] in ([2, 3, 2], [3, 2, 2], [2, 2, 3])
    assert groups[0][0] == 6 and sorted(sum(groups, [])) == layers
    assert sanity.cascade(layers[:2], 5) == [[1], [0]]


@pytest.mark.parametrize("kind", ["nested", "softmax_layer", "logits"])
def test_cascading_randomization_restores_the_model(kind):
    from audit.explainers import get
    from audit.explainers.base import classifier_of

    model = build_model(kind)
    classifier = classifier_of(model)
    images = np.random.default_rng(1).uniform(0, 255, (3, 20, 24, 3)).astype(np.float32)
    targets = np.array([0, 1, 2], np.int32)
    before = [w.copy() for w in model.get_weights()]
    logits = classifier.logits(images)
    methods = {"gradcam": get("gradcam")(), EDGE: EdgeDetector()}
    originals = {m: e.explain(classifier, images, targets) for m, e in methods.items()}
    steps = sanity.cascading_randomization(classifier, images, targets, methods, originals, steps=10)
    weighted = sanity.weighted_layers(model)
    assert len(steps) == len(weighted)                     # one layer per step: conv, conv, dense
    assert steps[0]["layers"] == [weighted[-1].name] and steps[-1]["layers"] == [weighted[0].name]
    assert all(s["methods"][EDGE]["spearman"] == pytest.approx(1.0) for s in steps)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(classifier.logits(images), logits, rtol=1e-6)


def test_reinitialise_uses_the_layer_initializers():
    import keras

    dense = keras.layers.Dense(4, kernel_initializer="glorot_uniform", bias_initializer="zeros")
    dense.build((None, 8))
    dense.set_weights([np.full((8, 4), 9.0, np.float32), np.full(4, 9.0, np.float32)])
    sanity.reinitialise(dense, seed=3)
    kernel, bias = dense.get_weights()
    limit = np.sqrt(6.0 / (8 + 4))
    assert np.abs(kernel).max() <= limit and kernel.std() > 0 and np.all(bias == 0)


def test_random_logit_asks_for_another_class():
    calls = []

    class Recorder(Explainer):
        def explain(self, classifier, images, targets):
            calls.append(np.asarray(targets).copy())
            return np.random.default_rng(len(calls)).random(images.shape[:3]).astype(np.float32)

    from audit.explainers.base import classifier_of

    classifier = classifier_of(build_model("plain"))
    images = np.zeros((6, 20, 24, 3), np.float32)
    targets = np.array([0, 1, 2, 0, 1, 2], np.int32)
    out = sanity.random_logit(classifier, images, targets, {"r": Recorder()}, {"r": np.ones((6, 20, 24))})
    assert np.all(calls[0] != targets) and calls[0].min() >= 0 and calls[0].max() < 3
    assert set(out["r"]) == {"spearman", "ssim"}


# ---------------------------------------------------------------- agreement, gap

def test_agreement_per_image_and_pairs():
    rng = np.random.default_rng(0)
    a = rng.random((4, 16, 16))
    maps = {"x": a, "y": a * 3, "z": a[:, ::-1] - 0.5}
    pairs = agreement.per_image(maps, grid=8)
    assert set(pairs) == {"x~y", "x~z", "y~z"}
    np.testing.assert_allclose(pairs["x~y"], 1.0)
    assert np.all(pairs["x~z"] < 0.5)
    per_image = agreement.image_agreement({"p": np.array([1.0, np.nan]), "q": np.array([0.0, np.nan])})
    assert per_image[0] == pytest.approx(0.5) and np.isnan(per_image[1])
    assert agreement.nanmean([np.nan, 1.0, 0.0]) == pytest.approx(0.5) and agreement.nanmean([np.nan]) is None


def test_stored_completeness_gap_matches_explain_with_gap(tmp_path):
    """The attribute stage stores IG's gap and f(x) - f(baseline) beside its maps; trust reads them."""
    import pandas as pd
    from PIL import Image

    from audit import artifacts
    from audit.config import resolve
    from audit.explainers import IntegratedGradients
    from audit.explainers.base import classifier_of
    from audit.stages.attribute import attribute_partition

    model = build_model("softmax_layer")
    model_path = tmp_path / "m.keras"
    model.save(model_path)
    pixels = np.random.default_rng(2).integers(0, 256, (5, 20, 24, 3), dtype=np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / f"{i}.png")
    part = pd.DataFrame({"row": np.arange(5), "path": [f"{i}.png" for i in range(5)],
                         "pair_label": ["a", "b", "c", "b", "a"]})
    config = resolve(sets=["attribution.methods=[integrated_gradients]", "attribution.batch_size=7",
                           "attribution.params={integrated_gradients: {steps: 4, rule: left}}"],
                     flags={"model.path": str(model_path), "out": str(tmp_path / "run")})
    attribute_partition(config, tmp_path, ["a", "b", "c"], part, 0)
    classifier = classifier_of(model)
    ig = IntegratedGradients(batch_size=7, steps=4, rule="left")
    maps, expected = ig.explain_with_gap(classifier, pixels.astype(np.float32), np.array([0, 1, 2, 1, 0], np.int32))
    rows, gap = artifacts.read_map_values(tmp_path / "run", "integrated_gradients", "gap")
    _, diff = artifacts.read_map_values(tmp_path / "run", "integrated_gradients", "difference")
    assert rows.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(gap, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(diff, maps.sum(axis=(1, 2)) - expected, rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(diff) > 0)


# ---------------------------------------------------------------- config

def test_trust_config_keys():
    from audit.config import KEYS, defaults, resolve

    assert {f"trust.{k}" for k in defaults()["trust"]} <= set(KEYS)
    config = resolve(sets=["attribution.methods=[gradcam,occlusion]", "trust.methods=[occlusion]"])
    from audit.stages.trust import methods_of

    assert methods_of(config) == ["occlusion"]
    for bad, key in (("trust.methods=[integrated_gradients]", "trust.methods"), ("trust.steps=1", "trust.steps"),
                     ("trust.sample=0", "trust.sample"), ("trust.max_spearman=2", "trust.max_spearman")):
        with pytest.raises(UsageError, match=f"`{key}`"):
            resolve(sets=["attribution.methods=[gradcam]", bad])


def test_sanity_size_follows_sample_and_budget():
    from audit.config import resolve
    from audit.explainers.base import classifier_of
    from audit.stages.trust import sanity_size

    classifier = classifier_of(build_model("nested"))      # 3 weighted layers: 3 steps + the random logit
    config = resolve(sets=["trust.sanity_sample=8", "trust.sanity_budget=0.1"])
    assert sanity_size(config, 1000, 12, classifier) == 8  # the sample cap
    assert sanity_size(config, 200, 12, classifier) == 5   # 0.1 * 200 / 4
    assert sanity_size(config, 200, 3, classifier) == 3    # no more than the faithfulness sample
    assert sanity_size(config, 10, 12, classifier) == 2    # at least 2
    assert sanity_size(resolve(sets=["trust.sanity_sample=0"]), 1000, 12, classifier) == 0


def test_finding_trust_badges():
    from audit.config import resolve
    from audit.findings import Finding
    from audit.stages.trust import finding_trust

    config = resolve(sets=["trust.min_agreement=0.4", "trust.min_lift=0.2", "trust.min_size=3"])
    def finding(rows, verification):
        return Finding.from_json({"id": "F-1", "members": [str(r) for r in rows], "rows": rows,
                                  "verification": verification})

    tested = finding([3, 5, 9], {"verified": True, "occlusion": {"n": 8, "lift": 0.4, "se": 0.05},
                                 "transplant": {"n": 8, "lift": 0.5, "se": 0.1}})
    t = finding_trust(config, tested, {3: 0.2, 5: 0.8, 9: None})
    assert t.to_json() == {"agreement": 0.5, "n_images": 2, "lift": 0.5, "agrees": True, "confirmed": True,
                           "level": "high", "limits": [],
                           "text": "the maps agree and pasting the region flips 0% of 8 images"}
    # a large lift that is not conclusive (lift - 3 se <= 0) confirms nothing
    noisy = finding([3, 5], {"verified": True, "transplant": {"n": 8, "lift": 0.5, "se": 0.2}})
    assert finding_trust(config, noisy, {3: 0.8}).confirmed is False
    # hiding the region must undo the prediction too: pasting alone (a genuine feature) confirms nothing
    noisy = finding([3, 5], {"verified": True, "occlusion": {"n": 8, "lift": 0.0, "se": 0.0},
                             "transplant": {"n": 8, "lift": 0.5, "se": 0.1}})
    assert finding_trust(config, noisy, {3: 0.8}).confirmed is False
    # never high below trust.min_size, nor when the method driving discovery fails its own checks
    small = finding_trust(resolve(sets=["trust.min_agreement=0.4", "trust.min_lift=0.2", "trust.min_size=4"]),
                          tested, {3: 0.2, 5: 0.8, 9: None})
    assert small.level == "medium" and small.limits == ("only 3 images (trust.min_size 4)",)
    unfaithful = finding_trust(config, tested, {3: 0.2, 5: 0.8}, {"faithful": False, "sanity": True})
    assert unfaithful.level == "medium" and "gradcam, which drives discovery, fails faithfulness" in unfaithful.text
    measured = finding([3, 5, 9], {"verified": True, "occlusion": {"n": 32, "flipped": 32, "lift": 0.9}})
    assert finding_trust(config, measured, {3: 0.5}).text == \
        "the maps agree and hiding the region flips 100% of 32 images"
    weak = finding_trust(config, finding([3], {"verified": False, "reason": "budget"}), {3: 0.2})
    assert weak.lift is None and weak.confirmed is None and weak.agrees is False and weak.level == "low"
    unverified = finding_trust(config, finding([5], {"verified": False}), {5: 0.8})
    assert unverified.agrees is True and unverified.level == "medium"


def test_trust_of_an_empty_selection_has_no_badges(tmp_path):
    import pandas as pd

    from audit.config import resolve
    from audit.explainers.base import classifier_of
    from audit.stages.trust import summary_figures, trust

    config = resolve(sets=["attribution.methods=[gradcam,occlusion]"])
    selection = pd.DataFrame({"row": pd.Series([], dtype="int64"), "path": pd.Series([], dtype=str),
                              "pair_label": pd.Series([], dtype=str)})
    result = trust(config, ".", ["a", "b", "c"], selection, tmp_path, classifier_of(build_model("nested")))
    figures = summary_figures(result)
    cam = figures["methods"]["gradcam"]
    assert cam["badge"] == {"sanity": None, "faithful": None, "trusted": False}
    assert figures["sample"] == {"faithfulness": 0, "sanity": 0}
    assert figures["agreement"]["mean"] is None and figures["completeness_gap"] is None
    json.dumps(figures, allow_nan=False)


# ---------------------------------------------------------------- the pipeline, summary and report

@pytest.fixture(scope="module")
def trust_run(audit_case, tmp_path_factory):
    """An in-process audit of the planted-cue case with Grad-CAM, LRP and the edge detector."""
    from audit import pipeline
    from audit.config import resolve

    out = tmp_path_factory.mktemp("trust") / "run"
    logs: list[str] = []
    sets = [f"attribution.methods=[gradcam,lrp,{EDGE}]", "run_id=trust", "trust.sample=12", "trust.sanity_sample=6",
            "trust.sanity_budget=1"]
    config = resolve(None, sets, {"model.path": str(audit_case / "model.keras"),
                                  "data.path": str(audit_case / "manifest.csv"),
                                  "data.classes": str(audit_case / "classes.txt"), "out": str(out)})
    summary = pipeline.run(config, log=logs.append)
    return config, out, summary, logs


def test_summary_has_trust_figures_and_the_edge_detector_fails_sanity(trust_run):
    _, out, summary, _ = trust_run
    assert summary == json.loads((out / "summary.json").read_text())
    json.dumps(summary, allow_nan=False)                 # no NaN: strict JSON readers load it
    trust = summary["trust"]
    edge, cam = trust["methods"][EDGE], trust["methods"]["gradcam"]
    assert edge["sanity"]["final_spearman"] == pytest.approx(1.0, abs=1e-3)  # stored maps are float16
    assert edge["sanity"]["passed"] is False and edge["badge"]["trusted"] is False
    assert cam["sanity"]["final_spearman"] < 0.5 and cam["sanity"]["passed"] is True
    assert cam["faithfulness"]["deletion_auc"] < trust["random"]["deletion_auc"]
    assert cam["faithfulness"]["insertion_auc"] > trust["random"]["insertion_auc"]
    assert len(trust["random"]["deletion_auc_per_seed"]) == trust["settings"]["random_maps"] == 2
    assert set(trust["agreement"]["pairs"]) == {"gradcam~lrp", f"gradcam~{EDGE}", f"lrp~{EDGE}"}
    lrp = trust["methods"]["lrp"]                        # checked like any method
    assert lrp["sanity"]["final_spearman"] is not None and lrp["faithfulness"]["deletion_auc"] is not None
    assert trust["completeness_gap"] is None            # no IG maps in this run
    assert trust["sample"] == {"faithfulness": 12, "sanity": 6}
    assert summary["findings"] and all(set(f["trust"]) >= {"agreement", "lift", "level"} for f in summary["findings"])
    assert all(f["trust"]["n_images"] == f["size"] for f in summary["findings"])


def test_trust_stage_is_keyed_and_resumable(trust_run, tmp_path):
    import shutil

    from audit import pipeline
    from audit.config import resolve

    config, first, summary, _ = trust_run
    out = tmp_path / "run"
    shutil.copytree(first, out)
    stored = list(out.glob("chunks/trust-*/part-00000.json"))
    assert len(stored) == 1
    logs: list[str] = []
    changed = resolve(None, [f"attribution.methods=[gradcam,lrp,{EDGE}]", "run_id=trust", "trust.sample=12",
                             "trust.sanity_sample=6", "trust.sanity_budget=1", "trust.max_spearman=0.05"],
                      {"model.path": config.model.path, "data.path": config.data.path,
                       "data.classes": config.data.classes, "out": str(out)})
    again = pipeline.run(changed, log=logs.append)
    text = "\n".join(logs)
    assert "reusing" in text and "attribute chunks" in text        # attribution not recomputed
    assert "trust chunks" not in text                              # the trust stage was: new key
    assert not stored[0].exists() and len(list(out.glob("chunks/trust-*/part-00000.json"))) == 1
    cam = again["trust"]["methods"]["gradcam"]
    assert cam["sanity"]["final_spearman"] == summary["trust"]["methods"]["gradcam"]["sanity"]["final_spearman"]
    assert cam["sanity"]["passed"] is (abs(cam["sanity"]["final_spearman"]) < 0.05)


def test_trust_disabled_gives_null(audit_case, tmp_path):
    from audit import pipeline
    from audit.config import resolve

    config = resolve(None, ["trust.enabled=false", "run_id=notrust"],
                     {"model.path": str(audit_case / "model.keras"), "data.path": str(audit_case / "manifest.csv"),
                      "data.classes": str(audit_case / "classes.txt"), "out": str(tmp_path / "run")})
    summary = pipeline.run(config, log=lambda _m: None)
    assert summary["trust"] is None and all(f["trust"] is None for f in summary["findings"])
    assert 'id="trust"' not in (tmp_path / "run" / "index.html").read_text()


def test_report_shows_trust_badges(trust_run):
    _, out, summary, _ = trust_run
    html = (out / "index.html").read_text(encoding="utf-8")
    assert '<section class="part" id="trust">' in html and "<h2>Trust</h2>" in html
    assert f'data-method="{EDGE}" data-trusted="false" data-sanity="false"' in html
    assert 'data-method="gradcam" data-trusted="true" data-sanity="true"' in html
    assert 'data-method="lrp" data-trusted=' in html
    assert f'data-untrusted="{EDGE}"' in html and 'data-untrusted="gradcam"' not in html
    for f in summary["findings"]:
        assert f'data-finding="{f["id"]}" data-level="{f["trust"]["level"]}"' in html
        assert f'href="#{f["id"]}"' in html
    from tests.test_report import trust_pictures

    pictures = trust_pictures(html, out)
    assert len(pictures) == 3 and all(width > 100 for width, _ in pictures.values())
    assert not any("completeness gap" in alt for alt in pictures)   # no IG in this run

