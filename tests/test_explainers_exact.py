"""Exact values: every method against a case computable by hand."""
import numpy as np
import pytest

import audit
from audit.explainers import IntegratedGradients, Occlusion
from audit.explainers.integrated_gradients import RULES, quadrature
from audit.explainers.occlusion import anchors
from audit.model_io import Classifier
from tests.conftest import build_model


def linear_model(shape=(5, 6, 2), classes=3, seed=0):
    """``logits = dense(flatten(conv1x1(x)))``: linear in ``x``; returns (model, w [H, W, C, K], bias [K])."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    conv = keras.layers.Conv2D(4, 1, name="mix")
    dense = keras.layers.Dense(classes, name="out")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(conv(inputs))))
    k, kb = conv.get_weights()
    d, db = dense.get_weights()
    d = d.reshape(*shape[:2], 4, classes)
    w = np.einsum("cf,hwfk->hwck", k[0, 0], d)
    return model, w, db + np.einsum("f,hwfk->k", kb, d)


def relu_cnn(seed=3):
    """``x -> conv3x3 relu -> GAP -> dense``: small enough to differentiate by hand."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 7, 2))
    conv = keras.layers.Conv2D(5, 3, activation="relu", name="c")
    dense = keras.layers.Dense(3, name="d")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(conv(inputs))))
    return model, conv, dense


def rng_images(shape, n=4, seed=1, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, (n, *shape)).astype(np.float32)


# --------------------------------------------------------------------------- integrated gradients

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("baseline", ["black", "custom"])
def test_ig_on_a_linear_model_is_input_minus_baseline_times_weight(rule, baseline):
    model, w, _ = linear_model()
    x = rng_images((5, 6, 2))
    targets = np.array([0, 2, 1, 2])
    b = np.zeros((5, 6, 2), np.float32) if baseline == "black" else rng_images((5, 6, 2), n=1, seed=9)[0]
    maps = audit.explain(model, x, targets, method="integrated_gradients", rule=rule, steps=5,
                         baseline=b if baseline == "custom" else "black")
    expected = np.einsum("nhwc,nhwc->nhw", x - b, np.moveaxis(w[..., targets], -1, 0))
    np.testing.assert_allclose(maps, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rule", RULES)
def test_quadrature_weights_sum_to_one_and_gauss_legendre_is_exact_for_polynomials(rule):
    nodes, weights = quadrature(rule, 6)
    assert len(nodes) == 6 and np.all((0 <= nodes) & (nodes <= 1))
    np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-12)
    if rule == "gauss_legendre":
        for degree in range(12):  # exact up to degree 2 * 6 - 1
            np.testing.assert_allclose((weights * nodes ** degree).sum(), 1 / (degree + 1), atol=1e-12)


def test_ig_gap_is_sum_of_map_minus_logit_difference():
    model = build_model("plain")
    clf = Classifier(model)
    x = rng_images((20, 24, 3), n=3, low=0, high=1)
    t = np.array([0, 1, 2])
    b = np.full((20, 24, 3), 0.5, np.float32)
    maps, gaps = IntegratedGradients(steps=4, baseline=b).explain_with_gap(clf, x, t)
    diff = clf.logits(x)[np.arange(3), t] - clf.logits(np.broadcast_to(b, x.shape))[np.arange(3), t]
    np.testing.assert_allclose(gaps, maps.sum(axis=(1, 2)) - diff, atol=1e-5)
    assert np.abs(gaps).max() > 0  # 4 nodes are not exact on a ReLU network


@pytest.mark.parametrize("kind", ["plain", "logits", "softmax_layer", "nested", "preprocess"])
def test_ig_completeness_gap_within_one_percent_at_defaults(kind):
    from audit.model_io import flat_layers

    model = build_model(kind)
    rng = np.random.default_rng(5)
    for layer in flat_layers(model):  # zero biases would make the path exactly linear: any rule is exact
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype(np.float32))
    clf = Classifier(model)
    x = np.random.default_rng(2).uniform(0, 255 if kind in ("nested", "preprocess") else 1, (6, 20, 24, 3))
    targets = np.arange(6) % 3
    maps, gaps = IntegratedGradients().explain_with_gap(clf, x.astype(np.float32), targets)
    diff = maps.sum(axis=(1, 2)) - gaps
    assert np.all(np.abs(gaps) <= 0.01 * np.abs(diff)), (gaps, diff)
    _, coarse = IntegratedGradients(steps=8).explain_with_gap(clf, x.astype(np.float32), targets)
    assert np.abs(coarse).max() > 0.01 * np.abs(diff).min()  # the bound is not met by any rule whatsoever


