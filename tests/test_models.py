"""Models as teams have them: tf.keras 2 files and SavedModels (through tf-keras), plain SavedModels
loaded by signature, multi-output and single-channel models. Real files written in the tests."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from audit.errors import UsageError
from audit.explainers import available, explain
from audit.model_io import Classifier, SignatureClassifier, cached_classifier, load_model
from tests.conftest import CLASSES, SHAPE, audit_command

tf_keras = pytest.importorskip("tf_keras")

MOBILENET = dict(input_shape=(64, 64, 3), alpha=0.35, weights=None, classes=3)   # out_relu is 2x2


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two maps; two constant maps (a Grad-CAM all zero after its ReLU) count 1 when equal."""
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b, atol=1e-6) else 0.0
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def legacy_models(tmp_path_factory):
    """A tf.keras 2 MobileNetV2 (random weights, BatchNormalization statistics made non-trivial) as
    .h5 and SavedModel, and the same weights in a Keras 3 MobileNetV2."""
    import keras

    root = tmp_path_factory.mktemp("legacy")
    tf_keras.utils.set_random_seed(3)
    model = tf_keras.applications.MobileNetV2(**MOBILENET)
    # an untrained MobileNetV2's activations vanish with depth: give every BatchNormalization the
    # statistics of a batch (momentum 0, one training-mode pass) so that the maps are not all zero
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(np.random.default_rng(3).uniform(-1, 1, (32, 64, 64, 3)).astype(np.float32), training=True)
    model.save(root / "mobilenet.h5")
    model.save(root / "mobilenet_savedmodel")
    modern = keras.applications.MobileNetV2(**MOBILENET)
    modern.set_weights(model.get_weights())
    return root, modern


def test_tf_keras2_files_load_through_tf_keras(legacy_models):
    root, modern = legacy_models
    expected = Classifier(modern).layer.name
    assert expected == "out_relu"
    assert (root / "mobilenet_savedmodel" / "keras_metadata.pb").is_file()
    for name in ("mobilenet.h5", "mobilenet_savedmodel"):
        model = load_model(root / name)
        assert isinstance(model, tf_keras.Model), name
        classifier = Classifier(model)
        assert classifier.layer.name == expected and classifier.softmax is not None


IMAGES = np.random.default_rng(0).uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def keras3_maps(legacy_models):
    """Every registered method's maps (4, 64, 64) of the Keras 3 twin on ``IMAGES``, computed once
    for both legacy files; with its logits (4, 3) and target classes (4,)."""
    _, modern = legacy_models
    reference = Classifier(modern)
    logits = reference.logits(IMAGES)
    targets = logits.argmax(axis=1)
    maps = {method: explain(reference, IMAGES, targets, method=method, **_params(method)) for method in available()}
    return logits, targets, maps


def _params(method: str) -> dict:
    return {"patch": 8} if method == "occlusion" else {}


@pytest.mark.parametrize("name", ["mobilenet.h5", "mobilenet_savedmodel"])
def test_every_method_on_tf_keras2_equals_keras3(legacy_models, keras3_maps, name):
    """Every registered method (Grad-CAM, LRP, guided backprop, ... ) gives the maps of the same
    weights as a Keras 3 model; so do the logits (softmax stripped) and the target layer."""
    root, _ = legacy_models
    logits, targets, reference = keras3_maps
    legacy = Classifier(load_model(root / name))
    np.testing.assert_allclose(legacy.logits(IMAGES), logits, atol=1e-4)
    assert np.ptp(logits, axis=0).max() > 1e-3   # the images get different logits
    for method in available():
        a = explain(legacy, IMAGES, targets, method=method, **_params(method))
        b = reference[method]
        assert a.shape == (4, 64, 64) and np.isfinite(a).all() and (a.std(axis=(1, 2)) > 0).any(), method
        r = min(_pearson(x, y) for x, y in zip(a, b))
        assert r >= 0.99, f"{method}: Pearson r {r:.4f} between tf.keras 2 and Keras 3 maps"


def _run(*args, cwd):
    return subprocess.run(audit_command("run", *args, "--quiet"), cwd=cwd, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_tf_keras2_h5_and_savedmodel_audited_end_to_end(legacy_models, audit_case, tmp_path):
    root, _ = legacy_models
    # every method on both files is the test above; here the whole run: the .h5 with Grad-CAM alone,
    # the SavedModel with a rule-based and a perturbation method and the internals too
    for name, methods, internals in (("mobilenet.h5", "[gradcam]", "0"),
                                     ("mobilenet_savedmodel", "[gradcam,lrp,occlusion]", "1")):
        out = tmp_path / name
        result = _run("--model", root / name, "--data", audit_case / "manifest.csv", "--classes",
                      audit_case / "classes.txt", "--out", out, "--set", "data.preprocess=tf",
                      "--set", f"attribution.methods={methods}", "--set", f"internals.findings={internals}",
                      cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        run = json.loads((out / "run.json").read_text())
        assert run["model"]["target_layer"] == "out_relu" and run["not_computed"] == []
        assert {p.name for p in (out / "maps").iterdir()} >= set(methods.strip("[]").split(","))
        summary = json.loads((out / "summary.json").read_text())
        assert summary["metrics"]["n_images"] == 91


@pytest.fixture(scope="module")
def signature_model(audit_case, tmp_path_factory):
    """The planted-cue case's trained Keras 3 model inside a ``tf.Module`` saved with
    ``tf.saved_model.save``: no Keras metadata, a signature with two outputs (logits, probabilities)."""
    import keras
    import tensorflow as tf

    model = keras.models.load_model(audit_case / "model.keras")

    class Exported(tf.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        @tf.function(input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32, name="pixels")])
        def serve(self, pixels):
            logits = self.net(pixels)
            return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    module = Exported(model)
    path = tmp_path_factory.mktemp("signature") / "served"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve, "classify": module.serve})
    assert not (path / "keras_metadata.pb").exists()
    return path, model


