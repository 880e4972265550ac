import numpy as np
import pytest

from audit.errors import UsageError
from audit.model_io import Classifier, load_model
from tests.conftest import build_model


def test_logits_are_pre_softmax(any_model, images):
    kind, model = any_model
    clf = Classifier(model)
    logits = clf.logits(images)
    probs = model(images).numpy()
    if kind == "logits":
        np.testing.assert_allclose(logits, probs, atol=1e-5)
    else:
        e = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(e / e.sum(1, keepdims=True), probs, atol=1e-5)
        assert not np.allclose(logits.sum(1), 1.0)
    np.testing.assert_allclose(model(images).numpy(), probs)  # the model itself is unchanged


def test_target_layer_auto_and_named_inside_nested():
    model = build_model("nested")
    assert Classifier(model).layer.name == "base_2"
    assert Classifier(model, "base_1").layer.name == "base_1"
    with pytest.raises(UsageError, match="`model.target_layer` 'nope' is not a layer"):
        Classifier(model, "nope")


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_model(tmp_path / "none.keras")
    (tmp_path / "bad.keras").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="cannot load the model"):
        load_model(tmp_path / "bad.keras")


def test_lambda_layer_refused_unless_trusted(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    x = keras.layers.Conv2D(2, 3)(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(UsageError, match="Lambda layer.*--trust-model"):
        load_model(tmp_path / "lambda.keras")
    assert load_model(tmp_path / "lambda.keras", trust=True).name == model.name
