import numpy as np
import pytest

import audit
from audit.explainers import available
from audit.model_io import Classifier


@pytest.mark.parametrize("method", available())
def test_every_method_on_every_model_shape(method, any_model, images):
    kind, model = any_model
    targets = np.array([0, 1, 2, 0, 1])
    maps = audit.explain(model, images, targets, method=method)
    assert maps.shape == (5, 20, 24) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and np.abs(maps).sum() > 0
    again = audit.explain(model, images, targets, method=method, batch_size=1)
    np.testing.assert_allclose(maps, again, atol=1e-5)  # batch-size invariant and deterministic
    other = audit.explain(model, images, np.array([1, 2, 0, 1, 2]), method=method)
    assert not np.allclose(maps, other)  # the target class matters


def test_gradcam_equals_hand_formula():
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 6, 2))
    a1 = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="c1")(inputs)
    a2 = keras.layers.Conv2D(4, 3, activation="relu", name="c2")(a1)
    logits = keras.layers.Dense(2, name="dense")(keras.layers.GlobalAveragePooling2D()(a2))
    model = keras.Model(inputs, logits)
    x = np.random.default_rng(1).normal(size=(3, 6, 6, 2)).astype(np.float32)
    targets = np.array([0, 1, 1])

    acts = keras.Model(inputs, a2)(x).numpy()                      # [3, 4, 4, 4]
    w = model.get_layer("dense").get_weights()[0]                  # [4, 2]
    alpha = w[:, targets].T / (4 * 4)                              # d logit_c / d A_ijk, spatially constant
    cam = np.maximum(np.einsum("nk,nijk->nij", alpha, acts), 0.0)
    expected = tf.image.resize(cam[..., None], (6, 6), method="bilinear").numpy()[..., 0]

    maps = audit.explain(model, x, targets, method="gradcam", target_layer="c2")
    np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_contract_errors(images):
    from tests.conftest import build_model

    model = build_model("plain")
    with pytest.raises(ValueError, match="unknown attribution method"):
        audit.explain(model, images, np.zeros(5, int), method="nope")
    with pytest.raises(ValueError, match="targets must be class indices"):
        audit.explain(model, images, np.full(5, 7))
    with pytest.raises(ValueError, match=r"images must be \[N, 20, 24, 3\]"):
        audit.explain(model, images[:, :10], np.zeros(5, int))
    assert Classifier(model).n_classes == 3
