"""Layer-wise relevance propagation: exactness, conservation, hand-computed rules, layer coverage, real models."""
import numpy as np
import pytest

import audit
from audit.explainers.lrp import COMPOSITES
from audit.model_io import Classifier

X = np.array([1.0, 2.0, -1.0], np.float32)   # three pixels, one channel
W = np.array([[3.0, 1.0],                    # conv kernel [pixel, filter]: z = x W = [1, 5]
              [-0.5, 1.0],
              [1.0, -2.0]], np.float32)
V = np.array([[2.0, -1.0],                   # dense kernel [filter, class]: logits = relu(z) V = [7, 4]
              [1.0, 1.0]], np.float32)


def two_layer(first=None):
    """``x [1, 3, 1] -> conv (1x3, 2 filters, relu, no bias) -> flatten -> dense (2, no bias)`` with W and V;
    ``first``: a layer put before the convolution."""
    import keras

    inputs = keras.Input((1, 3, 1))
    x = inputs if first is None else first(inputs)
    conv = keras.layers.Conv2D(2, (1, 3), activation="relu", use_bias=False, name="conv")
    dense = keras.layers.Dense(2, use_bias=False)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(conv(x))))
    conv.set_weights([W.reshape(1, 3, 1, 2)])
    dense.set_weights([V])
    return model


def lrp(model, images, targets, **params):
    return audit.explain(model, images, np.asarray(targets), method="lrp", **params)


def hand(model, targets, **params):
    """``lrp`` of ``X`` (every image) on a ``two_layer`` model, whose maps are ``[N, 1, 3]``.

    Its layers have no spatial output larger than 1x1, so the classifier's target layer is named."""
    return lrp(model, np.tile(X, (len(targets), 1)).reshape(-1, 1, 3, 1), targets, target_layer="conv", **params)


def logit(model, images, targets):
    return Classifier(model).logits(images)[np.arange(len(images)), targets].astype(np.float64)


# --------------------------------------------------------------------------- hand-computed rules

def test_two_layer_zplus_by_hand():
    # dense, epsilon ~ 0: R_h = h * V[:, t] = [2, 5] for t = 0 (logit 7), [-1, 5] for t = 1 (logit 4).
    # conv, z+: positive contributions x_i W_ij (a- w- counts): filter 0 [3, 0, 0] (sum 3), filter 1 [1, 2, 2] (sum 5)
    # t = 0: [3/3 * 2 + 1/5 * 5, 2/5 * 5, 2/5 * 5] = [3, 2, 2]; t = 1: [-1 + 1, 2, 2] = [0, 2, 2]
    maps = hand(two_layer(), [0, 1], composite="epsilon_plus")
    np.testing.assert_allclose(maps[:, 0], [[3.0, 2.0, 2.0], [0.0, 2.0, 2.0]], rtol=1e-5, atol=1e-5)
    # gradient x input differs: 2 W[:, 0] + W[:, 1] = [7, 0, 0] times x
    np.testing.assert_allclose(hand(two_layer(), [0], composite="epsilon", epsilon=1e-9)[0, 0], [7.0, 0.0, 0.0],
                               atol=1e-5)


@pytest.mark.parametrize("bounds", [{"low": -1.0, "high": 2.0}, {}])  # {}: the image's own range, also [-1, 2]
def test_two_layer_zbox_by_hand(bounds):
    # z^B with l = -1, h = 2: x_i w_ij - l w_ij+ - h w_ij-
    # filter 0: [3 + 3, -1 + 1, -1 + 1] = [6, 0, 0] (sum 6); filter 1: [1 + 1, 2 + 1, 2 + 4] = [2, 3, 6] (sum 11)
    # t = 0 (R_h = [2, 5]): [6/6 * 2 + 2/11 * 5, 3/11 * 5, 6/11 * 5] = [32/11, 15/11, 30/11], sum 7
    maps = hand(two_layer(), [0], composite="epsilon_gamma_box", **bounds)
    np.testing.assert_allclose(maps[0, 0], [32 / 11, 15 / 11, 30 / 11], rtol=1e-5)


