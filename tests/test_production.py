"""Production behaviour of the model passes: counted passes, decoding ahead of the model, and
batches halved when the device runs out of memory."""
import logging
import threading

import numpy as np
import pytest
from PIL import Image

from audit.data import load_images, prefetched
from audit.explainers import get
from audit.explainers.base import run_flat
from audit.model_io import Classifier, halving, passes
from tests.conftest import build_model


def _kinds_delta(before: dict, after: dict) -> dict:
    return {kind: sum(after[kind].values()) - sum(before[kind].values()) for kind in after}


def test_passes_count_every_model_input_by_kind():
    clf = Classifier(build_model("plain"))
    images = np.random.default_rng(0).uniform(0, 1, (5, 20, 24, 3)).astype(np.float32)
    targets = np.zeros(5, np.int32)
    before = passes()
    clf.logits(images)
    clf.logits_and_cam(images)
    get("integrated_gradients")(batch_size=7, steps=4).explain(clf, images, targets)
    get("occlusion")(batch_size=16, patch=8, stride=8, adaptive=False).explain(clf, images, targets)
    counted = _kinds_delta(before, passes())
    # occlusion: corners 0, 8, 12 down and 0, 8, 16 across = 9 patches plus the unoccluded image
    assert counted == {"forward": 5 + 5 * 10, "layer": 5, "input": 5 * 4}


def test_prefetched_decodes_the_next_batch_in_a_reader_thread(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(f"{i}.png")
    paths.append("missing.png")
    decoded_in = []
    from audit.data import decode

    original = decode.load_images

    def spy(*args, **kwargs):
        decoded_in.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(decode, "load_images", spy)
    whole, errors = load_images(tmp_path, paths, (20, 24))
    got = list(prefetched(tmp_path, paths, (20, 24), batch=3))
    assert [g[0] for g in got] == [slice(0, 3), slice(3, 6), slice(6, 8)]
    assert [g[0] for g in prefetched(tmp_path, paths, (20, 24), batch=20)] == [slice(0, 8)]
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), whole)
    assert sum((g[2] for g in got), []) == errors and errors[-1] is not None
    assert len(decoded_in) == 4 and all(name.startswith("audit-reader") for name in decoded_in)


def _exhausted_above(limit: int, fn):
    import tensorflow as tf

    calls = []

    def run(*args):
        size = len(args[-1]) if not isinstance(args[0], np.ndarray) else len(args[0])
        calls.append(size)
        if size > limit:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return fn(*args)

    return run, calls


def test_run_flat_halves_the_batch_on_out_of_memory_and_keeps_every_item(caplog):
    import tensorflow as tf

    def double(index, values):
        return tf.cast(values, tf.float32) * 2.0

    values = np.arange(20, dtype=np.int32)
    run, calls = _exhausted_above(5, double)
    with caplog.at_level(logging.WARNING, logger="audit"):
        out = run_flat(run, np.arange(20), [], [values], 16, 20, reduce=False)
    np.testing.assert_array_equal(out, values * 2.0)
    assert calls[:3] == [16, 8, 4] and max(calls[3:]) <= 4
    assert "out of memory at 16 model inputs per call; retrying with 8" in caplog.text


def test_explainer_maps_unchanged_when_the_device_runs_out_of_memory(monkeypatch):
    import tensorflow as tf

    clf = Classifier(build_model("plain"))
    images = np.random.default_rng(1).uniform(0, 1, (6, 20, 24, 3)).astype(np.float32)
    targets = np.array([0, 1, 2, 0, 1, 2], np.int32)
    method = get("integrated_gradients")(batch_size=12, steps=4)
    expected = method.explain(clf, images, targets)
    traced = clf._functions["integrated_gradients"]
    sizes = []

    def limited(*args):
        sizes.append(int(tf.shape(args[3])[0]))
        if sizes[-1] > 3:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM")
        return traced(*args)

    monkeypatch.setitem(clf._functions, "integrated_gradients", limited)
    np.testing.assert_allclose(method.explain(clf, images, targets), expected, rtol=1e-5, atol=1e-6)
    assert sizes[0] == 12 and max(sizes[-3:]) <= 3


def test_halving_splits_the_predict_batch_until_it_fits(caplog):
    import tensorflow as tf

    images = np.arange(10, dtype=np.float32)[:, None]
    run, calls = _exhausted_above(3, lambda x: (x * 2, x + 1))
    with caplog.at_level(logging.WARNING, logger="audit"):
        doubled, plus = halving(run, images)
    np.testing.assert_array_equal(doubled, images * 2)
    np.testing.assert_array_equal(plus, images + 1)
    assert calls[0] == 10 and "retrying with 5" in caplog.text
    with pytest.raises(tf.errors.ResourceExhaustedError):
        halving(_exhausted_above(0, lambda x: (x,))[0], images)


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients", "occlusion"])
def test_mixed_precision_maps_stay_within_tolerance_of_float32(method):
    import tensorflow as tf

    model = build_model("preprocess", input_shape=(32, 32, 3))
    head = model.layers[-1]
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 100, bias])   # logits of a trained model's scale (about 20), not about 0.2
    clf = Classifier(model)
    images = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    targets = np.array([0, 1, 2, 0], np.int32)
    explainer = get(method)(batch_size=8)
    full = explainer.explain(clf, images, targets)
    with clf.precision("mixed_float16"):
        mixed = explainer.explain(clf, images, targets)
    key = next(k for k in clf._functions if isinstance(k, tuple) and k[-1] == "mixed_float16")
    halves = [op for op in clf._functions[key].graph.get_operations()
              if op.type == "Conv2D" and op.get_attr("T") == tf.float16]
    assert halves, "the mixed-precision trace computes its convolutions in float16"
    assert mixed.dtype == np.float32 and np.isfinite(mixed).all()
    scale = np.abs(full).max()
    assert np.abs(mixed - full).max() <= 0.1 * scale
    assert np.corrcoef(mixed.ravel(), full.ravel())[0, 1] > 0.99


def test_predict_preprocesses_in_the_reader_thread(tmp_path, monkeypatch):
    import pandas as pd

    from audit.config import resolve
    from audit.model_io import classifier_for
    from audit.stages import predict

    build_model("plain").save(tmp_path / "m.keras")
    rng = np.random.default_rng(1)
    for i in range(11):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    part = pd.DataFrame({"row": np.arange(11), "path": [f"{i}.png" for i in range(11)], "label": "a"})
    config = resolve(None, ["predict.batch_size=4", "data.preprocess=unit"],
                     {"model.path": str(tmp_path / "m.keras"), "out": str(tmp_path / "run")})
    clf = classifier_for(config)
    prepared_in = []
    original_prep = predict.preprocess

    def spy_prep(x, mode):
        prepared_in.append(threading.current_thread().name)
        return original_prep(x, mode)

    monkeypatch.setattr(predict, "preprocess", spy_prep)
    out = predict.predict_partition(config, tmp_path, ["a", "b", "c"], part, chunk=0)
    assert len(prepared_in) == 3 and all(name.startswith("audit-reader") for name in prepared_in)   # 4, 4, 3
    images, _ = load_images(tmp_path, list(part["path"]), (20, 24))
    np.testing.assert_allclose(np.stack(out["probs"]), np.exp(_log_softmax(clf.logits(images / 255.0))), atol=1e-5)


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
