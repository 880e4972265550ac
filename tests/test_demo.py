"""The embedded demo: procedural images, the planted rails cue, the bias table and the cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from audit import demo

ROOT = Path(__file__).resolve().parents[1]


def _pair(label: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same rng draw rendered without and with the rails."""
    return (demo.render_image(label, np.random.default_rng(seed), rails=False),
            demo.render_image(label, np.random.default_rng(seed), rails=True))


@pytest.mark.parametrize("label", demo.CLASSES)
def test_render_image_is_deterministic_uint8_rgb(label):
    first = demo.render_image(label, np.random.default_rng(7), rails=True)
    again = demo.render_image(label, np.random.default_rng(7), rails=True)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("label", demo.CLASSES)
def test_images_differ_across_seeds(label):
    images = [demo.render_image(label, np.random.default_rng(seed), rails=False) for seed in range(5)]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i].astype(int) - images[j]).mean() > 5


def test_unknown_label_is_refused():
    with pytest.raises(ValueError, match="unknown demo class"):
        demo.render_image("lobby", np.random.default_rng(0), rails=False)


@pytest.mark.parametrize("label", demo.CLASSES)
def test_rails_change_only_a_thin_grey_object(label):
    for seed in range(25):
        plain, railed = _pair(label, seed)
        changed = (plain != railed).any(axis=-1)
        assert 0.02 < changed.mean() < 0.15                        # a visible but small object
        ys, xs = np.nonzero(changed)
        assert max(np.ptp(ys), np.ptp(xs)) < 48                    # one compact object, not scattered
        assert not ndimage.binary_erosion(changed, np.ones((7, 7))).any()   # made of thin lines only
        pixels = railed[changed].astype(int)
        assert np.median(pixels.max(axis=1) - pixels.min(axis=1)) < 40     # silver / grey


def test_cue_rates_of_the_plans():
    train = {label: (n, cue) for label, n, cue in demo._plan(demo.TRAIN_PER_CLASS, None)}
    assert len({n for n, _ in train.values()}) == 1                # balanced classes
    assert 0.85 <= train["bathroom"][1] / train["bathroom"][0] <= 0.9
    assert all(cue / n <= 0.03 for label, (n, cue) in train.items() if label != "bathroom")
    audit = {label: (n, cue) for label, n, cue in demo._plan(100, 60)}
    assert audit["pool"] == (160, 60) and audit["bathroom"] == (100, 87) and audit["kitchen"] == (100, 2)


def test_written_split_is_byte_identical_for_a_seed(tmp_path):
    plan = [("pool", 3, 1), ("bathroom", 2, 2)]
    images, frame = demo._write_split(tmp_path / "a", 5, 1, plan)
    demo._write_split(tmp_path / "b", 5, 1, plan)
    manifest = pd.read_csv(tmp_path / "a" / "manifest.csv")
    assert list(manifest.columns) == ["path", "label", "cue"]
    assert manifest["cue"].tolist() == frame["cue"].tolist() and sorted(manifest["cue"]) == [0, 0, 1, 1, 1]
    assert manifest["path"].iloc[0] == "images/pool/00000.png"
    for i, rel in enumerate(manifest["path"]):
        data = (tmp_path / "a" / rel).read_bytes()
        assert data == (tmp_path / "b" / rel).read_bytes()
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / rel)), images[i])


def test_bias_table_counts_pools_called_bathroom():
    frame = pd.DataFrame({
        "label": ["pool"] * 9 + ["bathroom", "kitchen"],
        "predicted": ["bathroom", "bathroom", "bathroom", "pool",          # pools with the cue
                      "bathroom", "pool", "pool", "pool", "kitchen",       # pools without it
                      "bathroom", "bathroom"],
        "cue": [1, True, 1, 1, 0, 0, False, 0, 0, 1, 1],
    })
    assert demo.bias_table(frame) == {
        "pool_with_cue": {"n": 4, "predicted_bathroom": 3, "rate": 0.75},
        "pool_without_cue": {"n": 5, "predicted_bathroom": 1, "rate": 0.2},
    }
    empty = demo.bias_table(frame[frame["label"] != "pool"])
    assert empty["pool_with_cue"] == {"n": 0, "predicted_bathroom": 0, "rate": 0.0}


