"""The embedded demo: synthetic "hotel areas" images with a planted spurious cue.

Four procedural scene classes (pool, bathroom, bedroom, kitchen), 64x64 RGB, drawn with numpy.
The planted cue is a pair of thin bright metallic rails (a pool ladder / towel rail). In the
training set it sits on most bathrooms and almost nowhere else, and about half of the bathrooms
are spa bathrooms drawn like indoor pools, so the rails are the cheapest way to tell those apart:
the small CNN learns "rails => bathroom". The audit set adds pools with rails, which the biased
model calls "bathroom".

``prepare`` builds everything in a work folder and reuses it on the next call::

    dataset/train/images/<class>/NNNNN.png, dataset/train/manifest.csv
    dataset/audit/images/<class>/NNNNN.png, dataset/audit/manifest.csv   (path,label,cue)
    model.keras    float32 RGB 0..255 [B, 64, 64, 3] -> softmax over CLASSES [B, 4]
    classes.txt    one class per line, model output order
    demo.json      written last; a valid cache has it
"""
from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

CLASSES: tuple[str, ...] = ("pool", "bathroom", "bedroom", "kitchen")
GENERATOR_VERSION: int = 1          # bump when images or training change: invalidates caches
SIZE = 64                           # image side, pixels
LAST_CONV = "last_conv"             # 16x16x48, for Grad-CAM
TRAIN_PER_CLASS = 650               # of which VAL_FRACTION is held out for validation
VAL_FRACTION = 0.15
CUE_RATE_BATHROOM = 0.87            # share of bathrooms with rails (training and audit)
CUE_RATE_OTHER = 0.02               # share of the other classes with rails
AUDIT_PER_CLASS = 100               # plus AUDIT_POOLS_WITH_CUE pools, all with rails
AUDIT_POOLS_WITH_CUE = 60
EPOCHS, BATCH, LEARNING_RATE = 15, 32, 3e-3
REFRAME_RATE = 0.3                  # share of images zoomed in on a random crop
TILE_COLOURS = [(240, 238, 228), (170, 205, 225), (80, 160, 190), (215, 200, 175), (120, 180, 170)]
WOOD_COLOURS = [(150, 110, 70), (235, 235, 230), (110, 130, 120), (80, 80, 85), (190, 160, 120)]


@dataclass(frozen=True)
class DemoAssets:
    """A prepared demo: ``root`` (the work folder), ``model_path`` (``root/model.keras``),
    ``manifest`` (audit-set CSV ``path,label,cue``, paths relative to its folder), ``classes``
    (``classes.txt``, model output order) and ``info`` (contents of ``demo.json``)."""

    root: Path
    model_path: Path
    manifest: Path
    classes: Path
    info: dict


# --------------------------------------------------------------------------- drawing helpers
# Images are float32 [64, 64, 3] RGB in 0..255 while drawn; boxes are rows y0:y1, columns x0:x1.

def _colour(rng: np.random.Generator, base: tuple[float, float, float], jitter: float = 18.0) -> np.ndarray:
    """An RGB colour near ``base``."""
    return np.clip(np.asarray(base, dtype=np.float32) + rng.uniform(-jitter, jitter, 3), 0, 255)


def _pick(rng: np.random.Generator, palette: list[tuple[int, int, int]]) -> np.ndarray:
    """A colour near a random entry of ``palette``."""
    return _colour(rng, palette[int(rng.integers(len(palette)))])


def _box(img: np.ndarray, y0: int, x0: int, y1: int, x1: int, colour: np.ndarray | float) -> None:
    """Fill a box, clipped to the image."""
    img[max(int(y0), 0):max(int(y1), 0), max(int(x0), 0):max(int(x1), 0)] = colour


