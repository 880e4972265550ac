"""The verdict in words: what the audit found, where, and how sure, in one sentence.

``verdict(findings, soundness, min_size)`` reads ``summary.json`` entries generically
(a finding's ``kind`` defaults to ``error``) and returns ``summary.json``'s ``verdict``::

    {"state": "cue_found", "title": "Spurious cue found",
     "text": "Spurious cue found: pool called bathroom (55 images, cue at the top-right; confirmed by
              intervention: hiding it flips 100% of 32 images, a random region 0%)",
     "findings": ["F-dd24e18e"], "sound": true, "warnings": []}

Three states a reader tells apart, independent of the gates:

* ``cue_found``: a finding (not suppressed) whose cue the trust stage confirmed by
  intervention (``trust.confirmed``, best lift at least ``trust.min_lift``), with at
  least ``trust.min_size`` members;
* ``suspicious``: findings, none confirmed (not tested, lift too small, or too small);
* ``nothing_found``: no finding (suppressed ones aside).

``sound`` is False when a soundness check failed (``audit.soundness``); ``warnings``
holds their messages, which the report, summary.md and the CLI print with the verdict.
"""
from __future__ import annotations

STATES = {"cue_found": "Spurious cue found", "suspicious": "Suspicious groups, no cue confirmed",
          "nothing_found": "Nothing found"}
MAX_NAMED = 2    # findings named in the sentence; the rest are counted


def kind(finding: dict) -> str:
    """The kind of ``finding`` (a summary.json entry): ``error`` (a confusion pair's group) or ``strategy``
    (correct predictions relying on a cue)."""
    k = finding.get("kind")
    if k in ("error", "strategy"):
        return k
    return "strategy" if k is None and finding.get("true_label") == finding.get("predicted_label") \
        and finding.get("true_label") is not None else "error"


def cue_text(finding: dict) -> str | None:
    """The cue of ``finding`` in plain words (``cue.text``) when discovery gave it one."""
    cue = finding.get("cue")
    text = cue.get("text") if isinstance(cue, dict) else None
    return str(text).strip() if text else None


def where(finding: dict) -> str | None:
    """Where the cue of ``finding`` sits, e.g. "the top-right" (from ``cue.cell``); None when the cue's
    words (``cue.text``) already say where (a described cue may sit "anywhere", which its mean cell
    would contradict)."""
    cue = finding.get("cue")
    if not isinstance(cue, dict) or cue_text(finding):
        return None
    cell = cue.get("cell")
    return f"the {cell}" if cell else None


def phrase(finding: dict) -> str:
    """What ``finding`` says, e.g. "pool called bathroom" or "bathroom relies on rails"."""
    true, predicted, text = finding.get("true_label"), finding.get("predicted_label"), cue_text(finding)
    if kind(finding) == "strategy":
        return f"{true} relies on {text}" if text else f"{true} relies on a cue at {where(finding) or 'one place'}"
    if text and text.startswith("without "):   # a missing-cue group (audit.stages.link) says what it lacks
        return f"{true} {text} called {predicted}"
    return f"{true} with {text} called {predicted}" if text else f"{true} called {predicted}"


def evidence(finding: dict) -> str:
    """How sure ``finding`` is, in words: the intervention test's flip rate against a random region's, or why
    untested."""
    v = finding.get("verification")
    if not isinstance(v, dict) or not v.get("verified"):
        reason = v.get("reason") if isinstance(v, dict) else None
        return "not tested by intervention" + (f": {reason}" if reason else "")
    best = None
    for key, verb in (("occlusion", "hiding it flips"), ("transplant", "pasting it flips")):
        t = v.get(key)
        if isinstance(t, dict) and t.get("rate") is not None and t.get("n"):
            lift = t.get("lift") if t.get("lift") is not None else -1.0
            if best is None or lift > best[0]:
                random = f", a random region {t['random_rate']:.0%}" if t.get("random_rate") is not None else ""
                best = (lift, f"{verb} {t['rate']:.0%} of {t['n']} images{random}")
    if best is None:
        return "no intervention test could run"
    trust = finding.get("trust") if isinstance(finding.get("trust"), dict) else {}
    head = {True: "confirmed by intervention", False: "not confirmed by intervention"}.get(trust.get("confirmed"),
                                                                                           "intervention")
    return f"{head}: {best[1]}"


def describe(finding: dict) -> str:
    """``finding`` in a sentence: "pool called bathroom (55 images, cue at the top-right; <evidence>)", or
    with the cue's words "pool with a small red patch in the top-right corner (3% of the image) called
    bathroom (55 images; <evidence>)"."""
    size = int(finding.get("size") or len(finding.get("members") or ()))
    at = where(finding)
    return f"{phrase(finding)} ({size} images" + (f", cue at {at}" if at else "") + f"; {evidence(finding)})"


def confirmed(finding: dict, min_size: int) -> bool:
    """Whether the trust stage confirmed the cue of ``finding``, and it has at least ``min_size`` images."""
    trust = finding.get("trust") if isinstance(finding.get("trust"), dict) else {}
    size = int(finding.get("size") or len(finding.get("members") or ()))
    return trust.get("confirmed") is True and size >= min_size


def verdict(findings: list[dict], soundness: list[dict] | None, min_size: int) -> dict:
    """The run's verdict from its findings (``summary.json`` entries, rank order) and soundness records.

    Parameters
    ----------
    findings : ``summary.json`` ``findings`` entries, best first.
    soundness : ``audit.soundness`` records (None: not checked).
    min_size : ``trust.min_size``: smaller findings cannot count as a found cue.
    """
    open_ = [f for f in findings if f.get("triage") != "suppressed"]
    found = [f for f in open_ if confirmed(f, min_size)]
    shown = found or open_
    state = "cue_found" if found else "suspicious" if open_ else "nothing_found"
    if shown:
        text = f"{STATES[state]}: " + "; ".join(describe(f) for f in shown[:MAX_NAMED])
        if len(shown) > MAX_NAMED:
            text += f"; and {len(shown) - MAX_NAMED} more"
        if found and len(open_) > len(found):
            text += f". {len(open_) - len(found)} other group(s) not confirmed"
    else:
        text = f"{STATES[state]}: no group of errors shares a cue"
    suppressed = len(findings) - len(open_)
    if suppressed:
        text += f" ({suppressed} suppressed in triage)"
    warnings = [s["message"] for s in soundness or [] if not s.get("ok", True)]
    return {"state": state, "title": STATES[state], "text": text + ".",
            "findings": [str(f.get("id")) for f in shown], "sound": not warnings, "warnings": warnings}
