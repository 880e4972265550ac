"""The explainer contract, checked for every registered method on every supported model shape."""
import numpy as np
import pytest

import audit
from audit.explainers import available, get
from audit.model_io import Classifier
from tests.conftest import build_model

EXPECTED = {"gradcam", "gradcam_plus_plus", "occlusion", "integrated_gradients", "saliency", "smoothgrad",
            "gradient_x_input", "guided_backprop", "deconvnet", "expected_gradients", "lrp"}


def test_every_issue_method_is_registered():
    assert EXPECTED <= set(available())


@pytest.mark.parametrize("method", available())
def test_every_method_on_every_model_shape(method, any_model, images):
    kind, model = any_model
    targets = np.array([0, 1, 2, 0, 1])
    maps = audit.explain(model, images, targets, method=method, batch_size=64)
    assert maps.shape == (5, 20, 24) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and np.abs(maps).sum() > 0
    one = audit.explain(model, images, targets, method=method, batch_size=1)
    np.testing.assert_allclose(maps, one, atol=1e-5, rtol=0)  # internal batch size does not matter
    odd = audit.explain(model, images, targets, method=method, batch_size=7)  # chunks across image boundaries
    np.testing.assert_allclose(maps, odd, atol=1e-5, rtol=0)
    again = audit.explain(model, images, targets, method=method, batch_size=64)
    np.testing.assert_array_equal(maps, again)  # deterministic
    other = audit.explain(model, images, np.array([1, 2, 0, 1, 2]), method=method, batch_size=64)
    assert not np.allclose(maps, other)  # the target class matters
    first = audit.explain(model, images[:1], targets[:1], method=method, batch_size=64)
    if method != "expected_gradients":  # its default background is the call's own images
        np.testing.assert_allclose(first[0], maps[0], atol=1e-5, rtol=0)  # an image's map ignores its neighbours


@pytest.mark.parametrize("method", available())
def test_every_method_handles_an_empty_batch(method):
    model = build_model("plain")
    maps = audit.explain(model, np.zeros((0, 20, 24, 3), np.float32), np.zeros(0, np.int32), method=method)
    assert maps.shape == (0, 20, 24) and maps.dtype == np.float32


@pytest.mark.parametrize("method", available())
def test_pipeline_call_with_only_batch_size(method, images):
    model = build_model("plain")
    explainer = get(method)(batch_size=3)
    maps = explainer.explain(Classifier(model), images, np.array([0, 1, 2, 0, 1]))
    assert maps.shape == (5, 20, 24)


def test_explicit_target_layer_is_used():
    model = build_model("nested")
    x = np.random.default_rng(0).uniform(0, 255, (2, 20, 24, 3)).astype(np.float32)
    last = audit.explain(model, x, np.array([0, 1]), method="gradcam")
    first = audit.explain(model, x, np.array([0, 1]), method="gradcam", target_layer="base_1")
    assert not np.allclose(last, first)


def test_contract_errors(images):
    model = build_model("plain")
    with pytest.raises(ValueError, match="unknown attribution method"):
        audit.explain(model, images, np.zeros(5, int), method="nope")
    with pytest.raises(ValueError, match="targets must be class indices"):
        audit.explain(model, images, np.full(5, 7))
    with pytest.raises(ValueError, match=r"images must be \[N, 20, 24, 3\]"):
        audit.explain(model, images[:, :10], np.zeros(5, int))
    assert Classifier(model).n_classes == 3


@pytest.mark.parametrize("method, params, message", [
    ("gradcam", {"batch_size": 0}, "`gradcam.batch_size` must be a positive int"),
    ("integrated_gradients", {"steps": 0}, "`integrated_gradients.steps` must be a positive int"),
    ("integrated_gradients", {"rule": "simpson"}, "`integrated_gradients.rule` must be one of"),
    ("integrated_gradients", {"baseline": "white"}, "`integrated_gradients.baseline` must be black, mean"),
    ("integrated_gradients", {"baseline": np.zeros((3, 3, 3))}, r"`integrated_gradients.baseline` must be an array"),
    ("occlusion", {"patch": 30}, r"`occlusion.patch` must be at most the image size 20x24 \(got \(30, 30\)\)"),
    ("occlusion", {"stride": (2, 0)}, "`occlusion.stride` must be a positive int"),
    ("occlusion", {"baseline": "noise"}, "`occlusion.baseline` must be one of mean, constant, blur"),
    ("occlusion", {"budget": 1.5}, "`occlusion.budget` must be a number"),
    ("smoothgrad", {"noise": -0.1}, "`smoothgrad.noise` must be a number >= 0"),
    ("expected_gradients", {"background": np.zeros((2, 5, 5, 3))}, "`expected_gradients.background` must be"),
    ("lrp", {"composite": "alpha_beta"}, "`lrp.composite` must be one of epsilon, epsilon_plus, epsilon_gamma_box"),
    ("lrp", {"epsilon": 0}, r"`lrp.epsilon` must be a number > 0.0 \(got 0\)"),
    ("lrp", {"gamma": -1}, "`lrp.gamma` must be a number >= 0.0"),
    ("lrp", {"low": "black"}, "`lrp.low` must be a finite number or null"),
    ("lrp", {"low": 5, "high": 1}, r"`lrp.high` must be a number > `lrp.low` \(5\) \(got 1\)"),
])
def test_parameter_errors_name_the_parameter(method, params, message, images):
    with pytest.raises(ValueError, match=message):
        audit.explain(build_model("plain"), images, np.zeros(5, int), method=method, **params)


def test_run_flat_chunks_items_across_images_under_the_memory_bound():
    import tensorflow as tf

    from audit.explainers.base import run_flat

    calls = []

    def fn(values, index, weight):  # per image sum of weight * value, like the path methods
        calls.append((len(values), len(index)))
        return tf.math.unsorted_segment_sum(tf.gather(values, index) * weight, index, tf.shape(values)[0])

    owner = np.repeat(np.arange(5), 3)                       # 5 images x 3 steps = 15 items
    values = np.arange(1.0, 6.0, dtype=np.float32)
    weight = np.linspace(0.1, 1.5, 15).astype(np.float32)
    sums = run_flat(fn, owner, [values], [weight], batch_size=4, n_images=5, reduce=True)
    np.testing.assert_allclose(sums, values * weight.reshape(5, 3).sum(1), rtol=1e-6)
    assert [items for _, items in calls] == [4, 4, 4, 3]     # fixed chunks, not one chunk per image
    assert [images for images, _ in calls] == [2, 2, 2, 1]   # each chunk gets only the images it needs
    per_item = run_flat(lambda v, i, w: tf.gather(v, i) * w, owner, [values], [weight], 4, 5, reduce=False)
    np.testing.assert_allclose(per_item, values[owner] * weight, rtol=1e-6)