@pytest.mark.parametrize("baseline", ["blur", "noise", "mean", 0.25])
def test_ig_baselines_are_used_and_complete(baseline):
    model = build_model("logits")
    clf = Classifier(model)
    blocks = rng_images((5, 6, 3), n=2, low=0, high=1)
    x = np.repeat(np.repeat(blocks, 4, axis=1), 4, axis=2)                   # 4x4 blocks: blur changes them
    maps, gaps = IntegratedGradients(baseline=baseline, steps=48).explain_with_gap(clf, x, np.array([0, 1]))
    black = IntegratedGradients().explain(clf, x, np.array([0, 1]))
    assert not np.allclose(maps, black)
    diff = maps.sum(axis=(1, 2)) - gaps
    assert np.all(np.abs(gaps) <= 0.01 * np.abs(diff))


# --------------------------------------------------------------------------- other gradient methods

def test_gradient_methods_on_a_linear_model():
    model, w, _ = linear_model()
    x = rng_images((5, 6, 2))
    targets = np.array([1, 0, 2, 1])
    wt = np.moveaxis(w[..., targets], -1, 0)                                  # [N, H, W, C]
    saliency = audit.explain(model, x, targets, method="saliency")
    np.testing.assert_allclose(saliency, np.abs(wt).max(-1), atol=1e-6)
    smooth = audit.explain(model, x, targets, method="smoothgrad", samples=5)  # noise cannot move a constant gradient
    np.testing.assert_allclose(smooth, np.abs(wt).max(-1), atol=1e-6)
    gxi = audit.explain(model, x, targets, method="gradient_x_input")
    np.testing.assert_allclose(gxi, (x * wt).sum(-1), atol=1e-5)
    background = rng_images((5, 6, 2), n=1, seed=7)
    eg = audit.explain(model, x, targets, method="expected_gradients", background=background, samples=3)
    np.testing.assert_allclose(eg, ((x - background[0]) * wt).sum(-1), atol=1e-5)


def test_expected_gradients_averages_over_the_background():
    model, w, bias = linear_model()
    x = rng_images((5, 6, 2), n=2)
    background = rng_images((5, 6, 2), n=3, seed=5)
    targets = np.array([0, 1])
    maps = audit.explain(model, x, targets, method="expected_gradients", background=background, samples=2000)
    wt = np.moveaxis(w[..., targets], -1, 0)
    expected = ((x - background.mean(0)) * wt).sum(-1)
    np.testing.assert_allclose(maps, expected, atol=0.05 * np.abs(expected).max())
    exact = np.stack([((xi - background) * wt_i).sum(-1) for xi, wt_i in zip(x, wt)])  # [N, M, H, W]
    single = audit.explain(model, x, targets, method="expected_gradients", background=background, samples=1)
    assert all(any(np.allclose(s, e, atol=1e-5) for e in ex) for s, ex in zip(single, exact))


@pytest.mark.parametrize("method, rule", [("guided_backprop", "guided"), ("deconvnet", "deconvnet"),
                                          ("saliency", None)])
def test_modified_relu_gradients_equal_the_hand_formula(method, rule):
    import tensorflow as tf

    model, conv, dense = relu_cnn()
    x = rng_images((6, 7, 2), n=3)
    targets = np.array([0, 2, 1])
    logits = model(x).numpy()
    kernel, bias = conv.get_weights()
    v = dense.get_weights()[0]                                               # [5, 3]
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        z = tf.nn.conv2d(xt, kernel, 1, "VALID") + bias                      # pre-activation [3, 4, 5, 5]
    dy = np.broadcast_to((v[:, targets].T / (4 * 5))[:, None, None, :], z.shape)  # d logit / d relu(z)
    if rule == "guided":
        dz = np.maximum(dy, 0) * (z.numpy() > 0)
    elif rule == "deconvnet":
        dz = np.maximum(dy, 0)
    else:
        dz = dy * (z.numpy() > 0)
    grads = tape.gradient(z, xt, output_gradients=tf.constant(dz, tf.float32)).numpy()
    maps = audit.explain(model, x, targets, method=method)
    np.testing.assert_allclose(maps, np.abs(grads).max(-1), atol=1e-6)
    plain = audit.explain(model, x, targets, method="saliency")
    if rule is not None:
        assert not np.allclose(maps, plain)
    np.testing.assert_array_equal(model(x).numpy(), logits)   # explaining left the model's ReLUs as they were


def test_relu_override_leaves_the_model_unchanged():
    model, conv, _ = relu_cnn()
    x = rng_images((6, 7, 2), n=2)
    before = model(x).numpy()
    clf = Classifier(model)
    audit.explain(clf, x, np.array([0, 1]), method="guided_backprop")
    import keras

    assert conv.activation is keras.activations.relu and "call" not in conv.__dict__
    np.testing.assert_array_equal(model(x).numpy(), before)
    import tensorflow as tf

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = tf.reduce_sum(model(xt)[:, 0])
    np.testing.assert_allclose(audit.explain(clf, x, np.array([0, 0]), method="saliency"),
                               np.abs(tape.gradient(score, xt).numpy()).max(-1), atol=1e-6)


