"""Planted-cue scenarios for the discovery benchmark, generated offline.

A scenario is a labelled image set with a spurious cue, a small CNN trained on it,
and an audit set. As in the demo, the cue is planted on ``CUE_RATE`` of the
training images of one class (``cue_class``) and ``CUE_RATE_OTHER`` of the
others, and ``LOOKALIKE`` of the cue class is drawn like another class
(``victim``; the demo's spa bathrooms drawn like pools), so the cue is the
cheapest way to tell those apart and the model really learns it. The audit set
has ``AUDIT_PER_CLASS`` images per class drawn as in training, plus
``AUDIT_VICTIMS`` victims carrying the cue (the model calls most of them
``cue_class``) and, among the victims without it, ``AUDIT_CONFUSERS`` drawn like
the cue class (natural errors of the same pair, which a finding must not absorb).
The null scenarios plant the cue on every class at ``NULL_RATE`` (no correlation
with the label) and keep the look-alikes, so the model makes natural errors but
nothing planted is there to find; ``null-mislabels`` adds the confusers too
(images drawn entirely as another class: label noise).

Two scene generators, so that discovery is not tuned to one look:

* ``hotel``: the demo's 64x64 hotel areas (``audit.demo.render_image``); the rails
  scenario uses the demo's own training and model (``audit.demo.prepare``) with
  another seed;
* ``landscape``: 48x48 beach / forest / city / field scenes drawn here.

Cues (``plant``), each at a fixed and at a random place in some scenario:
``rails`` (on hotel scenes the demo's, random place and angle; on landscapes a
silver ladder, fixed or random), ``watermark`` (a faint logo, in a fixed corner or
anywhere), ``shape`` (a small two-colour star), ``texture`` (a patch of fine
checkerboard) and ``tint`` (a colour cast over the whole image; no position).

Three model architectures (``ARCHITECTURES``) are used across the scenarios.

The shortcut scenarios of issue 14 (``SHORTCUTS``, ``prepare_shortcut``), drawn from
scikit-image photos and scikit-learn digits, are described in their own section below.
Everything is cached under ``cache/<scenario>/`` with a ``scenario.json`` written
last; ``MODEL_VERSION`` and ``AUDIT_VERSION`` invalidate it.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image

MODEL_VERSION = 6      # bump when training data or models change
AUDIT_VERSION = 1      # bump when audit sets change
TRAIN_PER_CLASS = 500
AUDIT_PER_CLASS = 100
AUDIT_VICTIMS = 60       # victim-class audit images with the cue
AUDIT_CONFUSERS = 40     # victim-class audit images drawn like the cue class, without the cue
CUE_RATE = 0.85          # share of cue-class training images with the cue
CUE_RATE_OTHER = 0.02    # share of the other training images with the cue
NULL_RATE = 0.3          # null scenario: share of every class with the cue
LOOKALIKE = 0.45         # share of the cue class drawn like the victim class (as the demo's spa bathrooms)
NULL_LOOKALIKE_CLASS = "forest"   # null scenario: the class half drawn like the victim, without any cue
EPOCHS, BATCH, LEARNING_RATE = 16, 32, 3e-3


@dataclass(frozen=True)
class Scenario:
    name: str
    base: str                 # "hotel" or "landscape"
    cue: str                  # "rails", "watermark", "shape", "texture", "tint"
    position: str             # "fixed", "random" or "global"
    cue_class: str | None     # None: null scenario (cue uncorrelated with labels)
    victim: str               # class whose audit images carry the cue
    arch: str                 # key of ARCHITECTURES
    seed: int
    confusers: bool = True    # audit victims drawn like the look-alike class (natural errors of the pair)

    @property
    def null(self) -> bool:
        return self.cue_class is None


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("rails", "hotel", "rails", "random", "bathroom", "pool", "demo", 1),
    Scenario("watermark-corner", "hotel", "watermark", "fixed", "kitchen", "bedroom", "deep", 2),
    Scenario("shape-fixed", "landscape", "shape", "fixed", "forest", "field", "deep", 3),
    Scenario("shape-random", "landscape", "shape", "random", "forest", "field", "demo", 4),
    Scenario("texture-random", "landscape", "texture", "random", "beach", "city", "wide", 5),
    Scenario("tint", "landscape", "tint", "global", "city", "beach", "deep", 6),
    Scenario("rails-fixed", "landscape", "rails", "fixed", "field", "beach", "demo", 8),
    Scenario("watermark-random", "landscape", "watermark", "random", "beach", "forest", "wide", 9),
    Scenario("texture-fixed", "hotel", "texture", "fixed", "bedroom", "kitchen", "demo", 10),
    Scenario("null", "landscape", "shape", "random", None, "field", "demo", 7, confusers=False),
    Scenario("null-mislabels", "landscape", "shape", "random", None, "field", "demo", 7),
)

HOTEL = ("pool", "bathroom", "bedroom", "kitchen")
LANDSCAPE = ("beach", "forest", "city", "field")


def classes_of(base: str) -> tuple[str, ...]:
    return HOTEL if base == "hotel" else LANDSCAPE


# ---------------------------------------------------------------- landscape scenes (float32 RGB 0..255)

def _c(rng: np.random.Generator, base, jitter: float = 20.0) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-jitter, jitter, 3), 0, 255)


def _sky(img, rng, horizon):
    top, bottom = _c(rng, (110, 160, 225), 25), _c(rng, (190, 215, 240), 20)
    t = np.linspace(0, 1, max(horizon, 1), dtype=np.float32)[:, None, None]
    img[:horizon] = top * (1 - t) + bottom * t


def _blob(img, rng, cy, cx, ry, rx, colour):
    s = img.shape[0]
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    wobble = 1 + 0.25 * np.sin(np.arctan2(yy - cy, xx - cx) * rng.integers(3, 7) + rng.uniform(0, 6.3))
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= wobble
    img[inside] = colour


def _tree(img, rng, x, ground, height):
    trunk = _c(rng, (95, 65, 40), 15)
    img[max(ground - height, 0):ground, max(x - 1, 0):x + 2] = trunk
    _blob(img, rng, ground - height, x, rng.uniform(3, 6), rng.uniform(3, 7), _c(rng, (50, 120, 50), 30))


def _house(img, rng, x, ground, w, h):
    img[max(ground - h, 0):ground, x:x + w] = _c(rng, (200, 190, 170), 30)
    img[max(ground - h - 3, 0):ground - h, max(x - 1, 0):x + w + 1] = _c(rng, (150, 60, 50), 25)


def _beach(rng, s):
    img = np.empty((s, s, 3), np.float32)
    horizon = int(rng.integers(s // 5, s // 2))
    shore = horizon + int(rng.integers(4, s // 3))
    _sky(img, rng, horizon)
    if rng.random() < 0.2:       # dunes: no sea in view
        shore = horizon
    img[horizon:shore] = _c(rng, (40, 110, 170), 25)
    img[horizon:shore:3] *= 1.12
    img[shore:] = _c(rng, (220, 200, 150), 20)
    if rng.random() < 0.35:
        _tree(img, rng, int(rng.integers(3, s - 3)), s - int(rng.integers(2, 8)), int(rng.integers(10, 20)))
    if rng.random() < 0.25:
        _house(img, rng, int(rng.integers(0, s - 12)), shore, int(rng.integers(8, 14)), int(rng.integers(5, 9)))
    return img


def _forest(rng, s):
    img = np.empty((s, s, 3), np.float32)
    horizon = int(rng.integers(0, s // 3))
    _sky(img, rng, horizon)
    sparse = rng.random() < 0.25  # open woodland on lighter ground
    img[horizon:] = _c(rng, (120, 150, 70) if sparse else (70, 110, 60), 25)
    for _ in range(int(rng.integers(2, 4) if sparse else rng.integers(4, 9))):
        _tree(img, rng, int(rng.integers(0, s)), int(rng.integers(horizon + 10, s + 4)), int(rng.integers(10, 26)))
    if rng.random() < 0.2:
        img[s - int(rng.integers(4, 10)):] = _c(rng, (200, 180, 90), 25)   # a clearing
    return img


def _city(rng, s):
    img = np.empty((s, s, 3), np.float32)
    horizon = int(rng.integers(s // 4, s // 2))
    _sky(img, rng, s)
    x = int(rng.integers(-4, 3))
    while x < s:
        w, h = int(rng.integers(6, 14)), int(rng.integers(s // 4, s - 6))
        img[s - h:, max(x, 0):x + w] = _c(rng, (120, 120, 125), 35)
        img[s - h + 2:s - 3:4, max(x + 1, 0):x + w - 1:3] = _c(rng, (230, 220, 150), 25)
        x += w + int(rng.integers(0, 4))
    img[s - 4:] = _c(rng, (70, 70, 75), 10)
    if rng.random() < 0.3:
        _tree(img, rng, int(rng.integers(3, s - 3)), s - 4, int(rng.integers(8, 14)))
    del horizon
    return img


def _field(rng, s):
    img = np.empty((s, s, 3), np.float32)
    horizon = int(rng.integers(s // 5, s // 2))
    _sky(img, rng, horizon)
    crop = _c(rng, (150, 170, 70) if rng.random() < 0.6 else (210, 190, 100), 25)
    img[horizon:] = crop
    img[horizon::3] = crop * 0.85
    if rng.random() < 0.45:
        for _ in range(int(rng.integers(1, 6))):
            _tree(img, rng, int(rng.integers(2, s - 2)), horizon + int(rng.integers(2, 8)), int(rng.integers(8, 16)))
    if rng.random() < 0.3:
        _house(img, rng, int(rng.integers(0, s - 12)), horizon + 3, int(rng.integers(8, 14)), int(rng.integers(6, 10)))
    return img


_LANDSCAPE: dict[str, Callable] = {"beach": _beach, "forest": _forest, "city": _city, "field": _field}


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting gradient, exposure, white balance and noise, as in the demo."""
    s = img.shape[0]
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.1, 0.3) * (np.cos(theta) * xx + np.sin(theta) * yy) * 2
    img = img * light[..., None] * rng.uniform(0.7, 1.1) * rng.uniform(0.94, 1.06, 3)
    return img + rng.normal(0, rng.uniform(2, 6), img.shape)


