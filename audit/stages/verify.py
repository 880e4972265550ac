"""Verify: check by intervention that a finding's cue drives the prediction.

The ``verify.max_findings`` best-scored findings are tested on their
misclassified members and on correctly and confidently classified images of
their true class (margin at least ``select.margin``), both in a seeded order:

* region: a member's *top-attributed region* is the set of cells of its map,
  area-pooled to ``discovery.grid`` squared cells, whose positive attribution is
  at least half the largest cell's, keeping at most ``verify.max_area`` of the
  image (the highest cells). Its *random region* is the same shape shifted by a
  random offset (wrapping around), so it has the same area.
* occlusion: fill the member's top region with the image's mean colour; the
  fraction of members whose prediction leaves the predicted class
  (``occlusion.rate``), against the same with the random region
  (``occlusion.random_rate``); ``lift`` is the difference.
* transplant: paste a tested member's top region (pixels at the same place) onto
  a clean image (members used in turn); the fraction then predicted as the
  finding's predicted class (``transplant.rate``), against pasting the same
  member's random region (``transplant.random_rate``); ``lift`` likewise.

Each test runs in rounds of ``verify.samples`` members (occlusion) or clean
images (transplant). A test stops when its lift is conclusive (the interval
``lift +- 3 se`` excludes 0, ``se`` the standard error of the paired
differences), precise (``se <= verify.max_se``), out of images, or at
``verify.max_samples``: clear effects cost one round, ambiguous ones get more.
The whole verification spends at most ``verify.budget`` model passes per
attributed image (two per member or clean image), so it stays a fixed share of
the attribution stage's work: first rounds go to findings in rank order, then
extra rounds; a finding left without a first round is reported as not verified.
Every round's model inputs, for all findings, go through the model in one
batched pass in the driver.

The finding's ``causal`` is ``clip(max(occlusion lift, transplant lift), 0, 1)``
and its score becomes ``support * coherence * (1 + causal)``
(``audit.stages.discover``); findings are then re-ranked.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from audit.config import Config
from audit.findings import Finding, Verification, ranked
from audit.interventions import Predictions, RegionTest, load, predict
from audit.stages.describe import described
from audit.stages.global_cues import property_tests


def verify(config: Config, root: Path, classes: list[str], predictions: pd.DataFrame,
           map_rows: np.ndarray, maps: np.ndarray, findings: list[Finding], classifier=None) -> list[Finding]:
    """Each finding with its ``verification`` and ``causal`` lift, re-scored and re-ranked.

    Parameters
    ----------
    config : Config
        ``verify.*``, ``discovery.grid``, ``data.*`` and ``seed``.
    root, classes : the manifest's folder and the class names in model output order.
    predictions : the predict stage table (labels, predictions, margins, errors).
    map_rows, maps : int ``[n]`` row ids and float ``[n, H, W]`` maps (``artifacts.read_first_maps``), at
        input resolution or already pooled to ``discovery.grid`` squared cells (as the
        pipeline passes them; regions are mapped to the images' size either way).
    findings : the discover stage's findings, ranked.
    classifier : an ``audit.model_io.Classifier``; default ``classifier_for(config)``.

    Returns
    -------
    New records, re-scored and re-ranked: ``verification`` is a ``Verification``
    (``verified`` False with its ``reason`` for a finding that was not tested).
    """
    if not config.verify.enabled:
        return [dataclasses.replace(f, verification=Verification(False, "verification disabled (verify.enabled)"))
                for f in findings]
    if classifier is None:
        from audit.model_io import classifier_for

        classifier = classifier_for(config)
    map_of = {int(r): i for i, r in enumerate(map_rows)}
    table = Predictions(predictions)
    errors = [f for f in findings if f.kind != "strategy"]
    strategies = [f for f in findings if f.kind == "strategy"]
    tested = errors[:config.verify.max_findings] + strategies
    plans = [RegionTest(config, f, table, map_of, classes.index(f.predicted_label)) for f in tested]
    strategy_rows = {int(r) for f in strategies for r in f.rows}
    n_attributed = len(map_rows) - len(strategy_rows & set(map_rows.tolist()))
    # strategies bring their own allowance: two tests of at most verify.max_samples, two passes each
    budget = int(np.ceil(config.verify.budget * n_attributed)) + 4 * config.verify.max_samples * len(strategies)
    images: dict[int, np.ndarray] = {}
    while True:
        steps = []
        for p in plans:   # in rank order: first rounds before extra rounds (see RegionTest.rounds)
            if p.active() and (p.rounds == 0 or not any(q.rounds == 0 and q.active() for q in plans)):
                cost = p.round_cost(config.verify.samples)
                if cost <= budget:
                    budget -= cost
                    steps.append((p, p.next_round(config.verify.samples)))
                else:
                    p.exhausted = True
        if not steps:
            break
        needed = sorted({r for _, (members, targets) in steps for r in members + targets} - set(images))
        images.update(load(config, root, classifier, table, needed))
        batches = [p.inputs(members, targets, images, maps, map_of, config) for p, (members, targets) in steps]
        probs, presence = predict(classifier, np.concatenate(batches), config)
        start = 0
        for (p, _), batch in zip(steps, batches):
            p.record(probs[start:start + len(batch)], None if presence is None else presence[start:start + len(batch)])
            start += len(batch)
    below = Verification(False, f"ranked below verify.max_findings ({config.verify.max_findings}) before verification")
    spent = Verification(False, f"the verification budget (verify.budget = {config.verify.budget} model passes "
                                f"per attributed image) was spent on better findings")
    out = [dataclasses.replace(f, verification=below) for f in errors[config.verify.max_findings:]]
    for p in plans:
        if p.rounds == 0 and p.exhausted:
            out.append(dataclasses.replace(p.finding, verification=spent))
            continue
        verification = p.summary()
        lifts = [t.lift for t in (verification.occlusion, verification.transplant) if t.lift is not None]
        finding = dataclasses.replace(p.finding, verification=verification)
        if config.verify.properties:
            finding = property_tests(config, root, classifier, table, p, images, finding)
        lifts += [t.test.lift for t in finding.properties if t.test is not None and t.test.lift is not None]
        causal = round(float(np.clip(max(lifts), 0.0, 1.0)), 6) if lifts else 0.0
        out.append(described(config, dataclasses.replace(finding, causal=causal), p.region_facts(images),
                             p.detector()))
    return ranked(out)