# --------------------------------------------------------------------------- CAM methods

def cam_fixture():
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
    acts = keras.Model(inputs, a2)(x).numpy()                                # [3, 4, 4, 4]
    grads = np.broadcast_to((model.get_layer("dense").get_weights()[0][:, targets].T / 16)[:, None, None, :],
                            acts.shape)                                      # d logit_c / d A, spatially constant

    def upsample(cam):
        return tf.image.resize(cam[..., None], (6, 6), method="bilinear").numpy()[..., 0]

    return model, x, targets, acts, grads, upsample


def test_gradcam_equals_hand_formula():
    model, x, targets, acts, grads, upsample = cam_fixture()
    cam = np.maximum(np.einsum("nk,nijk->nij", grads.mean(axis=(1, 2)), acts), 0.0)
    maps = audit.explain(model, x, targets, method="gradcam", target_layer="c2")
    np.testing.assert_allclose(maps, upsample(cam), atol=1e-5)


def test_gradcam_plus_plus_equals_hand_formula():
    model, x, targets, acts, grads, upsample = cam_fixture()
    g2, g3 = grads ** 2, grads ** 3
    denominator = 2 * g2 + acts.sum(axis=(1, 2), keepdims=True) * g3
    alpha = np.where(denominator != 0, g2 / np.where(denominator != 0, denominator, 1), 0)
    weights = (alpha * np.maximum(grads, 0)).sum(axis=(1, 2))
    cam = np.maximum(np.einsum("nk,nijk->nij", weights, acts), 0.0)
    maps = audit.explain(model, x, targets, method="gradcam_plus_plus", target_layer="c2")
    np.testing.assert_allclose(maps, upsample(cam), atol=1e-5)


# --------------------------------------------------------------------------- occlusion

def brute_force_occlusion(model, x, targets, patch, stride, fill):
    """One model call per patch, overlapping drops averaged per pixel."""
    clf = Classifier(model)
    h, w = x.shape[1:3]
    ys, xs = anchors(h, patch[0], stride[0]), anchors(w, patch[1], stride[1])
    out = np.zeros(x.shape[:3])
    count = np.zeros((h, w))
    base = clf.logits(x)[np.arange(len(x)), targets]
    for y0 in ys:
        for x0 in xs:
            occluded = x.copy()
            occluded[:, y0:y0 + patch[0], x0:x0 + patch[1]] = fill[:, y0:y0 + patch[0], x0:x0 + patch[1]]
            drop = base - clf.logits(occluded)[np.arange(len(x)), targets]
            out[:, y0:y0 + patch[0], x0:x0 + patch[1]] += drop[:, None, None]
            count[y0:y0 + patch[0], x0:x0 + patch[1]] += 1
    assert count.min() >= 1
    return out / count


@pytest.mark.parametrize("baseline", ["constant", "mean", "blur"])
@pytest.mark.parametrize("patch, stride", [((5, 6), (3, 4)), ((4, 4), (4, 4)), ((7, 5), (2, 3))])
def test_occlusion_equals_a_brute_force_loop(patch, stride, baseline):
    from audit.explainers.base import blur

    model = build_model("plain")
    x = rng_images((20, 24, 3), n=3, low=0, high=1)
    targets = np.array([0, 1, 2])
    fill = {"constant": np.full_like(x, 0.3), "mean": np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape),
            "blur": blur(x, 2.0)}[baseline]
    maps = audit.explain(model, x, targets, method="occlusion", patch=patch, stride=stride, baseline=baseline,
                         value=0.3, sigma=2.0, batch_size=5, adaptive=False)
    np.testing.assert_allclose(maps, brute_force_occlusion(model, x, targets, patch, stride, fill), atol=1e-5)


def test_occlusion_default_geometry_covers_the_border():
    ys = anchors(20, 3, 2)
    assert ys[0] == 0 and ys[-1] == 17 and np.all(np.diff(ys) > 0)
    assert Occlusion().geometry((224, 224)) == ((28, 28), (14, 14))


def test_occlusion_patch_as_a_fraction_scales_with_the_input():
    assert Occlusion(patch=0.25).geometry((224, 224)) == ((56, 56), (28, 28))
    assert Occlusion(patch=0.25).geometry((64, 80)) == ((16, 16), (8, 8))
    assert Occlusion().geometry((64, 64)) == ((8, 8), (4, 4))   # the default: 1/8 of the shorter side
    with pytest.raises(ValueError, match=r"`occlusion.patch` must be a number in \(0.0, 1.0\]"):
        Occlusion(patch=1.5)


def test_occlusion_default_is_adaptive():
    assert Occlusion().adaptive and Occlusion().budget == 0.33