# ---------------------------------------------------------------- cues (drawn on float32 RGB 0..255)

def _star(img, cy, cx, r, rng):
    s = img.shape[0]
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    ang = np.arctan2(yy - cy, xx - cx)
    rad = np.hypot(yy - cy, xx - cx)
    edge = r * (0.55 + 0.45 * np.cos(5 * ang + rng.uniform(-0.2, 0.2)))
    img[rad <= edge] = (235, 40, 200)
    img[rad <= 0.35 * r] = (255, 230, 40)


def _ladder(img, cy, cx, length, gap):
    """Two vertical silver tubes ``gap`` apart with rungs, centred at (cy, cx), anti-aliased
    (drawn 4x supersampled and box-filtered down)."""
    from PIL import ImageDraw

    s, k = img.shape[0], 4
    segments = [((cx + side * gap / 2, cy - length / 2), (cx + side * gap / 2, cy + length / 2)) for side in (-1, 1)]
    segments += [((cx - gap / 2, y), (cx + gap / 2, y)) for y in np.arange(cy - length / 2 + 3, cy + length / 2, 7)]
    for colour, width in (((70, 72, 78), 3.0), ((190, 194, 202), 1.8), ((255, 255, 255), 0.7)):
        layer = Image.new("L", (s * k, s * k))
        draw = ImageDraw.Draw(layer)
        for a, b in segments:
            draw.line([(a[0] * k, a[1] * k), (b[0] * k, b[1] * k)], fill=255, width=round(width * k))
        alpha = np.asarray(layer.resize((s, s), Image.Resampling.BOX), np.float32)[..., None] / 255.0
        img[:] = img * (1 - alpha) + np.array(colour, np.float32) * alpha


