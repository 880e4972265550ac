"""Model internals: activation maps, filter and class visualization, top patches, the stage and the CLI."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from tests.conftest import MODEL_KINDS, audit_command, build_model

FAST = dict(steps=24, octaves=2, batch_size=8)


def _classifier(model, layer=None):
    from audit.model_io import Classifier

    return Classifier(model, layer)


def _settings(**kw):
    from audit.internals import Ascent

    return Ascent(**{**FAST, **kw})


def test_default_layers_go_from_shallow_to_deep_and_bad_names_are_named():
    from audit.errors import UsageError
    from audit.internals import resolve_layers

    model = build_model("nested")
    assert [l.name for l in resolve_layers(model, None, 3)] == ["base_1", "base_2"]   # no Rescaling, no input
    assert [l.name for l in resolve_layers(model, ["base_2"], 3)] == ["base_2"]
    with pytest.raises(UsageError, match=r"`internals.layers`: 'nope' is not a layer"):
        resolve_layers(model, ["nope"], 3)
    plain = build_model("logits")
    dense = plain.layers[-1].name
    with pytest.raises(UsageError, match=rf"`--layer`: '{dense}' has no spatial 4-D output"):
        resolve_layers(plain, [dense], 1, key="--layer")


def test_capturing_restores_the_layers(any_model):
    from audit.internals import activation_maps, resolve_layers

    _, model = any_model
    clf = _classifier(model)
    layers = resolve_layers(model, None, 2)
    images = np.random.default_rng(0).uniform(0, 255, (3, 20, 24, 3)).astype(np.float32)
    out = activation_maps(clf, layers, images, np.array([0, 1, 2]))
    assert [o["maps"].shape[1:] for o in out] == [(18, 22, 6), (16, 20, 8)]
    assert all("call" not in l.__dict__ for l in layers)          # nothing left patched
    logits, acts = clf.logits_and_activations(images)              # the classifier's own capture still works
    assert np.allclose(acts, out[-1]["maps"], atol=1e-5)


def test_channel_attribution_is_exact_for_a_linear_head():
    """conv -> global average pooling -> Dense logits: sum_xy dS/dA * A summed over channels = logit - bias."""
    from audit.internals import activation_maps, resolve_layers

    model = build_model("logits")
    clf = _classifier(model)
    images = np.random.default_rng(1).uniform(0, 255, (4, 20, 24, 3)).astype(np.float32)
    targets = np.array([0, 1, 2, 1])
    (last,) = activation_maps(clf, resolve_layers(model, ["conv_2"], 1), images, targets)
    bias = model.layers[-1].get_weights()[1]
    expected = clf.logits(images)[np.arange(4), targets] - bias[targets]
    assert np.allclose(last["attribution"].sum(axis=1), expected, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(np.take_along_axis(last["attribution"], last["order"], axis=1), axis=1) <= 0)


def test_channel_ranking_and_activation_maps_share_one_traced_pass():
    """With the same union in ``also``, both run one traced function, and their results are those of
    their own passes."""
    from audit.internals import activation_maps, attributed_channels, resolve_layers
    from audit.passes import passes

    model = build_model("logits", seed=5)
    clf = _classifier(model)
    shown = resolve_layers(model, None, 2)
    images = np.random.default_rng(2).uniform(0, 255, (3, 20, 24, 3)).astype(np.float32)
    targets = np.array([0, 2, 1])
    weights = np.random.default_rng(3).uniform(0, 1, (3, *clf.layer.output.shape[1:3]))
    before = passes()["input"]
    scores = attributed_channels(clf, clf.layer, images, targets, weights, 2, also=shown)
    maps = activation_maps(clf, shown, images, targets, 2, also=[clf.layer])
    ran = {key for key, n in passes()["input"].items() if n > before.get(key, 0)}
    assert len(ran) == 1, ran
    assert np.allclose(scores, attributed_channels(clf, clf.layer, images, targets, weights, 2), rtol=1e-5, atol=1e-6)
    for a, b in zip(maps, activation_maps(clf, shown, images, targets, 2)):
        assert a["layer"] == b["layer"] and np.array_equal(a["maps"], b["maps"])
        assert np.allclose(a["attribution"], b["attribution"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_filter_visualization_raises_every_live_channel_and_repeats(kind):
    from audit.internals import input_range, resolve_layers, visualize_filters

    model = build_model(kind)
    clf = _classifier(model)
    (layer,) = resolve_layers(model, None, 1)
    channels = np.arange(int(layer.output.shape[-1]))
    low, high = input_range("none", 3)
    a = visualize_filters(clf, layer, channels, low, high, _settings(seed=3))
    b = visualize_filters(clf, layer, channels, low, high, _settings(seed=3))
    c = visualize_filters(clf, layer, channels, low, high, _settings(seed=4))
    assert a["images"].shape == (len(channels), 20, 24, 3)
    assert np.array_equal(a["images"], b["images"]) and not np.array_equal(a["images"], c["images"])
    assert a["images"].min() >= 0 and a["images"].max() <= 255
    live = a["end"] > 0
    assert live.sum() >= len(channels) // 2
    assert np.all(a["end"][live] > a["start"][live])


def _detector_model():
    """32x32 RGB 0..255 -> one 5x5 conv ``detector`` (ReLU) whose channels have a known best input:
    0 blue (minus red and green), 1 horizontal stripes of period 4, 2 vertical stripes of period 6
    (zero-mean kernels, a small bias: the grey starting noise excites them a little)."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(3, 5, activation="relu", name="detector")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    kernel = np.zeros((5, 5, 3, 3), np.float32)
    kernel[:, :, :, 0] = np.array([-1, -1, 1], np.float32) / 25
    rows, cols = np.cos(2 * np.pi * np.arange(5) / 4), np.cos(2 * np.pi * np.arange(5) / 6)
    kernel[:, :, :, 1] = (rows - rows.mean())[:, None, None] / 15
    kernel[:, :, :, 2] = (cols - cols.mean())[None, :, None] / 15
    model.get_layer("detector").set_weights([kernel, np.array([0.55, 0.02, 0.02], np.float32)])
    return model