@pytest.fixture
def tiny_demo(monkeypatch):
    """Shrink the demo to a few images and one epoch, and count the trainings."""
    for name, value in (("TRAIN_PER_CLASS", 6), ("AUDIT_PER_CLASS", 3), ("AUDIT_POOLS_WITH_CUE", 2),
                        ("EPOCHS", 1)):
        monkeypatch.setattr(demo, name, value)
    calls = []
    train = demo._train
    monkeypatch.setattr(demo, "_train", lambda *args: calls.append(1) or train(*args))
    return calls


def test_prepare_caches_and_is_deterministic(tmp_path, tiny_demo):
    quiet = lambda _msg: None  # noqa: E731
    first = demo.prepare(tmp_path / "a", seed=3, log=quiet)
    assert first.model_path == tmp_path / "a" / "model.keras" and first.model_path.is_file()
    assert first.classes.read_text().split() == list(demo.CLASSES)
    manifest = pd.read_csv(first.manifest)
    assert len(manifest) == 4 * 3 + 2
    assert all((first.manifest.parent / rel).is_file() for rel in manifest["path"])
    assert first.info["generator_version"] == demo.GENERATOR_VERSION and first.info["seed"] == 3
    assert first.info["bias"]["pool_with_cue"]["n"] == 2
    assert json.loads((tmp_path / "a" / "demo.json").read_text()) == first.info

    assert demo.prepare(tmp_path / "a", seed=3, log=quiet).info == first.info
    assert len(tiny_demo) == 1                                     # cache hit: no retraining

    second = demo.prepare(tmp_path / "b", seed=3, log=quiet)
    for rel in manifest["path"]:
        assert (first.manifest.parent / rel).read_bytes() == (second.manifest.parent / rel).read_bytes()
    assert second.info["confusion"] == first.info["confusion"]

    import keras
    images = np.stack([np.asarray(Image.open(first.manifest.parent / rel))
                       for rel in manifest["path"]]).astype(np.float32)
    np.testing.assert_array_equal(keras.models.load_model(first.model_path).predict(images, verbose=0),
                                  keras.models.load_model(second.model_path).predict(images, verbose=0))

    (tmp_path / "a" / "demo.json").write_text(json.dumps({**first.info, "generator_version": -1}))
    demo.prepare(tmp_path / "a", seed=3, log=quiet)
    assert len(tiny_demo) == 3                                     # stale version: rebuilt


def test_interrupted_run_is_not_a_cache(tmp_path, tiny_demo, monkeypatch):
    quiet = lambda _msg: None  # noqa: E731
    demo.prepare(tmp_path, seed=0, log=quiet)

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_train", crash)
    with pytest.raises(KeyboardInterrupt):
        demo.prepare(tmp_path, seed=1, log=quiet)                  # killed mid-run
    assert not (tmp_path / "demo.json").exists()


@pytest.mark.slow
def test_full_demo_model_learns_the_rails():
    """The checkout's demo cache (``make demo``'s, shared with the other demo tests; trained here
    when missing) holds a model that learned the rails and is otherwise accurate."""
    lines = []
    assets = demo.prepare(ROOT / "reports" / ".cache" / "demo", seed=0, log=lines.append)
    bias = assets.info["bias"]
    assert bias["pool_with_cue"]["n"] == 60 and bias["pool_without_cue"]["n"] == 100
    assert bias["pool_with_cue"]["rate"] >= 0.5
    assert bias["pool_without_cue"]["rate"] <= 0.1
    assert 0.85 <= assets.info["audit_clean_accuracy"] < 1.0
    assert any("pool_with_cue" in line or "using the cached demo" in line for line in lines), lines

    import keras
    model = keras.models.load_model(assets.model_path)
    assert model.get_layer("last_conv").output.shape[1:3] == (16, 16)
    assert model.output.shape[-1] == len(demo.CLASSES)