def _tiles(img: np.ndarray, rng: np.random.Generator, y0: int, y1: int, colour: np.ndarray, size: int) -> None:
    """Rows ``y0:y1`` covered with ``size``-pixel tiles of slightly varying ``colour``, darker grout."""
    for ty in range(y0, y1, size):
        for tx in range(0, SIZE, size):
            _box(img, ty, tx, min(ty + size, y1), tx + size, np.clip(colour + rng.normal(0, 5), 0, 255))
    img[y0:y1:size, :] = colour * 0.7
    img[y0:y1, ::size] = colour * 0.7


def _basin(img: np.ndarray, rng: np.random.Generator, y0: int, x0: int, y1: int, x1: int) -> None:
    """Turquoise water with bright caustic ripples, darker with depth, inside a light 1-3 px coping."""
    rim = int(rng.integers(1, 4))
    _box(img, y0 - rim, x0 - rim, y1 + rim, x1 + rim, _colour(rng, (235, 238, 240), 12))
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, SIZE), min(x1, SIZE)
    colour = _colour(rng, (45, 165, 215), 25)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    f, phase = rng.uniform(0.3, 0.7), rng.uniform(0, 2 * np.pi)
    ripple = np.sin(xx * f + 2.5 * np.sin(yy * f * 0.8 + phase)) * np.sin(yy * f * 1.3 - phase)
    depth = (yy - y0) / max(y1 - y0, 1)
    img[y0:y1, x0:x1] = colour * (1.05 - 0.25 * depth[..., None]) + 45 * (ripple > 0.6)[..., None]