def _power_across_rows(image: np.ndarray) -> float:
    """Share of an image's spectral power (mean removed) at vertical frequencies higher than horizontal
    ones: near 1 for horizontal stripes, near 0 for vertical ones."""
    x = image.mean(axis=-1)
    power = np.abs(np.fft.fft2(x - x.mean())) ** 2
    fy, fx = np.meshgrid(np.abs(np.fft.fftfreq(x.shape[0])), np.abs(np.fft.fftfreq(x.shape[1])), indexing="ij")
    return float(power[fy > fx].sum() / power.sum())


def test_filter_visualization_raises_known_detectors_tenfold_and_draws_them():
    """The acceptance line on channels where 10x is reachable: the defaults raise each mean activation
    >= 10x over the starting noise, and the pictures show what the kernels detect."""
    from audit.internals import Ascent, input_range, visualize_filters

    model = _detector_model()
    clf = _classifier(model, "detector")
    low, high = input_range("none", 3)
    viz = visualize_filters(clf, model.get_layer("detector"), np.arange(3), low, high, Ascent())
    assert np.all(viz["start"] > 0)
    assert np.all(viz["end"] >= 10 * viz["start"]), viz["end"] / viz["start"]
    blue = viz["images"][0].mean(axis=(0, 1))
    assert blue[2] > 200 and blue[0] < 55 and blue[1] < 55
    assert _power_across_rows(viz["images"][1]) > 0.9          # horizontal stripes
    assert _power_across_rows(viz["images"][2]) < 0.1          # vertical stripes


def test_polish_raises_the_reported_mean_without_adding_grain():
    """The polish continues the same regularised ascent: the same 24 steps, then 8 polish steps."""
    from audit.config import resolve
    from audit.internals import Ascent, input_range, visualize_filters

    model = build_model("plain")
    clf = _classifier(model)
    layer = model.get_layer("conv_2")
    channels = np.arange(8)
    low, high = input_range("none", 3)
    polished = visualize_filters(clf, layer, channels, low, high, _settings(steps=32, polish=0.25))
    rough = visualize_filters(clf, layer, channels, low, high, _settings(steps=24, polish=0.0))
    assert np.array_equal(polished["start"], rough["start"])
    live = rough["end"] > 0
    assert live.sum() >= 4
    assert np.all(polished["end"][live] >= rough["end"][live])
    assert np.median(_grain(polished["images"])) <= np.median(_grain(rough["images"])) + 0.01   # 0.128 from half the step
    assert polished["images"].min() >= 0 and polished["images"].max() <= 255
    assert Ascent.from_config(resolve(None, [], {}), classes=True).polish == 0.0   # classes are not polished