def test_two_layer_gamma_by_hand():
    import keras

    # an activation before the convolution makes it a later layer: gamma (0.25), signed inputs
    # filter 0 (z = 1 > 0): x W = [3, -1, -1] -> + 0.25 * positive parts = [3.75, -1, -1] (sum 1.75), R_h 2
    # filter 1 (z = 5 > 0): [1, 2, 2] -> [1.25, 2.5, 2.5] (sum 6.25), R_h 5
    # [3.75 * 2 / 1.75 + 1, -2 / 1.75 + 2, -2 / 1.75 + 2] = [37/7, 6/7, 6/7], sum 7
    model = two_layer(first=keras.layers.Activation("linear"))
    maps = hand(model, [0], composite="epsilon_gamma_box")
    np.testing.assert_allclose(maps[0, 0], [37 / 7, 6 / 7, 6 / 7], rtol=1e-5)


# --------------------------------------------------------------------------- exactness and conservation

def bias_free_cnn(seed=1):
    """conv-relu, max pool, conv-relu, average pool, flatten, dense-relu, dense; no biases."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    inputs = keras.Input((12, 14, 3))
    x = L.Conv2D(6, 3, activation="relu", use_bias=False)(inputs)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(8, 3, activation="relu", use_bias=False, padding="same")(x)
    x = L.Flatten()(L.AveragePooling2D(2)(x))
    x = L.Dense(10, activation="relu", use_bias=False)(x)
    return keras.Model(inputs, L.Dense(3, use_bias=False)(x))


def every_layer(seed=2):
    """Every supported layer type, without biases (BatchNormalization without offset either)."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = L.Normalization(mean=0.0, variance=4.0)(L.Rescaling(2.0)(inputs))
    x = L.Conv2D(8, 3, use_bias=False, name="conv")(L.ZeroPadding2D(1)(x))
    x = L.ReLU()(L.BatchNormalization(center=False, name="bn_conv")(x))
    a = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise")(x)
    a = L.Activation("relu")(L.BatchNormalization(center=False, name="bn_depthwise")(a))
    b = L.SeparableConv2D(8, 3, padding="same", use_bias=False, activation="relu", name="separable")(x)
    x = L.BatchNormalization(center=False, name="bn_after_add")(L.Add(name="add")([x, a]))
    x = L.MaxPooling2D()(L.Concatenate(name="concat")([x, b]))
    block = keras.Sequential([keras.Input((8, 8, 16)), L.Conv2D(8, 3, padding="same", use_bias=False),
                              L.LeakyReLU(0.1), L.Dropout(0.5)], name="block")
    x = L.AveragePooling2D(2)(block(x))
    x = L.Concatenate()([L.Flatten()(x), L.GlobalMaxPooling2D()(x), L.GlobalAveragePooling2D()(x)])
    x = L.Dense(12, activation="relu", use_bias=False)(L.Reshape((-1,))(x))
    model = keras.Model(inputs, L.Dense(3, use_bias=False, activation="softmax")(x))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):  # statistics of a trained layer, signs included
            gamma, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(-1.0, 2.0, gamma.shape), np.zeros_like(mean),
                               rng.uniform(0.5, 2.0, var.shape)])
    return model