def test_adaptive_occlusion_with_full_budget_is_the_full_grid():
    model = build_model("logits")
    clf = Classifier(model)
    x = rng_images((20, 24, 3), n=2, low=0, high=1)
    targets = np.array([0, 2])
    full = Occlusion(patch=4, stride=2, adaptive=False)
    expected = full.explain(clf, x, targets)
    adaptive = Occlusion(patch=4, stride=2, adaptive=True, budget=1.0)
    np.testing.assert_allclose(adaptive.explain(clf, x, targets), expected, atol=1e-5)
    assert full.passes_ == adaptive.passes_ == 9 * 11 + 1


def test_adaptive_occlusion_is_exact_on_the_coarse_grid_and_refines_the_highest():
    from audit.explainers.occlusion import GRADIENT_COST

    model = build_model("logits")
    clf = Classifier(model)
    x = rng_images((20, 24, 3), n=2, low=0, high=1)
    targets = np.array([0, 2])
    full = Occlusion(patch=4, stride=2, adaptive=False)
    full_maps = full.explain(clf, x, targets)
    coarse_only = Occlusion(patch=4, stride=2, adaptive=True, budget=0.3)
    cheap = Occlusion(patch=4, stride=2, adaptive=True, budget=0.45)
    coarse_maps, maps = coarse_only.explain(clf, x, targets), cheap.explain(clf, x, targets)
    assert coarse_only.passes_ == 5 * 6 + 1 + GRADIENT_COST and cheap.passes_ == 45
    np.testing.assert_allclose(coarse_maps[:, 0, 0], full_maps[:, 0, 0], atol=1e-5)  # only patch (0, 0) covers it
    assert np.abs(maps - full_maps).sum() < np.abs(coarse_maps - full_maps).sum()
    top = full_maps.reshape(2, -1).argmax(1)
    np.testing.assert_allclose(maps.reshape(2, -1)[[0, 1], top], full_maps.reshape(2, -1)[[0, 1], top], rtol=0.2)


def test_drop_estimate_recovers_a_scaled_prediction_plus_a_bilinear_residual():
    from audit.explainers.occlusion import estimate_drops

    rng = np.random.default_rng(0)
    ys, xs = anchors(20, 4, 2).astype(float), anchors(24, 4, 2).astype(float)    # 9 x 11 positions
    rows, cols = np.array([0, 2, 4, 6, 8]), np.array([0, 2, 4, 6, 8, 10])
    predicted = rng.normal(size=(2, 9, 11))
    residual = 0.3 + 0.1 * ys[:, None] - 0.05 * xs[None, :] + 0.01 * ys[:, None] * xs[None, :]  # bilinear
    # the least-squares scale is exact only when the residual is orthogonal to the prediction on the
    # coarse grid; make it so, as the estimate then must reproduce the truth everywhere
    known = predicted[:, rows][:, :, cols]
    res_known = np.broadcast_to(residual[rows][:, cols], known.shape)
    predicted -= ((known * res_known).sum((1, 2)) / (res_known ** 2).sum((1, 2)))[:, None, None] * residual
    truth = np.array([2.0, -0.5])[:, None, None] * predicted + residual
    estimate = estimate_drops(truth[:, rows][:, :, cols], predicted, rows, cols, ys, xs)
    np.testing.assert_allclose(estimate, truth, atol=1e-9)


# --------------------------------------------------------------------------- against a peer

@pytest.mark.slow
def test_agrees_with_xplique_where_the_definitions_coincide():
    """Grad-CAM, trapezoid IG and non-overlapping occlusion equal Xplique 2.x's (`make install` installs it)."""
    import xplique.attributions as xa
    import tensorflow as tf

    import keras

    keras.utils.set_random_seed(4)
    inputs = keras.Input((16, 16, 3))
    a = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inputs)
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="last")(a)  # input resolution: no resize
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(a)))
    x = rng_images((16, 16, 3), n=3, low=0, high=1)
    targets = np.array([0, 1, 2])
    onehot = tf.one_hot(targets, 3).numpy()

    ours = audit.explain(model, x, targets, method="gradcam")
    theirs = np.asarray(xa.GradCAM(model, conv_layer="last").explain(x, onehot)).reshape(ours.shape)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)

    ours = audit.explain(model, x, targets, method="integrated_gradients", rule="trapezoid", steps=10)
    theirs = np.asarray(xa.IntegratedGradients(model, steps=10, reducer=None).explain(x, onehot)).sum(-1)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)

    ours = audit.explain(model, x, targets, method="occlusion", patch=4, stride=4, baseline="constant", value=0.0,
                         adaptive=False)
    theirs = np.asarray(xa.Occlusion(model, patch_size=4, patch_stride=4, occlusion_value=0.0).explain(x, onehot))
    np.testing.assert_allclose(ours, theirs.reshape(ours.shape), atol=1e-5)