def _grain(images: np.ndarray) -> np.ndarray:
    """Per image: share of the spectral power (mean removed) above 0.25 cycles per pixel."""
    x = images - images.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(images.shape[1]), np.fft.fftfreq(images.shape[2]), indexing="ij")
    high = (np.hypot(fy, fx) > 0.25)[None, :, :, None]
    return (power * high).sum(axis=(1, 2, 3)) / power.sum(axis=(1, 2, 3))


def test_class_visualization_makes_the_class_win_in_the_valid_range():
    from audit.internals import input_range, visualize_classes

    model = build_model("plain")                # softmax folded into the last Dense: logits are ascended
    clf = _classifier(model)
    low, high = input_range("unit", 3)          # a model fed 0..1 (the ascent must stay there)
    viz = visualize_classes(clf, np.array([2, 0, 1]), low, high, _settings(steps=40, l2=1e-4))
    assert viz["images"].min() >= 0.0 and viz["images"].max() <= 1.0
    assert np.all(viz["end"] > viz["start"])


@pytest.mark.parametrize("activation, traces", [("swish", {"plain"}), ("relu", {"plain", "redirected"})])
def test_class_and_filter_visualization_share_one_traced_step(activation, traces):
    """The model's backward pass to the input is traced once for both (each trace costs seconds on a
    production model), and a model with no ReLU to redirect has no redirected copy."""
    import keras

    from audit.internals import input_range, visualize_classes, visualize_filters
    from audit.passes import passes

    name = f"shared_{activation}"
    inputs = keras.Input((20, 24, 3))
    x = keras.layers.Conv2D(4, 3, activation=activation, name=name)(keras.layers.Rescaling(1 / 255.0)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    clf = _classifier(model, name)
    low, high = input_range("none", 3)
    before = passes()["input"]
    classes = visualize_classes(clf, np.arange(3), low, high, _settings(l2=1e-4))
    filters = visualize_filters(clf, model.get_layer(name), np.arange(4), low, high, _settings())
    ran = {key for key, n in passes()["input"].items() if n > before.get(key, 0)}
    assert ran == {f"internals.ascent/{name}/{t}" for t in traces}
    assert np.all(classes["end"] > classes["start"])
    live = filters["end"] > 0
    assert live.any() and np.all(filters["end"][live] > filters["start"][live])


def test_class_visualization_of_a_trained_model_is_classified_as_its_class(audit_case):
    from audit.internals import input_range, visualize_classes
    from audit.model_io import load_model

    clf = _classifier(load_model(audit_case / "model.keras"))
    low, high = input_range("none", 3)
    viz = visualize_classes(clf, np.array([2, 0, 1]), low, high, _settings(steps=32, l2=0.01))
    assert clf.logits(viz["images"]).argmax(axis=1).tolist() == [2, 0, 1]
    assert np.all(viz["probability"] > 0.9)


def _square_model():
    """One 3x3 conv channel summing a 3x3 window of the red channel: excited by bright squares."""
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(1, 3, activation="relu", name="box")(inputs)
    x = keras.layers.GlobalMaxPooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    kernel = np.zeros((3, 3, 3, 1), np.float32)
    kernel[:, :, 0, 0] = 1.0
    model.get_layer("box").set_weights([kernel, np.array([-1.0], np.float32)])
    return model


def test_top_patches_find_the_brightest_squares_and_crop_the_receptive_field():
    from audit.internals import input_range, top_patches

    model = _square_model()
    clf = _classifier(model, "box")
    images = np.zeros((6, 16, 16, 3), np.float32)
    brightness = [10, 200, 50, 255, 0, 120]
    where = [(2, 2), (5, 9), (10, 3), (7, 7), (0, 0), (12, 12)]
    for n, (b, (y, x)) in enumerate(zip(brightness, where)):
        images[n, y:y + 3, x:x + 3, 0] = b
    low, high = input_range("none", 3)
    found = top_patches(clf, model.get_layer("box"), [(np.arange(100, 103), images[:3]), (np.arange(103, 106), images[3:])],
                        np.array([0]), 4, low, high)
    assert found["ids"][0].tolist() == [103, 101, 105, 102]      # by brightness, images named by their ids
    for n, box in zip([3, 1, 5, 2], found["boxes"][0]):
        t, l, b, r = box
        assert (b - t, r - l) == (3, 3)                          # a 3x3 conv sees 3x3 pixels
        assert (t, l) == where[n]                                # exactly the square
    none = top_patches(clf, model.get_layer("box"), [(np.arange(2), np.zeros((2, 16, 16, 3), np.float32))],
                       np.array([0]), 9, low, high)
    assert none["ids"].tolist() == [[-1, -1]]                    # nothing excites the channel
    flat = top_patches(clf, model.get_layer("box"), [(np.arange(2), np.full((2, 16, 16, 3), 9.0, np.float32))],
                       np.array([0]), 9, low, high)
    assert flat["ids"].tolist() == [[-1, -1]]                    # the same peak everywhere ranks nothing


def test_unit_boxes_stay_inside_the_image():
    from audit.internals.patches import unit_boxes

    rf = {"unit": (8, 8), "box": (25, 25, 43, 43), "stride": (4, 4)}   # 16x16 units, 18x18 fields, 64x64 input
    boxes = unit_boxes(np.array([0, 15, 8 * 16 + 9, 255]), 16, (64, 64), rf)
    assert boxes.tolist() == [[0, 0, 18, 18], [0, 46, 18, 64], [25, 29, 43, 47], [46, 46, 64, 64]]


def _run(case, out, *extra):
    return subprocess.run(audit_command("run", "--model", case / "model.keras", "--data", case / "manifest.csv",
                                        "--classes", case / "classes.txt", "--out", out, "--set", "internals.steps=16",
                                        *extra), capture_output=True, text=True, timeout=600)


def _png_ok(path):
    with Image.open(path) as im:
        im.load()
        return im.size


@pytest.mark.slow
def test_audit_writes_internals_for_the_top_findings_and_links_them(audit_case, tmp_path):
    out = tmp_path / "run"
    done = _run(audit_case, out)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    index = json.loads((out / "internals" / "index.json").read_text())
    top = summary["findings"][:3]
    assert top and [f["id"] for f in index["findings"]] == [f["id"] for f in top]
    assert index["layer"] == "feat"                               # the target layer, inside the nested base
    for f, entry in zip(top, index["findings"]):
        assert entry["classes"] == [["red", "green", "blue"].index(f["true_label"]),
                                    ["red", "green", "blue"].index(f["predicted_label"])]
        assert len(entry["channels"]) == 3
        for c in entry["channels"]:
            channel = index["channels"][str(c["channel"])]
            assert _png_ok(out / "internals" / channel["filter"]) == (128, 128)
            assert 0 < len(channel["patch_rows"]) <= 9
            assert channel["patch_values"] == sorted(channel["patch_values"], reverse=True)
        for a in entry["activations"]:
            w, h = _png_ok(out / "internals" / a["image"])
            assert h > w / 10 and len(a["layers"]) == len(index["layers"])
    # the planted white square: the channel most attributed in the red -> green finding fires on it
    cue = next((e for e in index["findings"] if (e["true_label"], e["predicted_label"]) == ("red", "green")), None)
    if cue is not None:
        import pandas as pd

        manifest = pd.read_csv(audit_case / "manifest.csv")
        rows = index["channels"][str(cue["channels"][0]["channel"])]["patch_rows"]
        assert manifest["cue"].iloc[rows].mean() >= 0.5
    _same_patches_as_a_scan_of_every_image(audit_case, out, index)
    html = (out / "index.html").read_text()
    for f in index["findings"]:
        assert f'id="internals-{f["id"]}"' in html and f'href="#internals-{f["id"]}"' in html
    section = html[html.index('<section class="part" id="internals">'):]
    assert section.count('src="data:image/') >= 3                 # pictures inlined in the single-file report

    again = _run(audit_case, out, "--set", "trust.sample=5")    # the run's key changes, internals' does not
    assert again.returncode == 0, again.stderr
    assert "reusing internals stored under key" in again.stdout


def _same_patches_as_a_scan_of_every_image(case, out, index):
    """The run scanned only the images whose stored channel maxima could be among the best; a model pass
    over every readable image finds the same patches."""
    import pandas as pd

    from audit.config import resolve
    from audit.data import load_images
    from audit.internals import input_range, top_patches
    from audit.model_io import classifier_for

    config = resolve(None, [], {"model.path": str(case / "model.keras"), "data.path": str(case / "manifest.csv"),
                                "data.classes": str(case / "classes.txt"), "out": str(out)})
    clf = classifier_for(config)
    predictions = pd.read_parquet(out / "predictions.parquet")
    readable = predictions[predictions["error"].isna()]
    images, errors = load_images(case, readable["path"].tolist(), clf.input_size)
    assert all(e is None for e in errors)
    channels = sorted(int(c) for c in index["channels"])
    low, high = input_range("none", 3)
    full = top_patches(clf, clf.layer, [(readable["row"].to_numpy(), images)], np.array(channels), 9, low, high)
    for n, c in enumerate(channels):
        entry = index["channels"][str(c)]
        kept = full["ids"][n] >= 0
        assert entry["patch_rows"] == full["ids"][n][kept].tolist()
        assert entry["patch_values"] == pytest.approx(full["values"][n][kept].tolist(), abs=1e-3)
    assert index["scanned_images"] < len(readable)


def test_scan_rows_keep_each_channels_best_by_stored_presence(tmp_path):
    from audit.artifacts import write_cam_chunk
    from audit.internals.patches import CANDIDATES, scan_rows

    rng = np.random.default_rng(0)
    presence = rng.random((500, 6)).astype(np.float32)
    write_cam_chunk(tmp_path, 0, np.arange(500), np.zeros((500, 2, 2)), np.zeros((500, 6)), presence)
    rows = scan_rows(tmp_path, list(range(500)), [1, 4], 3, 2000, 0)
    want = set(np.argsort(-presence[:, 1])[:3 * CANDIDATES]) | set(np.argsort(-presence[:, 4])[:3 * CANDIDATES])
    assert want <= set(rows) and len(rows) <= 2 * (3 * CANDIDATES + 1)
    assert len(scan_rows(tmp_path / "no-cams", list(range(500)), [1], 3, 100, 0)) == 100   # a sample, all scanned


def test_internals_can_be_turned_off(audit_case, tmp_path):
    out = tmp_path / "off"
    done = _run(audit_case, out, "--set", "internals.enabled=false")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "internals" / "index.json").read_text())["findings"] == []
    assert 'id="internals"' not in (out / "index.html").read_text()


