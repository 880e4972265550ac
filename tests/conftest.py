"""Shared fixtures: tiny Keras classifiers of every supported shape, built in-process."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


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