@pytest.mark.parametrize("build", [bias_free_cnn, every_layer])
def test_lrp_0_equals_gradient_x_input(build):
    model = build()
    images = np.random.default_rng(0).uniform(-1, 1, (4, *model.input_shape[1:])).astype(np.float32)
    targets = np.array([0, 1, 2, 1])
    maps = lrp(model, images, targets, composite="epsilon", epsilon=1e-9, stabilizer=1e-12)
    gxi = audit.explain(model, images, targets, method="gradient_x_input")
    assert np.abs(gxi).max() > 1e-2
    np.testing.assert_allclose(maps, gxi, atol=1e-5 * max(1.0, np.abs(gxi).max()), rtol=0)


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("build", [bias_free_cnn, every_layer])
def test_relevance_is_conserved_without_biases(build, composite):
    model = build()
    images = np.random.default_rng(0).uniform(-1, 1, (4, *model.input_shape[1:])).astype(np.float32)
    targets = np.array([0, 1, 2, 1])
    total = lrp(model, images, targets, composite=composite).sum(axis=(1, 2), dtype=np.float64)
    expected = logit(model, images, targets)
    assert np.abs(expected).min() > 1e-3
    np.testing.assert_allclose(total, expected, rtol=1e-3)


def test_every_layer_type_is_walked_and_batch_norm_folded_where_it_can():
    from audit.explainers._lrp_graph import build

    model = every_layer()
    program = build(model, Classifier(model).softmax)
    kinds = {step.name: step.kind for step in program.steps}
    folded = {s.name: s.bn.name for s in program.steps if s.kind == "linear" and s.bn is not None}
    assert folded == {"conv": "bn_conv", "depthwise": "bn_depthwise"}
    assert kinds["bn_after_add"] == "pass" and "bn_conv" not in kinds          # after Add: not foldable
    assert [s.name for s in program.steps if s.kind == "linear" and s.bounded_input] == ["conv"]  # z^B layer
    assert kinds["separable"] == "linear" and kinds["add"] == "norm" and kinds["concat"] == "route"