def test_internals_command(audit_case, tmp_path):
    out = tmp_path / "cmd"
    done = subprocess.run(audit_command("internals", "--model", audit_case / "model.keras", "--layer", "feat",
                                        "--data", audit_case / "manifest.csv", "--classes", audit_case / "classes.txt",
                                        "--out", out, "--class", "green", "--set", "internals.steps=16"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    index = json.loads((out / "index.json").read_text())
    assert list(index["channels"]) == [str(c) for c in range(16)]
    assert [c["name"] for c in index["classes"].values()] == ["green"]
    assert index["scanned_images"] == 91 and len(index["activations"]) == 2
    html = (out / "index.html").read_text()
    for c in index["channels"].values():
        assert c["filter"] in html and _png_ok(out / c["filter"])
        if c["patches"]:
            assert c["patches"] in html and _png_ok(out / c["patches"])


@pytest.mark.parametrize("args, message", [
    (["--layer", "nope"], "`--layer`: 'nope' is not a layer of the model"),
    (["--layer", "feat", "--set", "internals.steps=0"], "`internals.steps` must be a positive int (got 0)"),
    (["--layer", "feat", "--set", "internals.polish=1"], "`internals.polish` must be a number in [0, 1) (got 1)"),
    (["--layer", "feat", "--class", "purple"], "--class 'purple' is not among the model's classes"),
])
def test_internals_command_bad_input(audit_case, tmp_path, capsys, args, message):
    from audit import cli   # in-process: test_internals_command covers the subprocess path

    capsys.readouterr()
    code = cli.main(["internals", "--model", str(audit_case / "model.keras"), "--classes",
                     str(audit_case / "classes.txt"), "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err.strip().splitlines()[-1], err
