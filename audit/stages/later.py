"""Later: the stages after attribution (trust, verify, internals, discover and render), estimated
in seconds from their model-pass counts before they run, capped to fit ``run.budget``, and
checked against the clock while the run goes on.

A pass is timed on the plan's probe (``audit.stages.plan``): one bare forward pass per
image; a forward+backward pass counts 3. The fixed costs besides the passes (tracing,
drawing) were measured on 2 CPU cores.

Estimates are estimates: under ``run.budget`` the run also watches the clock
(``deadline``). A costly method's batch starts only while what is left of the budget,
less the later stages' estimate, covers it (``Allowance``); trust and internals start
only while what is left covers their estimate and that of the stages after them
(``over_budget``; trust without its sanity checks when only the rest fits,
``trust_within``). What is not started, and why, goes into the plan's ``skipped``
(``run.json`` and the report); the work done is kept.
"""
from __future__ import annotations

import dataclasses
import time

from audit.config import Config
from audit.internals.patches import CANDIDATES

MIN_INTERNALS_SHARE = 0.25   # ... below this share of their estimate, no internals pictures at all
LATER_SHARE = 0.5      # under a budget, the stages after attribution get at most this share of what is left
# fixed costs besides the model passes, measured on 2 CPU cores (the demo: internals 3.5-5.9 s, discover and
# render 2.6-3.1 s; MobileNetV2 224 px, 597 selected: discover and render 19.7 s)
FIXED_INTERNALS = 5.0    # tracing the ascent function, drawing the pictures
FIXED_RENDER = 5.0       # discover, link, finish and render
PER_SELECTED = 0.025     # seconds of discover/render work per selected image


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
        ``trust`` (its faithfulness curves), ``sanity`` (its sanity checks), ``verify``, ``internals``,
        ``discover_render``.
    """
    t, v, i = config.trust, config.verify, config.internals
    out = {"trust": 0.0, "sanity": 0.0, "verify": 0.0, "internals": 0.0}
    if t.enabled:
        methods = [m for m in costs if t.methods is None or m in t.methods]
        curves = t.sample * (len(methods) + t.random_maps) * 2 * (t.steps + 1) * forward
        n_sanity = min(t.sanity_sample, max(int(t.sanity_budget * n_selected / (t.randomization_steps + 1)), 2))
        sanity = n_sanity * (t.randomization_steps + 2) * sum(costs[m] for m in methods)
        out["trust"], out["sanity"] = curves, sanity
    if v.enabled:
        strategies = 4 * v.max_samples * config.strategies.max_tested if config.strategies.enabled else 0
        out["verify"] = (v.budget * n_selected + strategies) * 2 * forward
    if i.enabled and i.findings:
        ascent = (2 * i.findings + i.findings * i.finding_channels) * i.steps * 3 * forward
        scanned = min(i.max_images, n_images, i.findings * i.finding_channels * (CANDIDATES * i.patches + 1))
        out["internals"] = FIXED_INTERNALS + ascent + scanned * forward   # the patch scan (patches.scan_rows)
    out["discover_render"] = FIXED_RENDER + PER_SELECTED * n_selected
    return out


def later_caps(config: Config, left: float, later: float, cover: float = 0.0, wanted: float = 0.0) -> dict[str, int]:
    """When the later stages and the attribution (``wanted``) do not fit into ``left`` together: the later
    stages' sample sizes scaled down so that they take about ``LATER_SHARE`` of ``left``, and no more
    than the full methods' coverage of every selected image leaves of it (``cover``).

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
    wanted : float
        Seconds the whole attribution needs without a budget (``cover`` and the costly methods' sample).

    Returns
    -------
    dict of str to int
        Dotted setting -> capped value (``trust.sample``, ``trust.sanity_sample``: 0 skips the sanity
        checks, ``verify.max_samples``, ``internals.steps``, ``internals.max_images``, and
        ``internals.findings`` 0 when the later stages get less than ``MIN_INTERNALS_SHARE`` of their
        estimate: the pictures, whose fixed cost no cap lowers, give way to the findings); empty when they fit.
    """
    target = min(LATER_SHARE * left, left - cover)
    if later <= target or later + max(wanted, cover) <= left:
        return {}
    f = max(target, 0.0) / later
    t, i, v = config.trust, config.internals, config.verify
    caps = {"trust.sample": max(4, int(t.sample * f)), "trust.sanity_sample": int(t.sanity_sample * f),
            "verify.max_samples": max(v.samples, int(v.max_samples * f)),
            "internals.steps": max(16, int(i.steps * f)), "internals.max_images": max(64, int(i.max_images * f)),
            "internals.findings": i.findings if f >= MIN_INTERNALS_SHARE else 0}
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


AFTER = {"trust": ("verify", "discover_render"), "internals": ("discover_render",)}   # what must still run


def now() -> float:
    """Wall-clock seconds (``time.time()``): what ``deadline`` and ``Allowance`` compare (a cluster's
    workers share the wall clock, not the driver's monotonic one)."""
    return time.time()


def deadline(config: Config, started: float) -> float | None:
    """The ``now()`` at which ``run.budget`` is spent; None without a budget.

    Parameters
    ----------
    config : Config
        ``run.budget``.
    started : float
        ``time.monotonic()`` when the run began.
    """
    from audit.config.checks import seconds_of

    budget = seconds_of(config.run.budget)
    return None if budget is None else now() + budget - (time.monotonic() - started)


@dataclasses.dataclass(frozen=True)
class Allowance:
    """Until when the costly methods may start a batch: the run's deadline less the later stages'
    estimate (the plan's ``later``).

    Attributes
    ----------
    until : float
        ``now()`` after which a costly method's batch does not start.
    costs : tuple of (str, float)
        Seconds per image of each costly method (the plan's probe); other methods always run.
    """

    until: float
    costs: tuple[tuple[str, float], ...]

    @classmethod
    def of(cls, plan, end: float | None) -> "Allowance | None":
        """The allowance of ``plan`` (``audit.stages.plan.Plan``) for a run ending at ``end`` (``deadline``)."""
        if end is None:
            return None
        return cls(end - sum(s for _, s in plan.later), tuple((m, c) for m, c in plan.costs if m in plan.costly))

    def affords(self, method: str, images: int) -> bool:
        """Whether ``method`` may explain ``images`` more images now."""
        cost = dict(self.costs).get(method)
        return cost is None or now() + cost * images <= self.until


def skipped_maps(plan: dict, results: list[dict], log) -> None:
    """Add to ``plan`` the images the attribute partitions left out for lack of time, in words under
    ``skipped``; log it.

    Parameters
    ----------
    plan : dict
        The run's plan (``Plan.to_json``), changed in place.
    results : list of dict
        The attribute partitions' results (their ``skipped``: images per method).
    log : callable
        ``str -> None``, progress messages.
    """
    counts: dict[str, int] = {}
    for result in results:
        for method, n in (result.get("skipped") or {}).items():
            counts[method] = counts.get(method, 0) + n
    for method, n in counts.items():
        if n:
            _skip(plan, f"{method}: {n} planned image(s) not explained: the budget left no time for them "
                        f"(the stages after attribution kept their estimate)", log)


def over_budget(stage: str, plan: dict, end: float | None, log) -> bool:
    """Whether ``stage`` is not started: what is left until ``end`` cannot cover its estimate and that
    of the stages after it (the plan's ``later``). The reason goes into ``plan["skipped"]`` and the log.

    Parameters
    ----------
    stage : str
        ``trust`` or ``internals``.
    plan : dict
        The run's plan (``Plan.to_json``), changed in place when the stage is skipped.
    end : float or None
        ``deadline``'s ``now()`` at which the budget is spent; None: never skipped.
    log : callable
        ``str -> None``, progress messages.
    """
    if end is None:
        return False
    later = plan.get("later") or {}
    need = later.get(stage, 0.0) + sum(later.get(s, 0.0) for s in AFTER[stage])
    left = end - now()
    if left >= need:
        return False
    _skip(plan, f"{stage}: not started, {max(left, 0.0):.0f} s of the budget left and it needs about "
                f"{need:.0f} s with the stages after it", log)
    return True


def trust_within(config: Config, plan: dict, end: float | None, log) -> Config | None:
    """The trust stage's settings within what is left of the budget: as configured when it all fits;
    without its sanity checks (``trust.sanity_sample`` 0) when only the faithfulness curves fit; None
    (not started) when not even they fit, or when trust is off. What is left out goes into
    ``plan["skipped"]`` and the log.

    Parameters
    ----------
    config : Config
        ``trust.*`` as the plan capped them.
    plan : dict
        The run's plan (``Plan.to_json``; its ``later`` estimates), changed in place.
    end : float or None
        ``deadline``'s ``now()`` at which the budget is spent; None: as configured.
    log : callable
        ``str -> None``, progress messages.
    """
    if not config.trust.enabled:
        return None
    if end is None:
        return config
    later = plan.get("later") or {}
    curves = sum(later.get(s, 0.0) for s in ("trust", *AFTER["trust"]))   # with the stages after trust
    sanity, left = later.get("sanity", 0.0), end - now()
    if left >= curves + sanity:
        return config
    if config.trust.sanity_sample and left >= curves:
        _skip(plan, f"trust sanity checks: not started, {left:.0f} s of the budget left and they need about "
                    f"{sanity:.0f} s more than the faithfulness curves", log)
        return with_caps(config, {"trust.sanity_sample": 0})
    _skip(plan, f"trust: not started, {max(left, 0.0):.0f} s of the budget left and it needs about "
                f"{curves:.0f} s with the stages after it", log)
    return None


def _skip(plan: dict, why: str, log) -> None:
    plan.setdefault("skipped", []).append(why)
    log(f"  budget: {why}")
