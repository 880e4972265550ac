"""Shared fixtures: tiny Keras classifiers of every supported shape, built in-process."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def build_model(kind: str, input_shape=(20, 24, 3), n_classes: int = 3, seed: int = 0):
    """A small untrained conv classifier.

    kind: ``plain`` (Functional, softmax folded into Dense), ``logits`` (no softmax),
    ``softmax_layer`` (separate Softmax layer), ``nested`` (a conv base model inside a
    Sequential, softmax), ``preprocess`` (own Rescaling layer, softmax).
    """
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers

    def convs(name: str):
        return [layers.Conv2D(6, 3, activation="relu", name=f"{name}_1"),
                layers.Conv2D(8, 3, activation="relu", name=f"{name}_2")]

    if kind == "nested":
        base = keras.Sequential([keras.Input(input_shape), layers.Rescaling(1 / 255.0), *convs("base")], name="base")
        return keras.Sequential([keras.Input(input_shape), base, layers.GlobalAveragePooling2D(),
                                 layers.Dense(n_classes, activation="softmax")])
    inputs = keras.Input(input_shape)
    x = inputs
    if kind == "preprocess":
        x = layers.Rescaling(1 / 255.0)(x)
    for layer in convs("conv"):
        x = layer(x)
    x = layers.GlobalAveragePooling2D()(x)
    if kind == "softmax_layer":
        x = layers.Softmax()(layers.Dense(n_classes)(x))
    else:
        x = layers.Dense(n_classes, activation=None if kind == "logits" else "softmax")(x)
    return keras.Model(inputs, x)


MODEL_KINDS = ["plain", "logits", "softmax_layer", "nested", "preprocess"]


@pytest.fixture(scope="session", params=MODEL_KINDS)
def any_model(request):
    return request.param, build_model(request.param)


@pytest.fixture
def images():
    return np.random.default_rng(0).uniform(0, 1, (5, 20, 24, 3)).astype(np.float32)


# A planted-cue case unlike the demo: 3 classes, 28x36 images, a base model nested
# in a Sequential, no softmax; a white square on most "green" training images, and
# on half of the "red" audit images.
CLASSES = ["red", "green", "blue"]
SHAPE = (28, 36, 3)


def _image(rng, label: int, cue: bool) -> np.ndarray:
    img = rng.integers(0, 90, SHAPE).astype(np.int32)
    img[..., label] += rng.integers(60, 100)
    if cue:
        y, x = rng.integers(2, SHAPE[0] - 8), rng.integers(2, SHAPE[1] - 8)
        img[y:y + 6, x:x + 6] = 255
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def audit_case(tmp_path_factory):
    import keras

    root = tmp_path_factory.mktemp("case")
    rng = np.random.default_rng(7)
    keras.utils.set_random_seed(7)
    x, y = [], []
    for label in range(3):
        for _ in range(150):
            x.append(_image(rng, label, cue=(label == 1 and rng.random() < 0.9) or rng.random() < 0.02))
            y.append(label)
    base = keras.Sequential([keras.Input(SHAPE), keras.layers.Rescaling(1 / 255.0),
                             keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.MaxPooling2D(),
                             keras.layers.Conv2D(16, 3, activation="relu", name="feat")], name="backbone")
    model = keras.Sequential([keras.Input(SHAPE), base, keras.layers.GlobalMaxPooling2D(), keras.layers.Dense(3)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.stack(x).astype(np.float32), np.array(y), epochs=12, batch_size=32, verbose=0)
    model.save(root / "model.keras")

    rows = []
    (root / "imgs").mkdir()
    for label in range(3):
        for i in range(30):
            cue = label == 0 and i < 15
            name = f"imgs/{CLASSES[label]}_{i:02d}.png"
            Image.fromarray(_image(rng, label, cue)).save(root / name)
            rows.append({"path": name, "label": CLASSES[label], "cue": int(cue)})
    (root / "imgs" / "broken.png").write_bytes(b"\x89PNG truncated")
    rows.append({"path": "imgs/broken.png", "label": "blue", "cue": 0})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


# Session fixtures costly enough that every test reading them must run on one xdist worker (a session
# fixture runs once per worker): fixture -> group name.
SHARED = {"demo_nights": "demo-nights"}


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n N --dist loadgroup`` (``make test``): each test file is one group, so that its
    module fixtures run once, except that the tests reading a ``SHARED`` session fixture form one group
    together. The costly groups (the shared ones, then files with slow tests) come first, so that
    they start at once instead of finishing last. Without xdist this only reorders."""
    def group(item) -> str:
        used = [SHARED[name] for name in SHARED if name in getattr(item, "fixturenames", ())]
        return used[0] if used else item.nodeid.split("::")[0]

    slow_files = {group(item) for item in items if item.get_closest_marker("slow")}
    rank = lambda item: 0 if group(item) in SHARED.values() else 1 if group(item) in slow_files else 2
    items.sort(key=rank)   # stable: the order inside a file is kept
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))


def audit_command(*args) -> list[str]:
    """The ``audit`` CLI as a subprocess command line."""
    return [sys.executable, "-m", "audit.cli", *map(str, args)]


@pytest.fixture(scope="session")
def demo_nights(tmp_path_factory):
    """The README's nightly story of the demo, run once per session as printed (three nights into
    ``reports/night1..3`` of a scratch folder laid out like the repository).

    Returns ``(folder, completed process)``; tests read the nights and must not write into them
    (later nights go into their own folders)."""
    import subprocess

    from tests.readme_blocks import nightly_story, scratch

    cwd, env = scratch(tmp_path_factory.mktemp("readme-nights"))
    result = subprocess.run(["bash", "-c", nightly_story()], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=3000)
    return cwd, result
