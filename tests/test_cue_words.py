"""The cue in words (``audit.stages.describe``) from the measured look of the causal regions
(``audit.image_properties.region_look``): lines and their direction, a colour named from the
region's distinct pixels, no words for what was not measured."""
from __future__ import annotations

import numpy as np

from audit.config import resolve
from audit.cues import Cue
from audit.findings import Finding
from audit.image_properties import looks_summary, region_look
from audit.stages.describe import described

SIDE = 64


def _scene(rng) -> np.ndarray:
    """A smooth grey-green background with mild noise, float RGB 0..255 ``[64, 64, 3]``."""
    ramp = np.linspace(70, 110, SIDE)[None, :, None]
    return np.clip(np.broadcast_to(ramp * [0.9, 1.0, 0.8], (SIDE, SIDE, 3)) + rng.normal(0, 3, (SIDE, SIDE, 3)), 0, 255)


def _rails(image: np.ndarray, top: int, left: int, vertical: bool) -> np.ndarray:
    """Two bright 2-px rails, 20 px long and 6 px apart, at ``(top, left)``."""
    out = image.copy()
    for offset in (0, 6):
        if vertical:
            out[top:top + 20, left + offset:left + offset + 2] = 225
        else:
            out[top + offset:top + offset + 2, left:left + 20] = 225
    return out


def _box(top: int, left: int, side: int = 24) -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_region_look_measures_lines_their_direction_and_a_distinct_colour():
    rng = np.random.default_rng(0)
    vertical = region_look(_rails(_scene(rng), 20, 20, True), _box(18, 16))
    assert vertical["detail"] > 5 and vertical["coherence"] > 0.6 and vertical["lines"] == "vertical"
    assert vertical["luma"] > 30
    horizontal = region_look(_rails(_scene(rng), 20, 20, False), _box(16, 18))
    assert horizontal["lines"] == "horizontal" and horizontal["coherence"] > 0.6
    plain = region_look(_scene(rng), _box(18, 16))
    assert plain["detail"] < 2
    # a small pure-red square inside a region four times its size over a dark noisy scene: the plain mean
    # is brownish, the distinct pixels red
    dark = np.clip(rng.normal(60, 25, (SIDE, SIDE, 3)), 0, 255)
    dark[4:10, 50:56] = (255, 0, 0)
    look = region_look(dark, _box(2, 46, 12))
    assert look["distinct"][0] > 200 and look["distinct"][1:].max() < 60
    assert look["inside"][0] < 150


def _finding(facts: dict) -> tuple[Finding, dict]:
    cue = Cue(x=0.5, y=0.5, focus=0.5, cell="centre")
    return Finding(id="F-1", true_label="pool", predicted_label="bathroom", members=("a", "b"), rows=(0, 1),
                   cue=cue), facts


def _facts(images: list[np.ndarray], masks: list[np.ndarray]) -> dict:
    """What ``RegionTest.region_facts`` gives for these regions."""
    return {"centres": np.array([[0.2, 0.2], [0.8, 0.7], [0.5, 0.9]][:len(images)]),
            "area": float(np.mean([m.mean() for m in masks])),
            **looks_summary([region_look(i, m) for i, m in zip(images, masks)])}


def test_described_names_bright_vertical_lines_and_a_red_patch():
    config = resolve()
    rng = np.random.default_rng(1)
    places = [(8, 8), (40, 36), (20, 40)]
    images = [_rails(_scene(rng), t + 2, l + 4, True) for t, l in places]
    finding, facts = _finding(_facts(images, [_box(t, l) for t, l in places]))
    cue = described(config, finding, facts, None).cue
    assert cue.text == "a mid-sized region of bright vertical lines anywhere in the image (14% of the image)", cue.text

    reds = []
    for _ in range(3):
        dark = np.clip(rng.normal(60, 25, (SIDE, SIDE, 3)), 0, 255)
        dark[4:10, 50:56] = (255, 0, 0)
        reds.append(dark)
    finding, facts = _finding(_facts(reds, [_box(2, 46, 12)] * 3))
    facts["centres"] = np.array([[0.12, 0.8]] * 3)
    cue = described(config, finding, facts, None).cue
    assert cue.colour == "red" and cue.text == "a small red patch in the top-right corner (4% of the image)", cue.text

    plain = [_scene(rng) for _ in range(3)]
    finding, facts = _finding(_facts(plain, [_box(t, l) for t, l in places]))
    assert described(config, finding, facts, None).cue.text == \
        "a mid-sized region anywhere in the image (14% of the image)"