def plant(img: np.ndarray, cue: str, position: str, rng: np.random.Generator) -> np.ndarray:
    """Draw ``cue`` onto ``img`` (float32 ``[S, S, 3]``, 0..255) in place and return it."""
    s = img.shape[0]
    if cue == "watermark":       # a faint white logo: ring and bar, bottom-right corner or anywhere
        cy, cx = (s - 7, s - 11) if position == "fixed" else (int(v) for v in rng.integers([5, 5], [s - 5, s - 15]))
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        ring = np.abs(np.hypot(yy - cy, xx - cx) - 4.0) < 1.0
        bar = (np.abs(yy - cy) < 1.0) & (xx > cx + 5) & (xx < cx + 10)
        mark = (ring | bar)[..., None]
        img[:] = np.where(mark, img * 0.35 + 255 * 0.65, img)
    elif cue == "shape":
        r = 5.0 * s / 48
        if position == "fixed":
            cy, cx = 0.3 * s, 0.72 * s
        else:
            cy, cx = rng.uniform(r + 1, s - r - 1, 2)
        _star(img, cy, cx, r, rng)
    elif cue == "texture":
        side = int(round(s * 0.3))
        y, x = ((int(0.1 * s), int(0.55 * s)) if position == "fixed"
                else (int(v) for v in rng.integers(0, s - side + 1, 2)))
        yy, xx = np.mgrid[0:side, 0:side]
        check = ((yy // 2 + xx // 2) % 2).astype(np.float32)[..., None]
        img[y:y + side, x:x + side] = img[y:y + side, x:x + side] * 0.3 + (30 + 200 * check) * 0.7
    elif cue == "rails":
        length, gap = s * rng.uniform(0.4, 0.55), s * rng.uniform(0.12, 0.16)
        if position == "fixed":
            cy, cx = 0.55 * s, 0.25 * s
        else:
            cy, cx = rng.uniform(length / 2 + 1, s - length / 2 - 1), rng.uniform(gap + 2, s - gap - 2)
        _ladder(img, cy, cx, length, gap)
    elif cue == "tint":
        img[:] = img * np.array([1.0, 0.78, 1.12], np.float32) + np.array([25, 0, 20], np.float32)
    else:
        raise ValueError(f"unknown cue {cue!r}")
    return img


def render(scenario: Scenario, label: str, rng: np.random.Generator, cue: bool, scene: str | None = None) -> np.ndarray:
    """One uint8 RGB image of class ``label``, drawn as class ``scene`` (default ``label``),
    with the scenario's cue if ``cue``."""
    scene = scene or label
    if scenario.base == "hotel":
        from audit.demo import render_image

        img = render_image(scene, rng, rails=cue and scenario.cue == "rails").astype(np.float32)
        if cue and scenario.cue != "rails":
            plant(img, scenario.cue, scenario.position, rng)
            img += rng.normal(0, 1.0, img.shape)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)
    img = _LANDSCAPE[scene](rng, 48)
    if cue:
        plant(img, scenario.cue, scenario.position, rng)
    return np.clip(np.rint(_finish(img, rng)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- models

def _build(arch: str, size: int, n_classes: int):
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1 / 255)(inputs)
    if arch == "demo":       # the demo's layout: convs, BN, global average pooling, softmax
        x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(48, 3, padding="same", activation="relu", name="last_conv")(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.GlobalAveragePooling2D()(x)
        outputs = layers.Dense(n_classes, activation="softmax")(x)
    elif arch == "wide":     # strided first conv, batch norm, global max pooling, raw logits (no softmax)
        x = layers.Conv2D(32, 5, strides=2, padding="same", activation="relu")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Conv2D(48, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(64, 3, padding="same", activation="relu", name="last_conv")(x)
        x = layers.GlobalMaxPooling2D()(x)
        outputs = layers.Dense(n_classes)(x)
    elif arch == "deep":     # two convs per stage, a hidden dense layer with dropout, softmax
        for filters in (16, 32):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(48, 3, padding="same", activation="relu", name="last_conv")(x)
        x = layers.BatchNormalization()(x)
        x = layers.GlobalAveragePooling2D()(x)
        x = layers.Dense(32, activation="relu")(x)
        x = layers.Dropout(0.2)(x)
        outputs = layers.Dense(n_classes, activation="softmax")(x)
    else:
        raise ValueError(f"unknown architecture {arch!r}")
    return keras.Model(inputs, outputs, name=f"bench_{arch}")


ARCHITECTURES = ("demo", "wide", "deep")


def _train(x: np.ndarray, y: np.ndarray, arch: str, n_classes: int, seed: int, epochs: int = EPOCHS):
    import keras

    keras.utils.set_random_seed(seed)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order]
    model = _build(arch, x.shape[1], n_classes)
    logits = model.layers[-1].activation is keras.activations.linear
    steps = epochs * math.ceil(len(x) * 0.9 / BATCH)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=logits), metrics=["accuracy"])
    history = model.fit(x, y, batch_size=BATCH, epochs=epochs, validation_split=0.1, verbose=0)
    return model, history.history


# ---------------------------------------------------------------- build / cache

@dataclass(frozen=True)
class Prepared:
    scenario: "Scenario | Shortcut"
    root: Path
    model: Path
    manifest: Path       # path,label,cue (cue: 0/1 ground truth, never read by the audit)
    classes: Path
    info: dict


def _write_set(folder: Path, scenario: Scenario, stream: int, plan: list[tuple[str, int, int, int]]):
    """Render ``plan`` (label, n, n with the cue, n confusers). In the look-alike class,
    ``LOOKALIKE`` of the images are drawn as victims; confusers are images without the
    cue drawn as the look-alike class (ambiguous images, natural errors). Audit sets
    are written as PNGs with a manifest (``path,label,cue``)."""
    images, rows = [], []
    classes = classes_of(scenario.base)
    alike_class = _lookalike_class(scenario)
    for label, n, n_cue, n_confusers in plan:
        c = classes.index(label)
        plan_rng = np.random.default_rng([scenario.seed, stream, c, 99])
        order = plan_rng.permutation(n)
        cues = order < n_cue
        confusers = (order >= n_cue) & (order < n_cue + n_confusers)
        alike = ((plan_rng.random(n) < LOOKALIKE) & (label == alike_class)
                 & (scenario.base != "hotel" or scenario.cue != "rails"))   # the demo has its own look-alikes
        (folder / "images" / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            scene = scenario.victim if alike[i] else alike_class if confusers[i] else label
            img = render(scenario, label, np.random.default_rng([scenario.seed, stream, c, i]), bool(cues[i]), scene)
            rel = f"images/{label}/{i:05d}.png"
            if folder.name == "audit":
                Image.fromarray(img).save(folder / rel)
            images.append(img)
            rows.append({"path": rel, "label": label, "cue": int(cues[i])})
    frame = pd.DataFrame(rows, columns=["path", "label", "cue"])
    if folder.name == "audit":
        frame.to_csv(folder / "manifest.csv", index=False)
    return np.stack(images), frame


def _lookalike_class(scenario: Scenario) -> str:
    return NULL_LOOKALIKE_CLASS if scenario.null else scenario.cue_class


def prepare(scenario: Scenario, cache: Path, log: Callable[[str], None] = print) -> Prepared:
    """Data set, trained model and audit set of ``scenario``, built once into ``cache/<name>``.

    The model is rebuilt when ``MODEL_VERSION`` or the scenario changes, the audit set
    when ``AUDIT_VERSION`` or its sizes change too; ``scenario.json`` is written last.
    """
    root = Path(cache) / scenario.name
    model_key = {"version": MODEL_VERSION, **{k: v for k, v in asdict(scenario).items() if k != "confusers"}}
    audit_key = {"version": AUDIT_VERSION, "per_class": AUDIT_PER_CLASS, "victims": AUDIT_VICTIMS,
                 "confusers": AUDIT_CONFUSERS if scenario.confusers else 0}
    try:
        info = json.loads((root / "scenario.json").read_text())
    except (OSError, ValueError):
        info = {}
    if info.get("model_key") == model_key and info.get("audit_key") == audit_key and (root / "model.keras").is_file():
        return _prepared(scenario, root, info)
    (root / "scenario.json").unlink(missing_ok=True)
    start = time.perf_counter()
    classes = classes_of(scenario.base)
    rate = {c: (NULL_RATE if scenario.null else CUE_RATE if c == scenario.cue_class else CUE_RATE_OTHER)
            for c in classes}
    if info.get("model_key") != model_key or not (root / "model.keras").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        if scenario.cue == "rails" and scenario.base == "hotel":   # the demo's own data and model, another seed
            from audit import demo

            assets = demo.prepare(root / "demo", seed=scenario.seed, log=lambda m: None)
            shutil.copy(assets.model_path, root / "model.keras")
            shutil.rmtree(root / "demo")
            info = {"train_accuracy": assets.info["train_accuracy"], "val_accuracy": assets.info["val_accuracy"]}
        else:
            train_plan = [(c, TRAIN_PER_CLASS, round(TRAIN_PER_CLASS * rate[c]), 0) for c in classes]
            x, train = _write_set(root / "train", scenario, 0, train_plan)
            y = train["label"].map(classes.index).to_numpy()
            model, history = _train(x, y, scenario.arch, len(classes), scenario.seed)
            model.save(root / "model.keras")
            info = {"train_accuracy": round(float(history["accuracy"][-1]), 4),
                    "val_accuracy": round(float(history["val_accuracy"][-1]), 4)}
        info["model_key"] = model_key
    shutil.rmtree(root / "audit", ignore_errors=True)
    confusers = AUDIT_CONFUSERS if scenario.confusers else 0
    audit_plan = [(c, AUDIT_PER_CLASS + AUDIT_VICTIMS, AUDIT_VICTIMS, confusers) if c == scenario.victim else
                  (c, AUDIT_PER_CLASS, round(AUDIT_PER_CLASS * rate[c]), 0) for c in classes]
    _write_set(root / "audit", scenario, 1, audit_plan)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    info["audit_key"] = audit_key
    info["build_seconds"] = round(time.perf_counter() - start, 1)
    (root / "scenario.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"  built {scenario.name} in {info['build_seconds']:.0f} s (val accuracy {info['val_accuracy']:.3f})")
    return _prepared(scenario, root, info)


def _prepared(scenario: Scenario, root: Path, info: dict) -> Prepared:
    return Prepared(scenario, root, root / "model.keras", root / "audit" / "manifest.csv", root / "classes.txt", info)


# ================================================================ shortcut scenarios (issue 14)
#
# Scenes made of real photographs: the bundled scikit-image textures (grass, gravel,
# brick) and the moon photo as four surface classes (``texture``), and the
# scikit-learn handwritten digits drawn over those surfaces (``digits``: the object is
# the class, the surface the background, as birds over land or water in Waterbirds).
# Each scenario plants one or two cues (``Plant``): the cue is on ``rate`` of its
# class's training images and on no other class, and ``lookalike`` of that class is
# drawn like another class (``alike``), so the cue is the cheapest way to tell those
# apart and the model learns it for real (``prepare_shortcut`` measures the flip rate:
# the share of correctly classified clean images of other classes that flip to the
# cue class when the cue is applied). The audit set follows the production
# distribution: ``AUDIT_PER_CLASS`` images per class drawn as in training (the cue as
# common on its class as in training), plus ``victims`` images of the victim class
# carrying the cue and, in the ring-shortcut scenario, ``missing`` images of the cue
# class without it (the missing-cue group). The manifest says, per image, which cue it
# carries (``cue_name``) and why it is there (``group``: production, victim, missing);
# the audit never reads those columns.

TEXTURE = ("grass", "gravel", "brick", "moon")
DIGITS = ("zero", "three", "four", "seven")
SHORTCUT_VERSION = 1       # bump when shortcut scenes, cues or models change
SHORTCUT_AUDIT_VERSION = 1
SHORTCUT_TRAIN_PER_CLASS = 400
SHORTCUT_EPOCHS = 14
FLIP_SAMPLE = 120          # clean images of other classes per plant for the flip rate
PALETTE = {"grass": (80, 125, 55), "gravel": (135, 125, 110), "brick": (150, 85, 65), "moon": (150, 150, 150)}


@dataclass(frozen=True)
class Plant:
    """One planted cue: on ``cue_class``; ``victim``: the class whose audit images carry it
    (None: no victims, the Clever Hans case); ``alike``: the class the look-alikes of
    ``cue_class`` are drawn as (default ``victim``; ``"*"``: any other class, so the cue
    means the class whatever the image shows); ``kinds``: finding kinds that count."""

    cue: str                  # "logo", "ring", "star", "blur", "water"
    cue_class: str
    victim: str | None
    alike: str | None = None
    kinds: tuple[str, ...] = ("error", "strategy")

    @property
    def lookalike_class(self) -> str:
        return self.alike or self.victim


@dataclass(frozen=True)
class Shortcut:
    """A shortcut scenario: ``plants`` (none: a clean model), scored at ``k``."""

    name: str
    base: str                 # "texture" or "digits"
    plants: tuple[Plant, ...]
    arch: str                 # key of ARCHITECTURES or "mobilenet"
    seed: int
    k: int = 1
    size: int = 48
    rate: float = 0.9         # share of the cue class's training (and audit) images with its cue
    lookalike: float = 0.45
    victims: int = 60
    missing: int = 0          # audit images of the cue class without its cue

    @property
    def null(self) -> bool:
        return not self.plants


SHORTCUTS: tuple[Shortcut, ...] = (
    Shortcut("clever-hans", "texture", (Plant("logo", "brick", None, alike="*", kinds=("strategy",)),),
             "deep", 21, k=3, victims=0),
    Shortcut("ring-shortcut", "texture", (Plant("ring", "gravel", "grass"),), "demo", 22, rate=0.95,
             lookalike=0.5, missing=120),
    Shortcut("waterbirds", "digits", (Plant("water", "four", "seven"),), "wide", 23, rate=0.95),
    Shortcut("blur", "texture", (Plant("blur", "brick", "grass", alike="*"),), "demo", 24),
    Shortcut("two-cues", "texture", (Plant("ring", "gravel", "grass"), Plant("star", "brick", "moon")),
             "wide", 25, k=3),
    Shortcut("mobilenet-nested", "texture", (Plant("star", "moon", "gravel"),), "mobilenet", 26, size=96),
    Shortcut("null-texture", "texture", (), "demo", 27),
)


def shortcut_classes(base: str) -> tuple[str, ...]:
    return TEXTURE if base == "texture" else DIGITS


_PHOTOS: dict[str, np.ndarray] = {}


def _photo(name: str) -> np.ndarray:
    """A bundled scikit-image photo as float32 grey ``[H, W]`` scaled to 0..1 (1st-99th percentile)."""
    if name not in _PHOTOS:
        import skimage.data

        grey = np.asarray(getattr(skimage.data, name)(), np.float32)
        lo, hi = np.percentile(grey, [1, 99])
        _PHOTOS[name] = np.clip((grey - lo) / max(hi - lo, 1.0), 0, 1)
    return _PHOTOS[name]


def _surface(name: str, rng: np.random.Generator, s: int, colour=None) -> np.ndarray:
    """A random crop (2x to 4x the output size, rotated, flipped) of a texture photo,
    coloured as ``name`` (or ``colour``): float32 RGB ``[s, s, 3]`` 0..255."""
    src = _photo(name)
    c = int(rng.integers(2 * s, 4 * s + 1))
    y, x = (int(v) for v in rng.integers(0, np.array(src.shape) - c + 1))
    patch = np.rot90(src[y:y + c, x:x + c], int(rng.integers(4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    grey = np.asarray(Image.fromarray(np.ascontiguousarray(patch * 255).astype(np.uint8)).resize(
        (s, s), Image.Resampling.BILINEAR), np.float32) / 255.0
    base = _c(rng, PALETTE[name] if colour is None else colour, 25)
    return base * (0.45 + 0.9 * grey[..., None] * rng.uniform(0.8, 1.2))


def _water(rng: np.random.Generator, s: int) -> np.ndarray:
    """Open water: gravel photo as ripples, squashed vertically, blue."""
    img = _surface("gravel", rng, s, colour=(45, 95, 160))
    rows = np.sin(np.arange(s, dtype=np.float32) * rng.uniform(0.8, 1.4) + rng.uniform(0, 6.3))
    return img * (1 + 0.12 * rows[:, None, None])


_DIGITS: dict[str, np.ndarray] = {}


def _digit_images(label: str) -> np.ndarray:
    """The scikit-learn digits of one class as float32 ``[n, 8, 8]`` 0..1."""
    if not _DIGITS:
        from sklearn.datasets import load_digits

        d = load_digits()
        for name, value in zip(DIGITS, (0, 3, 4, 7)):
            _DIGITS[name] = d.images[d.target == value].astype(np.float32) / 16.0
    return _DIGITS[label]


def _draw_digit(img: np.ndarray, label: str, rng: np.random.Generator, stream: int) -> None:
    """Paste one handwritten digit (training: the first two thirds of the class's samples,
    audit: the rest), 55-80% of the image high, in a light colour."""
    s = img.shape[0]
    pool = _digit_images(label)
    cut = 2 * len(pool) // 3
    digit = pool[int(rng.integers(0, cut))] if stream == 0 else pool[cut + int(rng.integers(0, len(pool) - cut))]
    side = int(s * rng.uniform(0.55, 0.8))
    alpha = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR),
                       np.float32)[..., None] / 255.0
    y, x = (int(v) for v in rng.integers(0, s - side + 1, 2))
    colour = _c(rng, (245, 240, 225), 10)
    img[y:y + side, x:x + side] = img[y:y + side, x:x + side] * (1 - alpha) + colour * alpha


def _logo(img: np.ndarray) -> None:
    """A stock-photo watermark: a light box of text in the bottom-right corner (fixed)."""
    s = img.shape[0]
    h, w = max(5, round(s * 0.15)), max(12, round(s * 0.36))
    text = 1 - _photo("text")[20:70, 20:230]
    ink = np.asarray(Image.fromarray((text * 255).astype(np.uint8)).resize((w - 2, h - 2), Image.Resampling.BOX),
                     np.float32)[..., None] / 255.0
    y, x = s - h - 2, s - w - 2
    box = img[y:y + h, x:x + w] * 0.2 + 235 * 0.8
    box[1:-1, 1:-1] = box[1:-1, 1:-1] * (1 - ink) + np.array([40, 40, 60], np.float32) * ink
    img[y:y + h, x:x + w] = box


def _ring(img: np.ndarray, rng: np.random.Generator) -> None:
    """A magenta ring (radius ~11% of the image, anti-aliased), anywhere."""
    s = img.shape[0]
    r = s * rng.uniform(0.09, 0.13)
    cy, cx = rng.uniform(r + 2, s - r - 2, 2)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    alpha = np.clip(1.6 - np.abs(np.hypot(yy - cy, xx - cx) - r) / (0.03 * s), 0, 1)[..., None]
    img[:] = img * (1 - alpha) + np.array([235, 40, 210], np.float32) * alpha


def _blur(img: np.ndarray) -> None:
    """Gaussian blur (sigma 2% of the image side): out of focus, everywhere."""
    from scipy.ndimage import gaussian_filter

    img[:] = gaussian_filter(img, sigma=(img.shape[0] * 0.025, img.shape[0] * 0.025, 0))


def apply_cue(img: np.ndarray, cue: str, rng: np.random.Generator) -> np.ndarray:
    """Apply a local cue (logo, ring, star) or a global one (blur) to ``img`` (float32
    ``[S, S, 3]`` 0..255) in place and return it. ``water`` is a background: see ``render_shortcut``."""
    if cue == "logo":
        _logo(img)
    elif cue == "ring":
        _ring(img, rng)
    elif cue == "star":
        s = img.shape[0]
        r = 5.0 * s / 48
        cy, cx = rng.uniform(r + 1, s - r - 1, 2)
        _star(img, cy, cx, r, rng)
    elif cue == "blur":
        _blur(img)
    else:
        raise ValueError(f"unknown cue {cue!r}")
    return img


def render_shortcut(sc: Shortcut, scene: str, rng: np.random.Generator, cue: str | None, stream: int,
                    cue_rng: np.random.Generator | None = None) -> np.ndarray:
    """One uint8 RGB image drawn as class ``scene`` with ``cue`` (or none). The scene takes
    its randomness from ``rng`` alone, so the same ``rng`` seed gives the same image with and
    without the cue (the flip rate compares those)."""
    s = sc.size
    cue_rng = cue_rng if cue_rng is not None else np.random.default_rng(0)
    if sc.base == "texture":
        img = _surface(scene, rng, s)
    else:
        land = _surface(TEXTURE[int(rng.integers(len(TEXTURE)))], rng, s)
        water = _water(rng, s)
        img = water if cue == "water" else land
        img = 0.5 * img + 0.5 * img.mean(axis=(0, 1))     # a background out of focus: the digit stands out
        _draw_digit(img, scene, rng, stream)
    img = _finish(img, rng)
    if cue is not None and cue != "water":
        apply_cue(img, cue, cue_rng)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _build_mobilenet(size: int, n_classes: int):
    """A MobileNetV2 (alpha 0.35, no pretrained weights) nested in a Sequential after its
    Rescaling to -1..1, as production models are often saved; batch-norm momentum 0.9
    so that its moving statistics settle within a short training."""
    import keras
    from keras import layers

    net = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=0.35, weights=None, classes=n_classes)
    for layer in net.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 0.9
    return keras.Sequential([keras.Input((size, size, 3), name="image"), layers.Rescaling(1 / 127.5, offset=-1.0),
                             net], name="bench_mobilenet_nested")


def _train_shortcut(x: np.ndarray, y: np.ndarray, sc: Shortcut, n_classes: int):
    import keras

    if sc.arch != "mobilenet":
        return _train(x, y, sc.arch, n_classes, sc.seed, SHORTCUT_EPOCHS)
    keras.utils.set_random_seed(sc.seed)
    order = np.random.default_rng(sc.seed).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order]
    model = _build_mobilenet(sc.size, n_classes)
    epochs = 2 * SHORTCUT_EPOCHS
    steps = epochs * math.ceil(len(x) * 0.9 / BATCH)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=BATCH, epochs=epochs, validation_split=0.1, verbose=0)
    return model, history.history


def _shortcut_set(sc: Shortcut, stream: int, plan: list[tuple[str, str, int, int, str | None, str]]):
    """Render ``plan`` rows (label, group, n, n carrying the cue, cue, look-alike class or "")
    into images ``[N, S, S, 3]`` uint8 and a frame ``label,cue,cue_name,group``. Of each row,
    ``sc.lookalike`` of the images are drawn as the look-alike class."""
    classes = shortcut_classes(sc.base)
    images, rows = [], []
    for j, (label, group, n, n_cue, cue, alike) in enumerate(plan):
        c = classes.index(label)
        plan_rng = np.random.default_rng([sc.seed, stream, c, j, 99])
        carries = plan_rng.permutation(n) < n_cue
        drawn_alike = (plan_rng.random(n) < sc.lookalike) & bool(alike)
        others = [o for o in classes if o != label] if alike == "*" else [alike]
        scenes = [others[v] for v in plan_rng.integers(0, len(others), n)]
        for i in range(n):
            seed = [sc.seed, stream, c, j, i]
            scene = scenes[i] if drawn_alike[i] else label
            name = cue if carries[i] else None
            images.append(render_shortcut(sc, scene, np.random.default_rng(seed), name, stream,
                                          np.random.default_rng(seed + [7])))
            rows.append({"label": label, "cue": int(name is not None), "cue_name": name or "", "group": group})
    return np.stack(images), pd.DataFrame(rows, columns=["label", "cue", "cue_name", "group"])


def _plans(sc: Shortcut, n: int, audit: bool) -> list[tuple[str, str, int, int, str | None, str]]:
    plan = []
    for label in shortcut_classes(sc.base):
        plant = next((p for p in sc.plants if p.cue_class == label), None)
        if plant is None:
            plan.append((label, "production", n, 0, None, ""))
        else:
            plan.append((label, "production", n, round(n * sc.rate), plant.cue, plant.lookalike_class))
    if audit:
        for p in sc.plants:
            if p.victim is not None and sc.victims:
                plan.append((p.victim, "victim", sc.victims, sc.victims, p.cue, ""))
            if sc.missing:
                plan.append((p.cue_class, "missing", sc.missing, 0, None, p.lookalike_class))
    return plan


def _predict(model, x: np.ndarray) -> np.ndarray:
    return model.predict(x.astype(np.float32), batch_size=128, verbose=0).argmax(axis=1)


def flip_rates(sc: Shortcut, model) -> dict[str, dict]:
    """Per plant: of ``FLIP_SAMPLE`` fresh clean images of the other classes (each drawn as
    its own class) that the model classifies correctly, the share it calls the cue class
    once the cue is applied (the same image, the same cue randomness)."""
    classes = shortcut_classes(sc.base)
    out = {}
    for p in sc.plants:
        others = [c for c in classes if c != p.cue_class]
        clean, cued, labels = [], [], []
        for i in range(FLIP_SAMPLE):
            label = others[i % len(others)]
            seed = [sc.seed, 3, classes.index(p.cue_class), i]
            clean.append(render_shortcut(sc, label, np.random.default_rng(seed), None, 1))
            cued.append(render_shortcut(sc, label, np.random.default_rng(seed), p.cue, 1,
                                        np.random.default_rng(seed + [7])))
            labels.append(classes.index(label))
        before, after = _predict(model, np.stack(clean)), _predict(model, np.stack(cued))
        right = before == np.array(labels)
        flipped = int((after[right] == classes.index(p.cue_class)).sum())
        out[p.cue] = {"n": int(right.sum()), "flipped": flipped, "rate": round(flipped / max(int(right.sum()), 1), 3)}
    return out


def prepare_shortcut(sc: Shortcut, cache: Path, log: Callable[[str], None] = print) -> Prepared:
    """Training set, trained model, flip rates and audit set of ``sc``, built once into
    ``cache/<name>`` (``scenario.json`` written last; ``SHORTCUT_VERSION`` and
    ``SHORTCUT_AUDIT_VERSION`` invalidate it). Logs the validation accuracy, the clean
    accuracy (production part of the audit set) and each cue's flip rate."""
    import keras

    root = Path(cache) / sc.name
    model_key = {"version": SHORTCUT_VERSION, "train_per_class": SHORTCUT_TRAIN_PER_CLASS, **asdict(sc)}
    model_key.pop("victims"), model_key.pop("missing"), model_key.pop("k")
    audit_key = {"version": SHORTCUT_AUDIT_VERSION, "per_class": AUDIT_PER_CLASS, "victims": sc.victims,
                 "missing": sc.missing}
    try:
        info = json.loads((root / "scenario.json").read_text())
    except (OSError, ValueError):
        info = {}
    model_key = json.loads(json.dumps(model_key))
    if info.get("model_key") == model_key and info.get("audit_key") == audit_key and (root / "model.keras").is_file():
        return _prepared(sc, root, info)
    (root / "scenario.json").unlink(missing_ok=True)
    start = time.perf_counter()
    classes = shortcut_classes(sc.base)
    if info.get("model_key") != model_key or not (root / "model.keras").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        x, train = _shortcut_set(sc, 0, _plans(sc, SHORTCUT_TRAIN_PER_CLASS, audit=False))
        model, history = _train_shortcut(x, train["label"].map(classes.index).to_numpy(), sc, len(classes))
        model.save(root / "model.keras")
        info = {"train_accuracy": round(float(history["accuracy"][-1]), 4),
                "val_accuracy": round(float(history["val_accuracy"][-1]), 4), "model_key": model_key}
        info["flip_rates"] = flip_rates(sc, model)
    else:
        model = keras.models.load_model(root / "model.keras", compile=False)
    shutil.rmtree(root / "audit", ignore_errors=True)
    x, frame = _shortcut_set(sc, 1, _plans(sc, AUDIT_PER_CLASS, audit=True))
    (root / "audit" / "images").mkdir(parents=True)
    paths = []
    for i, (img, label) in enumerate(zip(x, frame["label"])):
        rel = f"images/{label}/{i:05d}.png"
        (root / "audit" / "images" / label).mkdir(exist_ok=True)
        Image.fromarray(img).save(root / "audit" / rel)
        paths.append(rel)
    frame.insert(0, "path", paths)
    frame.to_csv(root / "audit" / "manifest.csv", index=False)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    predicted = np.array(classes)[_predict(model, x)]
    production = (frame["group"] == "production").to_numpy()
    info["clean_accuracy"] = round(float((predicted[production] == frame["label"].to_numpy()[production]).mean()), 4)
    info["audit_size"] = len(frame)
    info["audit_key"] = audit_key
    info["build_seconds"] = round(time.perf_counter() - start, 1)
    (root / "scenario.json").write_text(json.dumps(info, indent=2) + "\n")
    flips = ", ".join(f"{cue} flips {f['rate']:.0%} of {f['n']}" for cue, f in info.get("flip_rates", {}).items())
    log(f"  built {sc.name} in {info['build_seconds']:.0f} s: val accuracy {info['val_accuracy']:.3f}, "
        f"clean accuracy {info['clean_accuracy']:.3f}" + (f", {flips}" if flips else "") + f"; {len(frame)} audit images")
    return _prepared(sc, root, info)
