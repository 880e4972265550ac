"""Verify: occlusion and transplant tests on a hand-built model whose logit a red patch drives.

The model answers "red" (class 1) exactly when some pixel is pure red enough
(``max relu(R - G - B - 0.5) > 0.1``): a red 3x3 patch on a grey image flips it
from "grey" (class 0). So occluding the patch must undo every error, pasting it
onto clean images must flip every one of them, and random regions of the same
area almost never do either.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.config import resolve
from audit.findings import Finding
from audit.maps import top_region
from audit.stages.verify import verify

SIDE = 16
CLASSES = ["grey", "red"]


@pytest.fixture(scope="module")
def red_detector():
    import keras

    from audit.model_io import Classifier

    inputs = keras.Input((SIDE, SIDE, 3))
    conv = keras.layers.Conv2D(1, 1, activation="relu", name="detector")
    pooled = keras.layers.GlobalMaxPooling2D()(conv(inputs))
    dense = keras.layers.Dense(2)
    model = keras.Model(inputs, dense(pooled))
    conv.set_weights([np.array([1.0, -1.0, -1.0]).reshape(1, 1, 3, 1), np.array([-0.5])])
    dense.set_weights([np.array([[0.0, 10.0]]), np.array([1.0, 0.0])])
    return Classifier(model)


def _grey(rng):
    return np.clip(128 + rng.normal(0, 6, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """10 grey images with a red patch (errors: predicted red), 20 clean grey ones."""
    root = tmp_path_factory.mktemp("verify")
    rng = np.random.default_rng(0)
    rows, maps, patches = [], [], []
    for i in range(30):
        img = _grey(rng)
        cam = np.zeros((SIDE, SIDE), np.float32)
        if i < 10:
            y, x = (int(v) for v in rng.integers(1, SIDE - 4, 2))
            img[y:y + 3, x:x + 3] = (255, 0, 0)
            cam[y:y + 3, x:x + 3] = 1.0
            patches.append((y, x))
        Image.fromarray(img).save(root / f"{i}.png")
        maps.append(cam)
        rows.append({"row": i, "path": f"{i}.png", "label": "grey", "predicted": "red" if i < 10 else "grey",
                     "margin": 0.9, "error": None})
    return root, pd.DataFrame(rows), np.arange(30), np.stack(maps), patches


def _finding(fid, rows, support=0.1):
    return Finding(id=fid, true_label="grey", predicted_label="red", rows=tuple(rows),
                   members=tuple(f"{r}.png" for r in rows), support=support, coherence=0.5,
                   centrality=(0.0,) * len(rows))


def _config(*sets):
    # region tests only: the property (global-cue) tests have their own (tests/test_properties.py)
    return resolve(None, ["data.preprocess=unit", "verify.budget=100", "verify.properties=false", *sets],
                   {"out": "unused"})


def test_top_region_is_the_attributed_patch(case):
    _, _, _, maps, patches = case
    mask = top_region(maps[0], 16, 0.2)
    y, x = patches[0]
    expected = np.zeros((SIDE, SIDE), bool)
    expected[y:y + 3, x:x + 3] = True
    np.testing.assert_array_equal(mask, expected)
    assert top_region(np.zeros((SIDE, SIDE)), 16, 0.2) is None
    # a region larger than max_area keeps the highest cells only
    assert top_region(np.ones((SIDE, SIDE)) + np.eye(SIDE), 16, 0.05).sum() == int(0.05 * 256)


def test_patch_is_causal_and_a_wrong_explanation_is_not(case, red_detector):
    root, predictions, map_rows, maps, _ = case
    # a second finding over the same errors, whose maps point away from the patch
    wrong_maps = maps.copy()
    for i in range(10):
        wrong_maps[i] = np.roll(maps[i], SIDE // 2, axis=1)
    findings = [_finding("F-patch", range(10), support=0.1), _finding("F-elsewhere", range(10), support=0.15)]
    config = _config("verify.samples=20", "verify.max_samples=20")
    out = verify(config, root, CLASSES, predictions, map_rows, maps, findings[:1], red_detector)
    v = out[0].to_json()["verification"]
    assert v["verified"] and v["members_tested"] == 10
    assert (v["occlusion"]["n"], v["occlusion"]["flipped"]) == (10, 10)
    assert v["occlusion"]["random_rate"] <= 0.2 and v["occlusion"]["lift"] >= 0.8
    assert (v["transplant"]["n"], v["transplant"]["flipped"]) == (20, 20)
    assert v["transplant"]["random_rate"] <= 0.3 and v["transplant"]["lift"] >= 0.7
    assert out[0].causal == pytest.approx(max(v["occlusion"]["lift"], v["transplant"]["lift"]))
    assert v["mean_area"] == pytest.approx(9 / 256, abs=1e-4)

    elsewhere = verify(config, root, CLASSES, predictions, map_rows, wrong_maps, findings[1:], red_detector)[0]
    assert elsewhere.to_json()["verification"]["occlusion"]["flipped"] == 0
    assert elsewhere.to_json()["verification"]["transplant"]["flipped"] <= 4
    assert elsewhere.causal <= 0.2
    # causal evidence re-ranks: the verified patch beats a larger but non-causal finding
    ranked = sorted([out[0], elsewhere], key=lambda f: -f.score)
    assert ranked[0].id == "F-patch"


def test_rounds_caps_and_switches(case, red_detector):
    root, predictions, map_rows, maps, _ = case
    findings = [_finding("F-1", range(10), 0.3), _finding("F-2", range(5), 0.1)]
    out = verify(_config("verify.max_findings=1", "verify.samples=4", "verify.max_samples=6"),
                 root, CLASSES, predictions, map_rows, maps, findings, red_detector)
    first = next(f for f in out if f.id == "F-1").to_json()
    second = next(f for f in out if f.id == "F-2").to_json()
    v = first["verification"]
    # occlusion: 4 of 4 flipped against none, conclusive after one round; transplant within the cap
    assert v["occlusion"]["n"] == 4 and v["occlusion"]["lift"] == 1.0 and v["occlusion"]["se"] == 0.0
    assert v["transplant"]["n"] in (4, 6) and v["rounds"] == (1 if v["transplant"]["n"] == 4 else 2)
    assert not second["verification"]["verified"] and "max_findings" in second["verification"]["reason"]
    assert second["causal"] == 0.0 and [f.rank for f in out] == [1, 2]
    # an ambiguous test takes more rounds, up to max_samples
    noisy = maps.copy()
    for i in range(0, 10, 2):   # half the maps point away from the patch
        noisy[i] = np.roll(maps[i], SIDE // 2, axis=1)
    more = verify(_config("verify.samples=4", "verify.max_samples=8", "verify.max_se=0.01"), root, CLASSES,
                  predictions, map_rows, noisy, [_finding("F-4", range(10))], red_detector)[0].to_json()["verification"]
    assert more["rounds"] == 2 and more["occlusion"]["n"] == 8 and more["transplant"]["n"] == 8
    # the budget: ceil(30 attributed images x 1.1) = 33 passes; a first round of 4 + 4 costs 16
    tight = verify(_config("verify.samples=4", "verify.max_se=0.01", "verify.budget=1.1"), root, CLASSES,
                   predictions, map_rows, noisy, [_finding(f"F-{i}", range(10), 0.5 - i / 10) for i in range(5)],
                   red_detector)
    verified = [f.verification.verified for f in sorted(tight, key=lambda f: f.id)]
    assert verified == [True, True, False, False, False]
    assert "budget" in next(f for f in tight if f.id == "F-2").verification.reason
    off = verify(_config("verify.enabled=false"), root, CLASSES, predictions, map_rows, maps,
                 [_finding("F-3", range(10))], red_detector)
    assert not off[0].verification.verified and off[0].causal == 0.0
