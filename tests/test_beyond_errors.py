"""Beyond errors: strategies, linked findings, cue slices, global cues and the cue in words.

A hand-built "shortcut" model answers "gravel" exactly when a magenta ring is in the
image (``max relu(R + B - 2G - 100)``) and "grass" otherwise: it is right on gravel
images *because of* the ring. Its audit set follows that bias: most gravel images
carry the ring in the top-right corner (right for the wrong reason), a few do not
(called grass: the cue's absence), and some grass images carry it (called gravel:
the victims). A second hand-built model calls any image without fine detail
"smooth": blurring its "texture" images flips them, a global cue no region carries.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.config import resolve

SIDE = 24
RING = (1, 15)          # top-left corner (y, x) of the 8x8 ring: the top-right corner of the image


def _shortcut_model():
    import keras

    inputs = keras.Input((SIDE, SIDE, 3))
    conv = keras.layers.Conv2D(2, 1, activation="relu", name="cue")
    dense = keras.layers.Dense(2)
    model = keras.Model(inputs, dense(keras.layers.GlobalMaxPooling2D()(conv(inputs))))
    # channel 0: magenta (R + B - 2G - 100); channel 1: green (G - (R + B) / 2 - 10)
    conv.set_weights([np.array([[1.0, -0.5], [-2.0, 1.0], [1.0, -0.5]]).reshape(1, 1, 3, 2), np.array([-100.0, -10.0])])
    dense.set_weights([np.array([[0.0, 0.1], [0.0, 0.0]]), np.array([1.0, 0.0])])   # grass: bias 1; gravel: 0.1 x ring
    return model


def _texture(rng, green: bool) -> np.ndarray:
    base = np.array([70, 140, 60] if green else [125, 120, 115], np.float32)
    return np.clip(base + rng.normal(0, 8, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)


def _ring(img: np.ndarray) -> np.ndarray:
    y, x = RING
    img = img.copy()
    img[y:y + 8, x:x + 8] = (255, 0, 255)
    img[y + 2:y + 6, x + 2:x + 6] = img[y + 2, x - 4]   # hollow: the background shows through
    return img


@pytest.fixture(scope="module")
def shortcut_run(tmp_path_factory):
    """The shortcut model audited end to end (Grad-CAM only, no trust or internals)."""
    from audit.pipeline import run

    root = tmp_path_factory.mktemp("shortcut")
    rng = np.random.default_rng(3)
    rows = []
    for label, n, with_ring in (("grass", 40, 12), ("gravel", 40, 30)):
        (root / label).mkdir()
        for i in range(n):
            img = _texture(rng, label == "grass")
            cue = i < with_ring
            Image.fromarray(_ring(img) if cue else img).save(root / label / f"{i:02d}.png")
            rows.append({"path": f"{label}/{i:02d}.png", "label": label, "cue": int(cue)})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    (root / "classes.txt").write_text("grass\ngravel\n")
    _shortcut_model().save(root / "model.keras")
    config = resolve(None, ["attribution.methods=[gradcam]", "trust.enabled=false", "internals.enabled=false",
                            "verify.budget=5", "history.path=null"],
                     {"model.path": str(root / "model.keras"), "data.path": str(root / "manifest.csv"),
                      "data.classes": str(root / "classes.txt"), "out": str(root / "run")})
    run(config, log=lambda line: None)
    summary = json.loads((root / "run" / "summary.json").read_text())
    return summary, pd.DataFrame(rows)


def _by_kind(summary, kind, true, predicted):
    return [f for f in summary["findings"]
            if f["kind"] == kind and f["true_label"] == true and f["predicted_label"] == predicted]


def test_a_model_right_for_the_wrong_reason_gets_a_confirmed_strategy_finding(shortcut_run):
    summary, truth = shortcut_run
    strategies = _by_kind(summary, "strategy", "gravel", "gravel")
    assert len(strategies) == 1, [(f["kind"], f["true_label"], f["predicted_label"]) for f in summary["findings"]]
    s = strategies[0]
    carriers = set(truth.loc[(truth["label"] == "gravel") & (truth["cue"] == 1), "path"])
    assert len(set(s["members"]) & carriers) / len(s["members"]) >= 0.8          # purity
    assert len(set(s["members"]) & carriers) / len(carriers) >= 0.5              # recall
    occlusion, transplant = s["verification"]["occlusion"], s["verification"]["transplant"]
    assert occlusion["lift"] >= 0.5 and transplant["lift"] >= 0.5, json.dumps([s["verification"], s["properties"]])
    assert s["id"].startswith("F-") and s["rank"] >= 1 and s["score"] > 0


def test_one_cue_one_story_links_victims_strategy_and_missing_cue_group(shortcut_run):
    summary, _ = shortcut_run
    by_id = {f["id"]: f for f in summary["findings"]}
    strategy = _by_kind(summary, "strategy", "gravel", "gravel")[0]
    victims = _by_kind(summary, "error", "grass", "gravel")
    missing = _by_kind(summary, "error", "gravel", "grass")
    assert victims and missing
    relations = {(r["id"], r["relation"]) for r in strategy["related"]}
    assert any((v["id"], "same_cue") in relations for v in victims), strategy["related"]
    assert any((m["id"], "missing_cue") in relations for m in missing), json.dumps([{k: f[k] for k in ("id", "kind", "true_label", "predicted_label", "size", "related", "cue_slice", "verification")} for f in summary["findings"]])
    # the slice the cue defines: gravel images with the ring are all right, those without all wrong
    cue_slice = strategy["cue_slice"]
    assert cue_slice["label"] == "gravel"
    assert (cue_slice["n_with"], cue_slice["n_without"]) == (30, 10)
    assert (cue_slice["accuracy_with"], cue_slice["accuracy_without"]) == (1.0, 0.0)
    # the root cause ranks first, the group its absence explains under it
    ranks = {f["id"]: f["rank"] for f in summary["findings"]}
    story = [victims[0]["id"], strategy["id"], missing[0]["id"]]
    assert [ranks[i] for i in story] == sorted(ranks[i] for i in story)
    assert ranks[story[0]] == 1
    assert "without the cue gravel relies on" in by_id[missing[0]["id"]]["cue"]["text"]


def test_the_cue_in_words_says_where_what_colour_and_how_large(shortcut_run):
    summary, _ = shortcut_run
    cue = _by_kind(summary, "strategy", "gravel", "gravel")[0]["cue"]
    assert cue["type"] == "local"
    assert cue["where"] == "top-right corner"
    assert cue["colour"] == "magenta"
    assert 0.02 <= cue["area"] <= 0.2
    assert cue["text"].startswith("a ") and "magenta" in cue["text"] and "top-right corner" in cue["text"]