def test_signature_model_outputs(signature_model):
    path, model = signature_model
    with pytest.raises(UsageError, match=r"`model.output`: the signature 'serving_default' .* has 2 outputs "
                                         r"\(logits, probabilities\)"):
        cached_classifier(path)
    with pytest.raises(UsageError, match=r"`model.signature` 'nope': the SavedModel .* has no such signature "
                                         r"\(it has: classify, serving_default"):
        cached_classifier(path, signature="nope")
    with pytest.raises(UsageError, match=r"`model.output` 'scores': .* no such output"):
        cached_classifier(path, output="scores")
    images = np.random.default_rng(0).uniform(0, 255, (3, *SHAPE)).astype(np.float32)
    raw = cached_classifier(path, output="logits")
    assert isinstance(raw, SignatureClassifier) and raw.layer is None and raw.input_shape == SHAPE
    np.testing.assert_allclose(raw.logits(images), model(images).numpy(), rtol=1e-5, atol=1e-4)
    # the softmax output: its log is the logits up to a constant per image (same order, same probabilities)
    probs = cached_classifier(path, signature="classify", output=1)
    assert probs.log_of_softmax and not raw.log_of_softmax
    difference = probs.logits(images) - model(images).numpy()
    np.testing.assert_allclose(difference - difference[:, :1], 0.0, atol=1e-3)
    ig = explain(raw, images, np.zeros(3, np.int32), method="integrated_gradients", steps=8)
    reference = explain(model, images, np.zeros(3, np.int32), method="integrated_gradients", steps=8)
    np.testing.assert_allclose(ig, reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max())
    assert probs.logits_kind.startswith("log of the softmax output 'probabilities'")
    with pytest.raises(ValueError, match="gradcam needs the model's layers"):
        explain(raw, images, np.zeros(3, np.int32), method="gradcam")


@pytest.mark.slow
def test_signature_model_audited_end_to_end(signature_model, audit_case, tmp_path):
    path, _ = signature_model
    common = ("--data", audit_case / "manifest.csv", "--classes", audit_case / "classes.txt")
    missing = _run("--model", path, *common, "--out", tmp_path / "bad", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("audit: error: `model.output`: the signature")

    out = tmp_path / "run"
    result = subprocess.run(audit_command("run", "--model", path, "--output", "logits", *common, "--out", out),
                            cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    assert "Not computed: gradcam because the model" in log and "discovery uses integrated_gradients" in log
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["target_layer"] is None
    assert run["config"]["attribution"]["methods"] == ["integrated_gradients", "occlusion"]
    assert {p.name for p in (out / "maps").iterdir()} == {"integrated_gradients", "occlusion"}
    html = (out / "index.html").read_text()
    assert "Not computed: gradcam because the model" in html
    summary = json.loads((out / "summary.json").read_text())
    top = summary["findings"][0]
    assert (top["true_label"], top["predicted_label"]) == (CLASSES[0], CLASSES[1]) and top["score"] > 0


def test_multi_output_model_needs_model_output(tmp_path):
    import keras

    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.layers.Dense(3, activation="softmax", name="classes")(pooled)
    box = keras.layers.Dense(4, name="box")(pooled)
    model = keras.Model(inputs, [box, head])
    model.save(tmp_path / "two.keras")
    with pytest.raises(UsageError, match=r"`model.output`: the model has 2 outputs \(box, classes\)"):
        cached_classifier(tmp_path / "two.keras")
    by_name = cached_classifier(tmp_path / "two.keras", output="classes")
    by_index = cached_classifier(tmp_path / "two.keras", output=1)
    images = np.random.default_rng(1).uniform(0, 1, (2, 12, 12, 3)).astype(np.float32)
    probs = model(images)[1].numpy()
    for clf in (by_name, by_index):
        assert clf.n_classes == 3 and clf.softmax is not None and clf.layer.name == "conv"
        np.testing.assert_allclose(np.exp(clf.logits(images)) / np.exp(clf.logits(images)).sum(1, keepdims=True),
                                   probs, atol=1e-5)


def test_grayscale_model_gets_one_channel(tmp_path):
    import keras
    from PIL import Image

    from audit.data import load_images

    inputs = keras.Input((10, 10, 1))
    x = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    assert Classifier(model).input_shape == (10, 10, 1)
    Image.fromarray(np.full((10, 10, 3), (255, 0, 0), np.uint8)).save(tmp_path / "red.png")
    images, errors = load_images(tmp_path, ["red.png"], (10, 10), channels=1)
    assert errors == [None] and images.shape == (1, 10, 10, 1)
    assert images[0, 0, 0, 0] == 76   # ITU-R 601: 0.299 * 255
    assert explain(model, images, np.array([0]), method="gradcam").shape == (1, 10, 10)


def test_keras_applications_preprocess_conventions():
    import keras

    from audit.data import preprocess

    rgb = np.random.default_rng(2).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    for mode in ("tf", "torch", "caffe"):
        expected = keras.applications.imagenet_utils.preprocess_input(rgb.copy(), mode=mode)
        np.testing.assert_allclose(preprocess(rgb, mode), expected, rtol=1e-5, atol=1e-4)
