"""Global cues: image properties measured, shifted and tested against a placebo.

A hand-built model calls an image "smooth" unless it has fine detail (the mean
absolute Laplacian of its luma, fixed weights): blurring a "texture" image flips
it. No region carries that cue, so only a property test can confirm it.
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from audit.config import resolve
from audit.cues import Cue
from audit.findings import Finding
from audit.image_properties import MEASURES, file_properties, jpeg_quality, measure, shift
from audit.stages.verify import verify

SIDE = 32
CLASSES = ["smooth", "texture"]


def _detail_model():
    import keras

    from audit.model_io import Classifier

    inputs = keras.Input((SIDE, SIDE, 3))
    lap = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)
    kernel = np.zeros((3, 3, 3, 2), np.float32)
    for c, w in enumerate((0.299, 0.587, 0.114)):
        kernel[:, :, c, 0], kernel[:, :, c, 1] = w * lap, -w * lap
    conv = keras.layers.Conv2D(2, 3, activation="relu", name="detail")
    dense = keras.layers.Dense(2)
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(conv(inputs))))
    conv.set_weights([kernel, np.zeros(2, np.float32)])
    dense.set_weights([np.array([[0.0, 0.2], [0.0, 0.2]], np.float32), np.array([4.0, 0.0], np.float32)])
    return Classifier(model)


def _texture(rng):
    return np.clip(128 + rng.normal(0, 30, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def blur_case(tmp_path_factory):
    """12 blurred texture images (called smooth: the errors), 24 sharp ones, 8 smooth gradients."""
    root = tmp_path_factory.mktemp("blur")
    rng = np.random.default_rng(5)
    rows = []
    for i in range(44):
        if i < 36:
            label, img = "texture", _texture(rng)
            if i < 12:
                img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(1.5)))
        else:
            label = "smooth"
            ramp = np.linspace(40, 220, SIDE)[None, :, None] * np.ones((SIDE, 1, 3))
            img = np.clip(ramp + rng.normal(0, 1, ramp.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"{i}.png")
        rows.append({"row": i, "path": f"{i}.png", "label": label})
    return root, pd.DataFrame(rows)


def test_a_blur_cue_is_global_names_sharpness_and_is_confirmed_by_intervention(blur_case):
    from audit.interventions import load, predict

    root, frame = blur_case
    classifier = _detail_model()
    config = resolve(None, ["verify.budget=100", "verify.max_samples=24"], {"out": "unused"})
    images = load(config, root, classifier, _Table(frame), frame["row"].tolist())
    probs, _ = predict(classifier, np.stack([images[r] for r in frame["row"]]), config)
    predicted = np.array(CLASSES)[probs.argmax(axis=1)]
    assert (predicted[:12] == "smooth").all() and (predicted[12:36] == "texture").all()   # the model as built
    top2 = np.sort(probs, axis=1)[:, -2:]
    predictions = frame.assign(predicted=predicted, margin=top2[:, 1] - top2[:, 0], error=None,
                               probs=list(probs.astype(np.float32)))
    finding = Finding(id="F-blur", true_label="texture", predicted_label="smooth", rows=tuple(range(12)),
                      members=tuple(f"{i}.png" for i in range(12)), support=0.3, coherence=0.5,
                      cue=Cue(x=0.5, y=0.5, focus=0.1, cell="centre"))
    maps = np.zeros((44, 16, 16), np.float32)   # Grad-CAM sees nothing: the cue is no region
    [out] = verify(config, root, CLASSES, predictions, np.arange(44), maps, [finding], classifier)
    sharpness = next(p for p in out.properties if p.property == "sharpness")
    assert sharpness.direction == "lower" and sharpness.effect <= -1.0
    assert sharpness.shift == "blur" and sharpness.test.rate >= 0.8 and sharpness.test.random_rate <= 0.1
    assert out.cue.type == "global" and out.cue.property == "sharpness" and out.cue.direction == "lower"
    assert out.cue.text.startswith("blurrier than the class's clean images")
    assert out.causal >= 0.7


class _Table:
    def __init__(self, frame):
        self.row = frame["row"].to_numpy()
        self.path = frame["path"].to_numpy(dtype=object).astype(str)
        self.at = {int(r): i for i, r in enumerate(self.row)}


def test_measures_move_the_way_their_shifts_do():
    rng = np.random.default_rng(0)
    images = np.stack([_texture(rng) for _ in range(6)]).astype(np.float32) * 0.8 + 20
    column = {name: i for i, name in enumerate(MEASURES)}
    base = measure(images)
    for name, prop, sign in (("blur", "sharpness", -1), ("sharpen", "sharpness", 1), ("darken", "brightness", -1),
                             ("brighten", "brightness", 1), ("desaturate", "saturation", -1), ("warm", "warmth", 1),
                             ("cool", "warmth", -1), ("green", "tint", 1), ("magenta", "tint", -1),
                             ("flatten", "contrast", -1), ("add_noise", "noise", 1)):
        moved = measure(shift(images, name, 0.5))[:, column[prop]]
        assert (np.sign(moved - base[:, column[prop]]) == sign).all(), (name, prop)


def test_jpeg_quality_is_read_from_the_file(tmp_path):
    img = Image.fromarray(_texture(np.random.default_rng(1)))
    for q in (20, 50, 90):
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=q)
        assert abs(jpeg_quality(Image.open(io.BytesIO(buffer.getvalue()))) - q) <= 2
    img.save(tmp_path / "a.png")
    quality, pixels, aspect = file_properties(str(tmp_path / "a.png"))
    assert quality == 100.0 and aspect == 1.0 and pixels == pytest.approx(np.log(SIDE * SIDE))


def test_every_shift_and_its_placebo_run():
    from audit.image_properties import SHIFTABLE, placebo

    images = np.stack([_texture(np.random.default_rng(2))]).astype(np.float32)
    names = {n for pair in SHIFTABLE.values() for n in pair if n is not None}
    for name in names:
        for which in (name, placebo(name)):
            out = shift(images, which, 0.5)
            assert out.shape == images.shape and out.dtype == np.float32 and 0 <= out.min() <= out.max() <= 255
