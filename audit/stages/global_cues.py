"""Global cues: image properties that set a finding apart, tested by shifting clean images.

For a finding verified by region (``audit.stages.verify``), its tested members (at
most ``verify.max_samples``) and the clean images its region test pastes onto (the
true class's confident images for an error group, the nearest classes' for a
strategy) are measured (``audit.image_properties``: brightness, contrast,
saturation, colour cast, sharpness, noise, flat borders, and from the source file
JPEG quality, pixel count and aspect). A property whose standardised mean difference
(members minus clean, pooled SD) reaches ``verify.min_effect`` is a candidate; the
two largest that an intervention can move are tested: the clean images are shifted
towards the members (blur, tint, darken, add noise, recompress, ... with the
strength that brings their median to the members') and, as a placebo, by the same
strength in the opposite direction. The test counts clean images then predicted as
the finding's predicted class; its lift is the paired difference (``Intervention``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from audit.config import Config
from audit.data import resolve
from audit.findings import Finding, PropertyTest
from audit.image_properties import (FILE_MEASURES, MEASURES, SHIFTABLE, calibrated, file_properties, measure, placebo,
                                    shift)
from audit.interventions import Predictions, RegionTest, load, predict, rates, seed

NAMES = tuple(MEASURES) + tuple(FILE_MEASURES)
MAX_TESTED = 2       # property hypotheses tested by intervention per finding


def property_tests(config: Config, root: Path, classifier, table: Predictions, plan: RegionTest,
                   images: dict[int, np.ndarray], finding: Finding) -> Finding:
    """``finding`` with its ``properties``: every candidate property, the testable ones tested.

    Parameters
    ----------
    config : Config
        ``verify.*`` and ``data.*`` settings.
    root : Path
        Folder the manifest paths are relative to.
    classifier : audit.model_io.Classifier
        The model.
    table : Predictions
        The run's predictions.
    finding : Finding
        The finding whose properties are tested.
    plan : the finding's region test (its members and clean images, in seeded order).
    images : decoded images (float RGB 0..255, model input size) by row id; extended here.
    """
    n = config.verify.max_samples
    members = [r for r in plan.members[:n]]
    clean = [r for r in plan.targets[:n]]
    images.update(load(config, root, classifier, table, sorted({*members, *clean} - set(images))))
    members = [r for r in members if r in images]
    clean = [r for r in clean if r in images]
    if len(members) < 4 or len(clean) < 4:
        return finding
    values_m, values_c = _values(root, table, images, members), _values(root, table, images, clean)
    spread = np.sqrt((np.nanvar(values_m, axis=0) + np.nanvar(values_c, axis=0)) / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        effect = (np.nanmean(values_m, axis=0) - np.nanmean(values_c, axis=0)) / spread
    effect = np.where(np.isfinite(effect), effect, 0.0)
    order = [int(i) for i in np.argsort(-np.abs(effect), kind="stable") if abs(effect[i]) >= config.verify.min_effect]
    tests, tried = [], 0
    clean_images = np.stack([images[r] for r in clean])
    for i in order[:4]:
        name, direction = NAMES[i], "lower" if effect[i] < 0 else "higher"
        shifted = SHIFTABLE.get(name, (None, None))[direction == "higher"]
        record = PropertyTest(property=name, effect=round(float(effect[i]), 3), direction=direction)
        if shifted is not None and tried < MAX_TESTED:
            tried += 1
            goal = float(np.nanmedian(values_m[:, i]))
            if name == "jpeg_quality":
                strength, opposite, placebo_strength = float(np.clip((60 - goal) / 55, 0, 1)), shifted, -0.64
            else:
                strength = calibrated(clean_images[:8], shifted, i, goal)
                opposite, placebo_strength = placebo(shifted), strength
            rng = seed(config, "property", finding.id, name)
            inputs = np.concatenate([shift(clean_images, shifted, strength, rng),
                                     shift(clean_images, opposite, placebo_strength, rng)])
            probs, _ = predict(classifier, inputs, config)
            hit = probs.argmax(axis=1) == plan.target
            record = dataclasses.replace(record, shift=shifted, strength=strength,
                                         test=rates(hit[:len(clean)].tolist(), hit[len(clean):].tolist()))
        tests.append(record)
    return dataclasses.replace(finding, properties=tuple(tests))


def _values(root: Path, table: Predictions, images: dict[int, np.ndarray], rows: list[int]) -> np.ndarray:
    """``[n, len(NAMES)]``: the image measures and the source files' properties of ``rows``."""
    pixels = measure(np.stack([images[r] for r in rows]))
    files = np.array([file_properties(str(resolve(root, table.path[table.at[r]]))) for r in rows])
    return np.hstack([pixels, files])
