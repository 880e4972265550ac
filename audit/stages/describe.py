"""The cue in words, from measured facts only.

``described`` fills a verified finding's ``cue`` (``audit.cues.Cue``):

* ``type``: ``global`` when a property test (``audit.stages.global_cues``) is
  conclusive and lifts more than the region tests, else ``local``;
* ``where``: from the centres of the tested members' causal regions: ``anywhere``
  when they scatter (mean distance from their mean centre above ``SCATTERED`` of the
  image), else the corner, edge or centre holding their mean centre;
* ``area``: the regions' mean share of the image;
* ``colour``: when the regions' mean colour stands out from the images' mean colour
  by at least ``DISTINCT`` (RGB distance, 0..441), the name of their distinct pixels'
  mean colour (``audit.image_properties.region_look``);
* the look: regions with ``DETAILED`` times the image's gradient energy hold "lines"
  (their gradients share a direction, ``COHERENT``; named when ``AGREE`` of them agree)
  or "fine detail", "bright" or "dark" (``TONE``) when no colour is named;
* for a global cue, ``property`` and ``direction``;
* ``text``: one line, e.g. "a small magenta patch in the top-right corner (3% of the
  image)", "a mid-sized region of bright vertical lines anywhere in the image (10% of the
  image)" or "blurrier than the class's clean images (sharpness)".

The finding's ``detector`` (the cue's target-layer channels) is kept for the link stage.
"""
from __future__ import annotations

import colorsys
import dataclasses

import numpy as np

from audit.config import Config
from audit.findings import Finding
from audit.image_properties import words

SCATTERED = 0.18     # regions whose centres scatter more than this (share of the image) sit "anywhere"
DISTINCT = 40.0      # a region's colour is named when it differs this much from the image's mean colour
EDGE = 1 / 3         # the outer third of the width or height is an edge
DETAILED = 2.0       # regions with this many times the image's mean squared luma gradient hold lines or detail
COHERENT = 0.4       # ... and hold lines when their gradients share one direction this much (0..1)
AGREE = 0.6          # the lines' direction is named when this share of the regions agrees on it
TONE = 30.0          # the region's distinct pixels are "bright" / "dark" this far from the image's mean luma


def described(config: Config, finding: Finding, facts: dict, detector: dict | None) -> Finding:
    """``finding`` with its cue described (see the module docstring) and its ``detector`` kept.

    Parameters
    ----------
    config : Config
        ``trust.min_lift`` and ``verify.min_property_lift``.
    finding : Finding
        A verified finding.
    facts : ``RegionTest.region_facts``: ``centres`` float ``[m, 2]`` (y, x fractions),
        ``area`` (share 0..1), ``inside`` / ``outside`` mean RGB 0..255 (or None); empty
        when no member had a region.
    detector : ``RegionTest.detector`` or None.
    """
    cue = finding.cue
    if cue is None:
        return finding
    v = finding.verification
    region = v.best_lift if v is not None and v.best_lift is not None else -np.inf
    threshold = max(config.trust.min_lift, config.verify.min_property_lift)
    tests = [p for p in finding.properties if p.test is not None and p.test.confirmed(threshold)]
    best = max(tests, key=lambda p: p.test.lift, default=None)
    if best is not None and best.test.lift > region:
        text = f"{words(best.property, best.direction)} than the class's clean images ({best.property})"
        cue = dataclasses.replace(cue, type="global", where="whole image", property=best.property,
                                  direction=best.direction, text=text)
        return dataclasses.replace(finding, cue=cue, detector=detector)
    if not facts:
        return dataclasses.replace(finding, detector=detector)
    where = place(facts["centres"])
    colour = None
    if facts.get("inside") is not None and np.linalg.norm(facts["inside"] - facts["outside"]) >= DISTINCT:
        colour = colour_name(facts.get("distinct", facts["inside"]))
    area = round(float(facts["area"]), 4)
    size = "small" if area < 0.05 else "mid-sized" if area < 0.15 else "large"
    thing = f"a {size} {colour} patch" if colour else f"a {size} region"
    if facts.get("detail", 0.0) >= DETAILED:
        tone = "bright " if facts["luma"] >= TONE else "dark " if facts["luma"] <= -TONE else ""
        direction, share = facts["lines"]
        if facts["coherence"] >= COHERENT:
            lines = f"{direction} lines" if share >= AGREE else "lines"
            thing = f"a {size} region of {colour + ' ' if colour else tone}{lines}"
        elif not colour:
            thing = f"a {size} region of {tone}fine detail"
    text = f"{thing} {'anywhere in the image' if where == 'anywhere' else 'in the ' + where} ({area:.0%} of the image)"
    cue = dataclasses.replace(cue, type="local", where=where, area=area, colour=colour, text=text)
    return dataclasses.replace(finding, cue=cue, detector=detector)


def place(centres: np.ndarray) -> str:
    """Where regions with ``centres`` ``[m, 2]`` (y, x fractions of the image) sit, in words."""
    centres = np.asarray(centres, float)
    mean = centres.mean(axis=0)
    if len(centres) > 1 and np.linalg.norm(centres - mean, axis=1).mean() > SCATTERED:
        return "anywhere"
    y, x = mean
    row = "top" if y < EDGE else "bottom" if y > 1 - EDGE else ""
    col = "left" if x < EDGE else "right" if x > 1 - EDGE else ""
    if row and col:
        return f"{row}-{col} corner"
    if row or col:
        return f"{row or col} edge"
    return "centre"


def colour_name(rgb: np.ndarray) -> str:
    """A plain colour name for ``rgb``, an RGB 0..255 triple."""
    r, g, b = (float(v) / 255 for v in rgb[:3])
    hue, light, sat = colorsys.rgb_to_hls(r, g, b)
    if sat < 0.2 or light < 0.12 or light > 0.9:
        return "black" if light < 0.2 else "white" if light > 0.8 else "grey"
    degrees = hue * 360
    for limit, name in ((15, "red"), (40, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"), (255, "blue"),
                        (290, "purple"), (335, "magenta"), (360, "red")):
        if degrees < limit:
            if name in ("orange", "red") and light < 0.35:
                return "brown"
            return name
    return "red"