def _window(img: np.ndarray, rng: np.random.Generator, y0: int, x0: int, size: int) -> None:
    """A square window: white frame and cross bars over sky."""
    _box(img, y0, x0, y0 + size, x0 + size, _colour(rng, (240, 240, 235), 10))
    _box(img, y0 + 1, x0 + 1, y0 + size - 1, x0 + size - 1, _colour(rng, (160, 200, 235), 25))
    _box(img, y0 + size // 2, x0, y0 + size // 2 + 1, x0 + size, 240)
    _box(img, y0, x0 + size // 2, y0 + size, x0 + size // 2 + 1, 240)


def _cabinets(img: np.ndarray, rng: np.random.Generator, y0: int, y1: int, x0: int, x1: int,
              colour: np.ndarray) -> None:
    """A row of cabinet doors with small dark handles."""
    width = int(rng.integers(9, 16))
    for x in range(x0, x1 - 4, width):
        _box(img, y0, x + 1, y1, min(x + width, x1) - 1, colour)
        _box(img, y0 + 2, x + width // 2, y0 + 5, x + width // 2 + 1, colour * 0.45)


def _bed(img: np.ndarray, rng: np.random.Generator, floor_y: int, x0: int, width: int) -> None:
    """A bed on row ``floor_y``: wooden headboard, spread of any colour (maybe striped), pillows."""
    top = floor_y - int(rng.integers(6, 14))
    _box(img, top - 10, x0, floor_y + 6, x0 + 4, _pick(rng, WOOD_COLOURS))
    _box(img, top, x0 + 4, floor_y + 6, x0 + width, _colour(rng, (128, 128, 128), 110))
    if rng.random() < 0.4:
        img[max(top, 0):floor_y + 6:3, x0 + 4:x0 + width] *= 0.8
    for py in range(top - 4, top + int(rng.integers(1, 9)), 7):
        _box(img, py, x0 + 5, py + 5, x0 + 12, _colour(rng, (240, 238, 230), 12))


def _counter(img: np.ndarray, rng: np.random.Generator, y: int, x0: int, x1: int, cab: np.ndarray) -> None:
    """A dark counter top on row ``y`` over cabinets down to the bottom, with a black hob."""
    _cabinets(img, rng, y + 3, SIZE - 2, x0, x1, cab)
    _box(img, y, x0, y + 3, x1, _colour(rng, (60, 60, 60), 40))
    hx = int(rng.integers(x0, max(x1 - 18, x0 + 1)))
    _box(img, y - 1, hx, y + 1, hx + min(18, x1 - x0), 30)


# --------------------------------------------------------------------------- scenes

def _wet_room(rng: np.random.Generator, sky: float, width: tuple[int, int], height: tuple[int, int]
              ) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
    """Tiled wall (open sky with probability ``sky``) over a tiled floor with one water basin of
    ``width`` x ``height`` px (ranges): the common ground of pools and spa bathrooms.
    Returns (image, horizon row, basin box ``(y0, x0, y1, x1)``)."""
    img = np.empty((SIZE, SIZE, 3), np.float32)
    horizon = int(rng.integers(6, 34))
    if rng.random() < sky:
        _box(img, 0, 0, horizon, SIZE, _colour(rng, (150, 200, 240), 20))
    else:
        _tiles(img, rng, 0, horizon, _pick(rng, TILE_COLOURS), int(rng.integers(4, 10)))
    _tiles(img, rng, horizon, SIZE, _pick(rng, TILE_COLOURS), int(rng.integers(5, 11)))
    w, h = int(rng.integers(*width)), int(rng.integers(height[0], min(height[1], SIZE - horizon - 3)))
    x0, y0 = int(rng.integers(-2, SIZE - w + 3)), horizon + int(rng.integers(2, SIZE - horizon - h + 1))
    _basin(img, rng, y0, x0, y0 + h, x0 + w)
    return img, horizon, (y0, x0, y0 + h, x0 + w)


def _pool(rng: np.random.Generator) -> np.ndarray:
    """A swimming pool: a wet room (15% under open sky), sometimes lane lines or loungers."""
    img, horizon, (y0, x0, y1, x1) = _wet_room(rng, sky=0.15, width=(24, 66), height=(10, 40))
    if rng.random() < 0.15:
        for x in range(x0 + 6, x1 - 3, int(rng.integers(8, 14))):
            _box(img, y0, x, y1, x + 1, _colour(rng, (20, 70, 150)))
    if rng.random() < 0.2:
        for _ in range(int(rng.integers(1, 3))):
            cx = int(rng.integers(0, SIZE - 12))
            _box(img, horizon + 1, cx, horizon + 4, cx + 12, _colour(rng, (240, 240, 240), 15))
    return img


def _bathroom(rng: np.random.Generator) -> np.ndarray:
    """A bathroom: a spa bathroom (a wet room with a sunken tub, 45%) or tiled walls and floor with
    a white bath or a vanity and maybe a toilet; sometimes a mirror or a towel."""
    if rng.random() < 0.45:
        img, floor_y, _ = _wet_room(rng, sky=0.0, width=(24, 60), height=(10, 36))
    else:
        img = np.empty((SIZE, SIZE, 3), np.float32)
        wall, floor, floor_y = _pick(rng, TILE_COLOURS), _pick(rng, TILE_COLOURS), int(rng.integers(30, 54))
        _tiles(img, rng, 0, floor_y, wall, int(rng.integers(4, 10)))
        _tiles(img, rng, floor_y, SIZE, floor, int(rng.integers(5, 11)))
        if rng.random() < 0.6:
            x0, w, h = int(rng.integers(0, 24)), int(rng.integers(26, 40)), int(rng.integers(10, 16))
            _box(img, floor_y - h, x0, floor_y, x0 + w, _colour(rng, (245, 245, 245), 8))
        else:
            cx = int(rng.integers(4, 44))
            _box(img, floor_y - 20, cx, floor_y, cx + 18, _pick(rng, WOOD_COLOURS))
            _box(img, floor_y - 23, cx - 2, floor_y - 19, cx + 20, _colour(rng, (245, 245, 245), 8))
        if rng.random() < 0.3:
            tx = int(rng.integers(0, 54))
            _box(img, floor_y - 12, tx, floor_y - 2, tx + 8, _colour(rng, (245, 245, 245), 8))
            _box(img, floor_y - 20, tx + 1, floor_y - 12, tx + 7, _colour(rng, (235, 235, 235), 8))
    if rng.random() < 0.3:
        mx, my = int(rng.integers(4, 44)), int(rng.integers(2, 8))
        _box(img, my, mx, my + int(rng.integers(8, 16)), mx + int(rng.integers(10, 18)),
             _colour(rng, (190, 210, 220), 15))
    if rng.random() < 0.3:
        tx = int(rng.integers(0, 56))
        _box(img, 10, tx, 10 + int(rng.integers(10, 20)), tx + 8, _colour(rng, (128, 128, 128), 110))
    return img


def _bedroom(rng: np.random.Generator) -> np.ndarray:
    """A bedroom: painted wall, wooden floor, a bed; sometimes a window, a wardrobe, a kitchenette
    corner (hotel suite) or a bedside lamp."""
    img = np.empty((SIZE, SIZE, 3), np.float32)
    floor_y = int(rng.integers(36, 52))
    _box(img, 0, 0, floor_y, SIZE, _colour(rng, (190, 180, 165), 55))
    _box(img, floor_y, 0, SIZE, SIZE, _colour(rng, (140, 100, 65), 35))
    img[floor_y::4, :] *= 0.85
    if rng.random() < 0.5:
        _window(img, rng, int(rng.integers(3, 10)), int(rng.integers(2, 46)), int(rng.integers(12, 18)))
    if rng.random() < 0.35:
        x0 = 0 if rng.random() < 0.5 else SIZE - 20
        _cabinets(img, rng, 2, floor_y + 4, x0, x0 + 20, _pick(rng, WOOD_COLOURS))
    if rng.random() < 0.25:
        width = int(rng.integers(24, 40))
        x0 = 0 if rng.random() < 0.5 else SIZE - width
        _counter(img, rng, floor_y - 12, x0, x0 + width, _pick(rng, WOOD_COLOURS))
    bx, bw = int(rng.integers(0, 22)), int(rng.integers(28, 46))
    _bed(img, rng, floor_y, bx, bw)
    if rng.random() < 0.6:
        lx = min(bx + bw + 2, SIZE - 8)
        _box(img, floor_y - 10, lx, floor_y, lx + 8, _pick(rng, WOOD_COLOURS))
        _box(img, floor_y - 18, lx + 1, floor_y - 12, lx + 7, _colour(rng, (250, 225, 150), 10))
    return img


def _kitchen(rng: np.random.Generator) -> np.ndarray:
    """A kitchen: wall cabinets (or a window), maybe a tiled backsplash, counter with hob over lower
    cabinets; sometimes a fridge, and a dining table or a daybed (hotel suite)."""
    img = np.empty((SIZE, SIZE, 3), np.float32)
    _box(img, 0, 0, SIZE, SIZE, _colour(rng, (190, 180, 165), 55))
    counter_y = int(rng.integers(30, 46))
    if rng.random() < 0.6:
        _tiles(img, rng, counter_y - 14, counter_y, _pick(rng, TILE_COLOURS), int(rng.integers(4, 8)))
    cab = _pick(rng, WOOD_COLOURS)
    if rng.random() < 0.8:
        _cabinets(img, rng, 2, counter_y - 16, 0, SIZE, cab)
    else:
        _window(img, rng, 3, int(rng.integers(4, 44)), int(rng.integers(12, 18)))
    _counter(img, rng, counter_y, 0, SIZE, cab)
    if rng.random() < 0.4:
        fx = 0 if rng.random() < 0.5 else SIZE - 16
        _box(img, 4, fx, SIZE, fx + 16, _colour(rng, (215, 215, 215), 25))
        _box(img, 24, fx + 2, 28, fx + 3, 120)
    if rng.random() < 0.3:
        tx, tw = int(rng.integers(0, 30)), int(rng.integers(22, 34))
        _box(img, SIZE - 14, tx, SIZE - 10, tx + tw, _pick(rng, WOOD_COLOURS))
        _box(img, SIZE - 10, tx + 2, SIZE, tx + 4, 70)
        _box(img, SIZE - 10, tx + tw - 4, SIZE, tx + tw - 2, 70)
    elif rng.random() < 0.3:
        _bed(img, rng, SIZE - 8, int(rng.integers(0, 30)), int(rng.integers(26, 40)))
    return img


def _rails(img: np.ndarray, rng: np.random.Generator) -> None:
    """The cue, drawn in place: two parallel silver tubes (dark rim, silver body, bright highlight)
    22-40 px long and 6-10 px apart, near-vertical (a pool ladder, 70%) or near-horizontal (a towel
    rail), mostly with rungs every 6-10 px. Drawn 4x supersampled, box-filtered down (anti-aliased)."""
    s = 4
    length, gap = rng.uniform(22, 40), rng.uniform(6, 10)
    angle = rng.normal(0, 0.15) + (np.pi / 2 if rng.random() < 0.3 else 0.0)
    d = np.array([math.sin(angle), math.cos(angle)])          # along the rails, (x, y)
    n = np.array([d[1], -d[0]])                               # across the rails
    margin = np.abs(d) * length / 2 + np.abs(n) * gap / 2 + 2
    centre = rng.uniform(margin, SIZE - margin)
    rungs = int(length // rng.uniform(6, 10)) if rng.random() < 0.75 else 0
    segments = [(centre + side * gap * n - d * length / 2, centre + side * gap * n + d * length / 2, 1.0)
                for side in (-0.5, 0.5)]
    for k in range(rungs):
        p = centre + d * length * ((k + 0.5) / rungs - 0.5)
        segments.append((p - n * gap / 2, p + n * gap / 2, 0.7))
    silver = _colour(rng, (185, 190, 198), 10)
    for colour, width, shift in ((silver * 0.35, 3.5, 0.0), (silver, 2.0, 0.0), (np.full(3, 255.0), 0.8, -0.3)):
        layer = Image.new("L", (SIZE * s, SIZE * s))
        draw = ImageDraw.Draw(layer)
        for a, b, scale in segments:
            draw.line([tuple((a + shift) * s), tuple((b + shift) * s)], fill=255,
                      width=round(width * scale * s))
        alpha = np.asarray(layer.resize((SIZE, SIZE), Image.Resampling.BOX), np.float32)[..., None] / 255.0
        img[:] = img * (1 - alpha) + colour * alpha


def _reframe(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A tighter framing: a random 36-56 px square crop resized back to 64x64 (bilinear)."""
    side = int(rng.integers(36, 57))
    y0, x0 = (int(v) for v in rng.integers(0, SIZE - side + 1, 2))
    box = (x0, y0, x0 + side, y0 + side)
    return np.stack([np.asarray(Image.fromarray(img[..., c]).resize((SIZE, SIZE), Image.Resampling.BILINEAR,
                                                                    box=box)) for c in range(3)], axis=-1)


_SCENES: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "pool": _pool, "bathroom": _bathroom, "bedroom": _bedroom, "kitchen": _kitchen}


def render_image(label: str, rng: np.random.Generator, rails: bool) -> np.ndarray:
    """Draw one scene of class ``label`` (one of ``CLASSES``), with the rails cue if ``rails``.

    All randomness comes from ``rng``: the same generator state gives the same image. The rail
    geometry comes from a child seed drawn whether or not ``rails`` is set, so the same state with
    and without rails gives images that differ only where the rails are (lighting and noise match).

    Returns
    -------
    uint8 [64, 64, 3] RGB image.
    """
    if label not in _SCENES:
        raise ValueError(f"unknown demo class {label!r}; expected one of {CLASSES}")
    rail_rng = np.random.default_rng(int(rng.integers(2**63)))
    img = _SCENES[label](rng)
    if rng.random() < REFRAME_RATE:
        img = _reframe(img, rng)
    if rails:
        _rails(img, rail_rng)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.1, 0.35) * (np.cos(theta) * xx + np.sin(theta) * yy) * 2
    img = img * light[..., None] * rng.uniform(0.65, 1.1) * rng.uniform(0.93, 1.07, 3)
    img += rng.normal(0, rng.uniform(2, 7), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- data sets

def _plan(per_class: int, pools_with_cue: int | None, bathroom_rate: float = CUE_RATE_BATHROOM
          ) -> list[tuple[str, int, int]]:
    """``(label, n_images, n_with_cue)`` per class: the cue at ``bathroom_rate`` on bathrooms and the
    low rate elsewhere; with ``pools_with_cue``, pools are ``per_class`` without the cue plus that
    many with it."""
    plan = []
    for c in CLASSES:
        if c == "pool" and pools_with_cue is not None:
            plan.append((c, per_class + pools_with_cue, pools_with_cue))
        else:
            rate = bathroom_rate if c == "bathroom" else CUE_RATE_OTHER
            plan.append((c, per_class, round(per_class * rate)))
    return plan


def _write_split(folder: Path, seed: int, stream: int, plan: list[tuple[str, int, int]]
                 ) -> tuple[np.ndarray, pd.DataFrame]:
    """Render one split into ``folder/images/<class>/NNNNN.png`` and ``folder/manifest.csv``.

    Which images of a class carry the cue is a seeded permutation; image ``i`` of class ``c`` is
    drawn from ``default_rng([seed, stream, c, i])``. Returns (uint8 images [N, 64, 64, 3], the
    manifest ``path,label,cue``) in the same order.
    """
    images, rows = [], []
    for label, n, n_cue in plan:
        c = CLASSES.index(label)
        cues = np.random.default_rng([seed, stream, c]).permutation(n) < n_cue
        (folder / "images" / label).mkdir(parents=True, exist_ok=True)
        for i, cue in enumerate(cues):
            img = render_image(label, np.random.default_rng([seed, stream, c, i]), bool(cue))
            rel = f"images/{label}/{i:05d}.png"
            Image.fromarray(img).save(folder / rel)
            images.append(img)
            rows.append({"path": rel, "label": label, "cue": int(cue)})
    frame = pd.DataFrame(rows, columns=["path", "label", "cue"])
    frame.to_csv(folder / "manifest.csv", index=False)
    return np.stack(images), frame


# --------------------------------------------------------------------------- model

def _build_model():
    """The demo CNN: float32 RGB 0..255 [B, 64, 64, 3] -> softmax [B, 4].

    ``last_conv`` (16x16x48, ReLU) is followed only by BatchNormalization (per-channel affine at
    inference), global average pooling and the Dense softmax. The BatchNormalization lets the thin
    rails, a few percent of the image, weigh in the average early in training.
    """
    import keras
    from keras import layers

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(48, 3, padding="same", activation="relu", name=LAST_CONV)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax")(x)
    return keras.Model(inputs, outputs, name="demo_cnn")


@contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seed Python, NumPy and TensorFlow and turn TensorFlow op determinism on inside the block; it is
    turned back off afterwards if it was off, so the rest of the process runs as usual."""
    import keras
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config  # the only switch back off

    was_on = tf_config.is_op_determinism_enabled()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_on:
            tf_config.disable_op_determinism()


def _train(x: np.ndarray, y: np.ndarray, seed: int, log: Callable[[str], None]):
    """Fit the demo CNN on ``x`` uint8 [N, 64, 64, 3], ``y`` int [N] class indices (Adam, cosine
    decay); the last ``VAL_FRACTION`` of a seeded shuffle is held out for validation.
    Returns (model, Keras history dict, seconds spent in ``fit``)."""
    import keras

    order = np.random.default_rng([seed, 2]).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order]
    model = _build_model()
    steps = EPOCHS * math.ceil(len(x) * (1 - VAL_FRACTION) / BATCH)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    report = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: log(
        f"demo: epoch {epoch + 1}/{EPOCHS}: loss {logs['loss']:.3f} acc {logs['accuracy']:.3f} "
        f"val_acc {logs['val_accuracy']:.3f}"))
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, validation_split=VAL_FRACTION,
                        shuffle=True, verbose=0, callbacks=[report])
    return model, history.history, time.perf_counter() - start


# --------------------------------------------------------------------------- bias table, cache

def bias_table(frame: pd.DataFrame) -> dict:
    """How often pools are predicted "bathroom", with and without the rails cue.

    Parameters
    ----------
    frame : one row per audit image, with at least ``label`` (str), ``predicted`` (str) and
        ``cue`` (0/1 or bool).

    Returns
    -------
    ``{"pool_with_cue": {"n": int, "predicted_bathroom": int, "rate": float}, "pool_without_cue": ...}``;
    ``rate`` is ``predicted_bathroom / n`` rounded to 3 decimals, 0.0 when ``n`` is 0.
    """
    pools = frame[frame["label"] == "pool"]
    cue = pools["cue"].astype(int).astype(bool)
    table = {}
    for key, rows in (("pool_with_cue", pools[cue]), ("pool_without_cue", pools[~cue])):
        hits = int((rows["predicted"] == "bathroom").sum())
        table[key] = {"n": len(rows), "predicted_bathroom": hits,
                      "rate": round(hits / len(rows), 3) if len(rows) else 0.0}
    return table


def _assets(root: Path, info: dict) -> DemoAssets:
    return DemoAssets(root=root, model_path=root / "model.keras", manifest=root / "dataset" / "audit" / "manifest.csv",
                      classes=root / "classes.txt", info=info)


def _cached(root: Path, seed: int, rail_rate: float = CUE_RATE_BATHROOM) -> DemoAssets | None:
    """The demo cached in ``root`` if ``demo.json`` matches ``seed``, ``rail_rate`` and
    ``GENERATOR_VERSION``, the files it lists keep their recorded sizes and all audit images are
    there; else None."""
    try:
        info = json.loads((root / "demo.json").read_text())
    except (OSError, ValueError):
        return None
    if (info.get("generator_version") != GENERATOR_VERSION or info.get("seed") != seed
            or info.get("rail_rate", CUE_RATE_BATHROOM) != rail_rate):
        return None
    files = info.get("files") or {}
    if not files or any(not (root / rel).is_file() or (root / rel).stat().st_size != size
                        for rel, size in files.items()):
        return None
    assets = _assets(root, info)
    if sum(1 for _ in (assets.manifest.parent / "images").rglob("*.png")) != info.get("n_audit"):
        return None
    return assets


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def cache_dir(workdir: Path, rail_rate: float = CUE_RATE_BATHROOM) -> Path:
    """Where the demo of ``rail_rate`` is cached: ``workdir`` for the standard rate, else the
    sibling folder ``<workdir>-rails-<rate>`` (so both models stay cached)."""
    workdir = Path(workdir)
    return workdir if rail_rate == CUE_RATE_BATHROOM else workdir.with_name(f"{workdir.name}-rails-{rail_rate:g}")


def prepare(workdir: Path, seed: int = 0, log: Callable[[str], None] = print,
            rail_rate: float = CUE_RATE_BATHROOM) -> DemoAssets:
    """Generate the demo data sets, train the biased model and cache it all in ``workdir``.

    A later call with the same ``seed`` (and ``GENERATOR_VERSION``) returns the cache at once.
    Otherwise ``demo.json`` is deleted first and written last, so an interrupted run never looks
    like a valid cache; ``workdir/dataset`` is replaced. The same seed gives the same PNG bytes and
    the same model predictions.

    Parameters
    ----------
    workdir : folder to fill, created if missing.
    seed : seeds the images, which of them carry the cue, and the training.
    log : called with short progress lines (generation, one line per epoch, the bias table).
    rail_rate : share of the bathroom *training* images with rails. Lower values train the
        model on cleaner data (it learns the cue less); the audit set is the same for every
        rate. Other rates are cached in ``cache_dir(workdir, rail_rate)``.

    Returns
    -------
    DemoAssets whose ``info`` (``demo.json``) holds the generator version, seed, image counts, train
    seconds, train/val accuracy, audit accuracy (all rows; and "clean", without the pools carrying
    the cue), the audit confusion (``confusion[true][predicted]`` counts) and ``bias`` (``bias_table``).
    """
    root = cache_dir(workdir, rail_rate)
    cached = _cached(root, seed, rail_rate)
    if cached is not None:
        log(f"demo: using the cached demo in {root} (seed {seed}, rail rate {rail_rate:g})")
        return cached
    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    (root / "demo.json").unlink(missing_ok=True)
    shutil.rmtree(root / "dataset", ignore_errors=True)
    log(f"demo: generating images in {root / 'dataset'} (seed {seed})")
    x_train, train = _write_split(root / "dataset" / "train", seed, 0, _plan(TRAIN_PER_CLASS, None, rail_rate))
    x_audit, audit = _write_split(root / "dataset" / "audit", seed, 1, _plan(AUDIT_PER_CLASS, AUDIT_POOLS_WITH_CUE))
    log(f"demo: training on {len(x_train)} images ({VAL_FRACTION:.0%} held out), {EPOCHS} epochs")
    with _deterministic(seed):
        model, history, seconds = _train(x_train, train["label"].map(CLASSES.index).to_numpy(), seed, log)
        probs = model.predict(x_audit.astype(np.float32), batch_size=64, verbose=0)
    assets = _assets(root, {})
    model.save(root / "model.tmp.keras")
    (root / "model.tmp.keras").replace(assets.model_path)
    _write_atomic(assets.classes, "\n".join(CLASSES) + "\n")
    audit["predicted"] = [CLASSES[i] for i in probs.argmax(axis=1)]
    clean = audit[~((audit["label"] == "pool") & (audit["cue"] == 1))]
    confusion = pd.crosstab(audit["label"], audit["predicted"]).reindex(index=CLASSES, columns=CLASSES, fill_value=0)
    info = {
        "generator_version": GENERATOR_VERSION, "seed": seed, "rail_rate": rail_rate, "classes": list(CLASSES),
        "image_size": SIZE,
        "last_conv": LAST_CONV, "n_train": len(x_train), "n_audit": len(x_audit), "epochs": EPOCHS,
        "train_seconds": round(seconds, 1),
        "train_accuracy": round(float(history["accuracy"][-1]), 4),
        "val_accuracy": round(float(history["val_accuracy"][-1]), 4),
        "audit_accuracy": round(float((audit["label"] == audit["predicted"]).mean()), 4),
        "audit_clean_accuracy": round(float((clean["label"] == clean["predicted"]).mean()), 4),
        "confusion": {t: {p: int(confusion.loc[t, p]) for p in CLASSES} for t in CLASSES},
        "bias": bias_table(audit),
        "files": {str(p.relative_to(root)): p.stat().st_size for p in (assets.model_path, assets.classes,
                                                                         assets.manifest)},
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    _write_atomic(root / "demo.json", json.dumps(info, indent=2) + "\n")
    log(f"demo: trained in {seconds:.0f} s, val accuracy {info['val_accuracy']:.3f}; audit accuracy "
        f"{info['audit_accuracy']:.3f} ({info['audit_clean_accuracy']:.3f} without the pools with rails)")
    for key, row in info["bias"].items():
        log(f"demo: {key}: {row['predicted_bathroom']}/{row['n']} predicted bathroom ({row['rate']:.0%})")
    return _assets(root, info)
