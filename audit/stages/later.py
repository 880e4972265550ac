"""Later: the stages after attribution (trust, verify, internals, discover and render), estimated
in seconds from their model-pass counts before they run, and capped to fit ``run.budget``.

A pass is timed on the plan's probe (``audit.stages.plan``): one bare forward pass per
image; a forward+backward pass counts 3. The fixed costs besides the passes (tracing,
drawing) were measured on 2 CPU cores.
"""
from __future__ import annotations

import dataclasses

from audit.config import Config

LATER_SHARE = 0.5      # under a budget, the stages after attribution get at most this share of what is left
# fixed costs besides the model passes, measured on 2 CPU cores (the demo: internals 20 s, render 14 s)
FIXED_INTERNALS = 20.0   # tracing the ascent functions, drawing the pictures
FIXED_RENDER = 15.0      # discover, link, finish and render
PER_SELECTED = 0.02      # seconds of discover/render work per selected image


def later_seconds(config: Config, n_images: int, n_selected: int, forward: float,
                  costs: dict[str, float]) -> dict[str, float]:
    """Estimated seconds of the stages after attribution, from their model-pass counts.

    Parameters
    ----------
    config : Config
        ``trust.*``, ``verify.*``, ``strategies.*``, ``internals.*``.
    n_images : int
        Readable images of the data set (the internals patch scan).
    n_selected : int
        Selected images (verification's pass allowance, discovery and render work).
    forward : float
        Seconds of one bare forward pass per image (a forward+backward counts 3).
    costs : dict of str to float
        Seconds per image of each method (the sanity checks explain again).

    Returns
    -------
    dict of str to float
        ``trust``, ``verify``, ``internals``, ``discover_render``.
    """
    t, v, i = config.trust, config.verify, config.internals
    out = {"trust": 0.0, "verify": 0.0, "internals": 0.0}
    if t.enabled:
        methods = [m for m in costs if t.methods is None or m in t.methods]
        curves = t.sample * (len(methods) + t.random_maps) * 2 * (t.steps + 1) * forward
        n_sanity = min(t.sanity_sample, max(int(t.sanity_budget * n_selected / (t.randomization_steps + 1)), 2))
        sanity = n_sanity * (t.randomization_steps + 2) * sum(costs[m] for m in methods)
        out["trust"] = curves + sanity
    if v.enabled:
        strategies = 4 * v.max_samples * config.strategies.max_tested if config.strategies.enabled else 0
        out["verify"] = (v.budget * n_selected + strategies) * 2 * forward
    if i.enabled and i.findings:
        ascent = (2 * i.findings + i.findings * i.finding_channels) * i.steps * 3 * forward
        out["internals"] = FIXED_INTERNALS + ascent + min(i.max_images, n_images) * forward
    out["discover_render"] = FIXED_RENDER + PER_SELECTED * n_selected
    return out


def later_caps(config: Config, left: float, later: float, cover: float = 0.0) -> dict[str, int]:
    """The later stages' sample sizes scaled down so that they take about ``LATER_SHARE`` of ``left``, and
    no more than the full methods' coverage of every selected image leaves of it (``cover``).

    Parameters
    ----------
    config : Config
        ``trust.*`` and ``internals.*`` as configured.
    left : float
        Seconds of the budget left after what the run has spent (and the margin).
    later : float
        Estimated seconds of the stages after attribution, uncapped.
    cover : float
        Seconds the full methods need to explain every selected image (they come first).

    Returns
    -------
    dict of str to int
        Dotted setting -> capped value (``trust.sample``, ``trust.sanity_sample``: 0 skips the sanity
        checks, ``verify.max_samples``, ``internals.steps``, ``internals.max_images``); empty when they fit.
    """
    target = min(LATER_SHARE * left, left - cover)
    if later <= target:
        return {}
    f = max(target, 0.0) / later
    t, i, v = config.trust, config.internals, config.verify
    caps = {"trust.sample": max(4, int(t.sample * f)), "trust.sanity_sample": int(t.sanity_sample * f),
            "verify.max_samples": max(v.samples, int(v.max_samples * f)),
            "internals.steps": max(16, int(i.steps * f)), "internals.max_images": max(64, int(i.max_images * f))}
    return {k: v for k, v in caps.items() if v < _setting(config, k)}


def with_caps(config: Config, caps: dict[str, int] | tuple[tuple[str, int], ...]) -> Config:
    """``config`` with the dotted settings of ``caps`` replaced (``later_caps``; a ``Plan``'s ``caps``)."""
    for key, value in dict(caps).items():
        section, name = key.split(".")
        config = dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **{name: value})})
    return config


def _setting(config: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)