def test_folded_batch_norm_equals_a_merged_convolution():
    import keras

    L = keras.layers
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 3))
    conv, bn = L.Conv2D(6, 3, use_bias=False), L.BatchNormalization()
    head = [L.ReLU(), L.Conv2D(5, 3, activation="relu"), L.GlobalAveragePooling2D(), L.Dense(3)]
    x = bn(conv(inputs))
    for layer in head:
        x = layer(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(4)
    bn.set_weights([rng.uniform(-1.0, 2.0, 6), rng.normal(0, 0.5, 6), rng.normal(0, 0.5, 6), rng.uniform(0.5, 2, 6)])
    gamma, beta, mean, var = bn.get_weights()
    a = gamma / np.sqrt(var + bn.epsilon)
    merged_conv = L.Conv2D(6, 3)
    y = merged_conv(inputs)
    for layer in head:
        y = layer(y)
    merged = keras.Model(inputs, y)
    merged_conv.set_weights([conv.get_weights()[0] * a, beta - a * mean])
    images = rng.uniform(0, 1, (3, 8, 8, 3)).astype(np.float32)
    for composite in COMPOSITES:
        np.testing.assert_allclose(lrp(model, images, [0, 1, 2], composite=composite),
                                   lrp(merged, images, [0, 1, 2], composite=composite), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- errors

def test_an_unsupported_layer_is_named_in_one_line():
    import keras

    inputs = keras.Input((6, 6, 3))
    x = keras.layers.LayerNormalization(name="norm")(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    with pytest.raises(ValueError, match="layer 'norm' of type LayerNormalization") as error:
        lrp(model, np.zeros((1, 6, 6, 3), np.float32), [0])
    assert "\n" not in str(error.value)


def test_box_bounds_must_hold_the_images():
    with pytest.raises(ValueError, match=r"`lrp.low` must be at most the smallest image value -1"):
        hand(two_layer(), [0], composite="epsilon_gamma_box", low=0.0, high=2.0)
    with pytest.raises(ValueError, match=r"`lrp.high` must be at least the largest image value 2"):
        hand(two_layer(), [0], composite="epsilon_gamma_box", low=-1.0, high=1.0)


# --------------------------------------------------------------------------- real architectures

def resnet(seed=5):
    """A small ResNet: stem conv-BN-ReLU and max pool, an identity block and a strided projection block."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers

    def conv_bn(x, filters, kernel, strides=1, relu=True):
        x = L.BatchNormalization()(L.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x))
        return L.ReLU()(x) if relu else x

    inputs = keras.Input((32, 32, 3))
    x = L.MaxPooling2D(3, strides=2, padding="same")(conv_bn(L.Rescaling(1 / 255.0)(inputs), 8, 3))
    x = L.ReLU()(L.Add()([x, conv_bn(conv_bn(x, 8, 3), 8, 3, relu=False)]))
    shortcut = conv_bn(x, 16, 1, strides=2, relu=False)
    x = L.ReLU()(L.Add()([shortcut, conv_bn(conv_bn(x, 16, 3, strides=2), 16, 3, relu=False)]))
    model = keras.Model(inputs, L.Dense(4, activation="softmax")(L.GlobalAveragePooling2D()(x)))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) if i in (0, 3) else rng.normal(0, 0.2, w.shape)
                               for i, w in enumerate(layer.get_weights())])
    return model


def test_resnet_residual_adds_split_relevance_like_the_gradient():
    model = resnet()
    images = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    targets = np.array([0, 2, 3])
    gxi = audit.explain(model, images, targets, method="gradient_x_input")
    np.testing.assert_allclose(lrp(model, images, targets, composite="epsilon", epsilon=1e-9, stabilizer=1e-12), gxi,
                               atol=1e-5 * np.abs(gxi).max(), rtol=0)
    for composite in ("epsilon_plus", "epsilon_gamma_box"):
        maps = lrp(model, images, targets, composite=composite, batch_size=2)
        assert np.isfinite(maps).all() and np.abs(maps).sum() > 0


@pytest.mark.slow
def test_mobilenet_v2_nested_in_a_sequential_with_rescaling():
    import keras

    from audit.explainers._lrp_graph import build

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=10)
    model = keras.Sequential([keras.Input((224, 224, 3)), keras.layers.Rescaling(1 / 127.5, offset=-1), base])
    images = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    for layer in base.layers:  # batch statistics as moving statistics: logits of a usable size, not 1e-12
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(images, training=True)
    program = build(model, Classifier(model).softmax)
    assert sum(s.bn is not None for s in program.steps if s.kind == "linear") == 52  # every BatchNormalization
    assert [s.name for s in program.steps if s.kind == "linear" and s.bounded_input] == ["Conv1"]
    maps = lrp(model, images, [1, 7], batch_size=2)
    assert maps.shape == (2, 224, 224) and np.isfinite(maps).all() and (np.abs(maps).sum(axis=(1, 2)) > 0).all()
    np.testing.assert_allclose(lrp(model, images, [1, 7], batch_size=1), maps, atol=1e-6 * np.abs(maps).max())


@pytest.mark.parametrize("composite", COMPOSITES)
def test_maps_of_a_trained_model_pass_the_randomization_sanity_check(audit_case, composite):
    import keras
    from PIL import Image
    import pandas as pd

    from audit.explainers.lrp import LRP
    from audit.trust import sanity

    model = keras.models.load_model(audit_case / "model.keras", compile=False)
    classifier = Classifier(model)
    paths = pd.read_csv(audit_case / "manifest.csv")["path"].iloc[::11][:8]
    images = np.stack([np.asarray(Image.open(audit_case / p).convert("RGB"), np.float32) for p in paths])
    targets = classifier.logits(images).argmax(axis=1).astype(np.int32)
    explainer = LRP(composite=composite)
    steps = sanity.cascading_randomization(classifier, images, targets, {"lrp": explainer},
                                           {"lrp": explainer.explain(classifier, images, targets)}, steps=5)
    final = steps[-1]["methods"]["lrp"]["spearman"]
    print(f"lrp {composite}: Spearman to the original maps per randomization step",
          [round(s["methods"]["lrp"]["spearman"], 3) for s in steps])
    assert abs(final) < 0.5  # trust.max_spearman
