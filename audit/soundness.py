"""Is the audit itself sound? Checks of the run's inputs and results, each a warning when it fails.

An audit can run to the end and still mean nothing: a model at chance explains
noise, a classes file in the wrong order makes every image an "error", a data set
that failed to load leaves nothing to audit, a finding of four images proves
little, and pairs with a handful of errors cannot be clustered. Each check returns
one record (``summary.json`` ``soundness``)::

    {"check": "chance", "ok": false, "value": 0.114, "threshold": 0.35,
     "message": "accuracy 11.4% is near chance (25.0%, the largest class's share) ..."}

The report shows the failed ones as warnings above the findings; ``gates.soundness``
names checks that fail the run (``audit.stages.gate``). No TensorFlow here: the
report re-derives nothing from it, it reads ``summary.json``.

Checks (``CHECKS``; thresholds in ``soundness.*`` and ``trust.min_size``):

* ``chance``: accuracy within ``soundness.chance_margin`` of chance (the largest
  class's share of the readable images), or mean top-1 probability below
  ``soundness.uniform_ratio / n_classes`` (outputs near uniform);
* ``class_order``: the classes named in another order would fit the predictions far
  better: accuracy under the best one-to-one relabelling of the model's outputs
  (Hungarian assignment on the confusion matrix) exceeds the accuracy as given by at
  least ``soundness.class_order_gain``;
* ``unreadable``: share of unreadable images above ``soundness.max_unreadable_rate``;
* ``small_findings``: findings (not suppressed) with fewer than ``trust.min_size``
  members, or verified on fewer than that many images;
* ``pair_size``: less than ``soundness.min_clusterable_share`` of the selected
  images sit in confusion pairs with at least ``discovery.min_pair_size`` images.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from audit.config.schema import SOUNDNESS_CHECKS as CHECKS


def _record(check: str, ok: bool, value, threshold, message: str) -> dict:
    return {"check": check, "ok": bool(ok), "value": None if value is None else round(float(value), 6),
            "threshold": None if threshold is None else round(float(threshold), 6), "message": message}


def check_chance(predictions: pd.DataFrame, margin: float, uniform_ratio: float) -> dict:
    """``chance``: accuracy against the largest class's share; mean top-1 probability against uniform.

    Parameters
    ----------
    predictions : one row per image with ``label``, ``predicted``, ``error`` and (optional)
        ``confidence`` (top-1 probability) and ``probs`` (per-class probabilities, for the
        number of classes).
    margin : accuracy must beat chance by more than this (fraction).
    uniform_ratio : mean top-1 probability must be at least this times ``1 / n_classes``.
    """
    valid = predictions[predictions["error"].isna()]
    if valid.empty:
        return _record("chance", False, None, None, "no readable image: the model's accuracy cannot be measured")
    accuracy = float((valid["predicted"].astype(str) == valid["label"].astype(str)).mean())
    chance = float(valid["label"].astype(str).value_counts(normalize=True).max())
    n_classes = _n_classes(valid)
    confidence = float(pd.to_numeric(valid["confidence"], errors="coerce").mean()) if "confidence" in valid else None
    uniform = uniform_ratio / n_classes if n_classes else None
    problems = []
    if accuracy <= chance + margin:
        problems.append(f"accuracy {accuracy:.1%} is near chance ({chance:.1%}, the largest class's share)")
    if confidence is not None and uniform is not None and confidence < uniform:
        problems.append(f"outputs are near uniform (mean top probability {confidence:.2f} for {n_classes} classes)")
    message = ("; ".join(problems) + ": the findings describe a model that has not learned the task, "
               "or inputs it was not trained on (check data.preprocess and the model file)") if problems else \
        f"accuracy {accuracy:.1%} is well above chance ({chance:.1%})"
    return _record("chance", not problems, accuracy, chance + margin, message)


def _n_classes(valid: pd.DataFrame) -> int:
    if "probs" in valid and len(valid):
        first = valid["probs"].iloc[0]
        if first is not None and np.ndim(first) == 1:
            return int(len(first))
    return int(len(set(valid["label"].astype(str)) | set(valid["predicted"].astype(str))))


def check_class_order(predictions: pd.DataFrame, gain: float) -> dict:
    """``class_order``: accuracy under the best relabelling of the outputs against accuracy as given.

    ``predictions``: the predict stage's table; the check fails when the best relabelling
    (an assignment on the confusion counts of readable images) gains at least ``gain``
    (a share 0..1) of accuracy. Returns the record with ``order``: the class names the data suggest, in output order
    (None when the check passes).
    """
    from scipy.optimize import linear_sum_assignment

    valid = predictions[predictions["error"].isna()]
    if valid.empty:
        return {**_record("class_order", True, None, None, "no readable image to check the class order"),
                "order": None}
    names = sorted(set(valid["label"].astype(str)) | set(valid["predicted"].astype(str)))
    index = {n: i for i, n in enumerate(names)}
    counts = np.zeros((len(names), len(names)))
    np.add.at(counts, (valid["label"].astype(str).map(index).to_numpy(),
                       valid["predicted"].astype(str).map(index).to_numpy()), 1)
    accuracy = float(np.trace(counts) / counts.sum())
    true_of, output_of = linear_sum_assignment(-counts)
    best = float(counts[true_of, output_of].sum() / counts.sum())
    ok = best - accuracy < gain
    if ok:
        return {**_record("class_order", True, best - accuracy, gain,
                          f"the class order fits the data (accuracy {accuracy:.1%} as given)"), "order": None}
    rename = {names[o]: names[t] for t, o in zip(true_of, output_of) if t != o}
    order = _output_order(valid, rename)
    swaps = ", ".join(f"{o} -> {t}" for o, t in sorted(rename.items())[:6])
    message = (f"the class order looks wrong: accuracy {accuracy:.1%} as given, {best:.1%} if the model's outputs "
               f"were named {swaps}" + (f" (output order: {', '.join(order)})" if order else "")
               + "; check --classes (without it, the sorted folder names or labels are assumed)")
    return {**_record("class_order", False, best - accuracy, gain, message), "order": order}


def _output_order(valid: pd.DataFrame, rename: dict[str, str]) -> list[str] | None:
    """The class names in output order once renamed, when ``predicted_idx`` tells the order."""
    if "predicted_idx" not in valid:
        return None
    by_index = dict(zip(pd.to_numeric(valid["predicted_idx"], errors="coerce"), valid["predicted"].astype(str)))
    by_index = {int(i): n for i, n in by_index.items() if i == i and i >= 0}
    if not by_index or sorted(by_index) != list(range(len(by_index))):
        return None
    return [rename.get(by_index[i], by_index[i]) for i in range(len(by_index))]


def check_unreadable(predictions: pd.DataFrame, max_rate: float) -> dict:
    """``unreadable``: share (0..1) of the rows of ``predictions`` that could not be decoded, failing above
    ``max_rate``."""
    n = len(predictions)
    bad = int(predictions["error"].notna().sum())
    rate = bad / n if n else 0.0
    if rate > max_rate:
        first = predictions.loc[predictions["error"].notna(), "error"].iloc[0]
        message = (f"{bad} of {n} images ({rate:.0%}) could not be read (first error: {first}); "
                   + ("nothing was audited" if bad == n else "the audit covers only the rest"))
    else:
        message = f"{bad} of {n} images unreadable"
    return _record("unreadable", rate <= max_rate, rate, max_rate, message)


def check_small_findings(findings: list[dict], min_size: int) -> dict:
    """``small_findings``: ``findings`` (summary.json entries, not suppressed) with fewer than ``min_size``
    images, or verified on fewer."""
    small = []
    for f in findings:
        if f.get("triage") == "suppressed":
            continue
        size = int(f.get("size") or len(f.get("members") or ()))
        tested = _tested(f.get("verification"))
        if size < min_size:
            small.append(f"{f.get('id')} has {size} images")
        elif tested is not None and tested < min_size:
            small.append(f"{f.get('id')} was verified on {tested} images")
    message = (f"{len(small)} finding(s) too small for their claims ({'; '.join(small[:4])}; "
               f"fewer than trust.min_size = {min_size}): read them as hints, not as evidence") if small \
        else f"every finding has at least {min_size} images"
    return _record("small_findings", not small, len(small), 0, message)


def _tested(verification) -> int | None:
    """How many images the larger intervention test ran on (None when not verified)."""
    if not isinstance(verification, dict) or not verification.get("verified"):
        return None
    ns = [int(t.get("n") or 0) for t in (verification.get("occlusion"), verification.get("transplant"))
          if isinstance(t, dict)]
    return max(ns) if ns else None


def check_pair_size(selection: pd.DataFrame, min_pair_size: int, min_share: float) -> dict:
    """``pair_size``: share of the selected images (``selection``, contrast excluded) in confusion pairs of at
    least ``min_pair_size`` images, failing below ``min_share`` (0..1)."""
    chosen = selection[selection["reason"] != "contrast"] if "reason" in selection else selection
    if chosen.empty or "pair" not in chosen:
        return _record("pair_size", True, None, min_share, "no selected image")
    sizes = chosen["pair"].astype(str).value_counts()
    share = float(sizes[sizes >= min_pair_size].sum() / len(chosen))
    small = sizes[sizes < min_pair_size]
    message = (f"only {share:.0%} of the {len(chosen)} selected images sit in confusion pairs with at least "
               f"{min_pair_size} images ({len(small)} pair(s) too small to cluster): findings may be missing; "
               "audit more images") if share < min_share else \
        f"{share:.0%} of the selected images sit in pairs large enough to cluster"
    return _record("pair_size", share >= min_share, share, min_share, message)


def soundness(config, predictions: pd.DataFrame, selection: pd.DataFrame, findings: list[dict]) -> list[dict]:
    """Every check of ``CHECKS``, in that order, as ``summary.json`` records.

    Parameters
    ----------
    config : the run's ``Config`` (``soundness.*``, ``trust.min_size``, ``discovery.min_pair_size``).
    predictions, selection : the run's tables (``predictions.parquet``, ``selection.parquet``).
    findings : the findings as ``summary.json`` entries.
    """
    s = config.soundness
    return [check_chance(predictions, s.chance_margin, s.uniform_ratio),
            check_class_order(predictions, s.class_order_gain),
            check_unreadable(predictions, s.max_unreadable_rate),
            check_small_findings(findings, config.trust.min_size),
            check_pair_size(selection, config.discovery.min_pair_size, s.min_clusterable_share)]
