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
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from audit.config import Config
from audit.data import load_images, preprocess
from audit.maps import top_regions
from audit.findings import Finding, Intervention, Verification, ranked

CONCLUSIVE = 3.0      # a lift whose +- CONCLUSIVE standard errors exclude 0 needs no more samples
TESTS = ("occlusion", "transplant")


def verify(config: Config, root: Path, classes: list[str], predictions: pd.DataFrame,
           map_rows: np.ndarray, maps: np.ndarray, findings: list[Finding], classifier=None) -> list[Finding]:
    """Each finding with its ``verification`` and ``causal`` lift, re-scored and re-ranked.

    Parameters
    ----------
    config : Config
        ``verify.*``, ``discovery.grid``, ``data.*`` and ``seed``.
    root, classes : the manifest's folder and the class names in model output order.
    predictions : the predict stage table (labels, predictions, margins, errors).
    map_rows, maps : int ``[n]`` row ids and float ``[n, H, W]`` maps (first method), at
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
    table = _Predictions(predictions)
    plans = [_Plan(config, f, table, map_of, classes.index(f.predicted_label))
             for f in findings[:config.verify.max_findings]]
    budget = int(np.ceil(config.verify.budget * len(map_rows)))
    images: dict[int, np.ndarray] = {}
    while True:
        steps = []
        for p in plans:   # in rank order: first rounds before extra rounds (see _Plan.rounds)
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
        images.update(_load(config, root, classifier, table, needed))
        batches = [p.inputs(members, targets, images, maps, map_of, config) for p, (members, targets) in steps]
        predicted = _predict(classifier, np.concatenate(batches), config.predict.batch_size)
        start = 0
        for (p, _), batch in zip(steps, batches):
            p.record(predicted[start:start + len(batch)])
            start += len(batch)
    below = Verification(False, f"ranked below verify.max_findings ({config.verify.max_findings}) before verification")
    spent = Verification(False, f"the verification budget (verify.budget = {config.verify.budget} model passes "
                                f"per attributed image) was spent on better findings")
    out = [dataclasses.replace(f, verification=below) for f in findings[len(plans):]]
    for p in plans:
        if p.rounds == 0 and p.exhausted:
            out.append(dataclasses.replace(p.finding, verification=spent))
            continue
        verification = p.summary()
        lifts = [t.lift for t in (verification.occlusion, verification.transplant) if t.lift is not None]
        causal = round(float(np.clip(max(lifts), 0.0, 1.0)), 6) if lifts else 0.0
        out.append(dataclasses.replace(p.finding, verification=verification, causal=causal))
    return ranked(out)


class _Predictions:
    """The columns of the predictions table that verification reads, as numpy arrays."""

    def __init__(self, predictions: pd.DataFrame):
        self.row = predictions["row"].to_numpy(np.int64)
        self.path = predictions["path"].to_numpy(dtype=object).astype(str)
        self.label = predictions["label"].to_numpy(dtype=object).astype(str)
        self.predicted = predictions["predicted"].to_numpy(dtype=object).astype(str)
        self.margin = predictions["margin"].to_numpy(np.float64)
        self.ok = predictions["error"].isna().to_numpy()
        self.at = {int(r): i for i, r in enumerate(self.row)}


def _seed(config: Config, *parts: str) -> np.random.Generator:
    digest = hashlib.sha1("\n".join(parts).encode()).digest()
    return np.random.default_rng([config.seed, int.from_bytes(digest[:8], "little")])


class _Plan:
    """The sequential tests of one finding: candidates in seeded order, outcomes so far."""

    def __init__(self, config: Config, finding: Finding, table: _Predictions, map_of: dict[int, int], target: int):
        self.finding, self.target = finding, target
        self.max_samples, self.max_se = config.verify.max_samples, config.verify.max_se
        self.rng = _seed(config, "members", finding.id)
        wrong = [int(r) for r in finding.rows
                 if int(r) in map_of and table.predicted[table.at[int(r)]] == finding.predicted_label]
        self.members = [wrong[i] for i in self.rng.permutation(len(wrong))]
        true = finding.true_label
        clean = table.row[table.ok & (table.label == true) & (table.predicted == true)
                          & (table.margin >= config.select.margin)]
        clean = clean[~np.isin(clean, finding.rows)]
        self.targets = clean[_seed(config, "targets", true).permutation(len(clean))].tolist()
        self.regions: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.tested: list[int] = []          # members with a region, in test order
        self.outcomes = {t: ([], []) for t in TESTS}   # test -> (top hits, random hits)
        self.next_member = self.next_target = self.rounds = 0
        self.exhausted = False   # a round did not fit in the budget: no more rounds
        self._pending: tuple[int, int] = (0, 0)

    def _open(self, test: str) -> bool:
        top, rnd = self.outcomes[test]
        n = len(top)
        left = (len(self.members) - self.next_member) if test == "occlusion" else \
            (len(self.targets) - self.next_target if self.tested or self.next_member < len(self.members) else 0)
        if left <= 0 or n >= self.max_samples:
            return False
        if n < 2:
            return True
        lift, se = _lift(top, rnd)
        return not (se <= self.max_se or abs(lift) > CONCLUSIVE * se)

    def active(self) -> bool:
        return not self.exhausted and any(self._open(t) for t in TESTS)

    def _sizes(self, samples: int) -> tuple[int, int]:
        take_m = samples if self._open("occlusion") or not self.tested else 0
        take_m = min(take_m, max(self.max_samples - len(self.tested), 0)) if self.tested else take_m
        take_m = min(take_m, len(self.members) - self.next_member)
        take_t = min(samples, self.max_samples - len(self.outcomes["transplant"][0])) if self._open("transplant") else 0
        return take_m, min(take_t, len(self.targets) - self.next_target)

    def round_cost(self, samples: int) -> int:
        """Model passes of the next round: two per member and two per clean image."""
        return 2 * sum(self._sizes(samples))

    def next_round(self, samples: int) -> tuple[list[int], list[int]]:
        """The members and clean images of the next round (members also serve as transplant sources)."""
        take_m, take_t = self._sizes(samples)
        members = self.members[self.next_member:self.next_member + take_m]
        targets = self.targets[self.next_target:self.next_target + take_t]
        self.next_member += len(members)
        self.next_target += len(targets)
        return members, targets

    def inputs(self, members: list[int], targets: list[int], images: dict[int, np.ndarray], maps: np.ndarray,
               map_of: dict[int, int], config: Config) -> np.ndarray:
        """Model inputs of one round: occluded top, occluded random (per new tested member),
        transplanted top, transplanted random (per clean image)."""
        members = [r for r in members if r in images]
        masks = top_regions(maps[[map_of[r] for r in members]], config.discovery.grid,
                            config.verify.max_area, images[members[0]].shape[:2]) if members else []
        new = []
        for r, mask in zip(members, masks):
            if mask is not None and mask.shape == images[r].shape[:2]:
                shift = (int(self.rng.integers(mask.shape[0])), int(self.rng.integers(mask.shape[1])))
                self.regions[r] = (mask, np.roll(mask, shift, axis=(0, 1)))
                new.append(r)
        self.tested += new
        targets = [t for t in targets if t in images] if self.tested else []
        self._pending = (len(new), len(targets))
        shape = next(iter(images.values())).shape if images else (0, 0, 0)
        out = np.empty((2 * len(new) + 2 * len(targets), *shape), np.float32)
        if new:
            own = np.stack([images[r] for r in new])
            fill = np.broadcast_to(own.mean(axis=(1, 2), keepdims=True), own.shape)
            for which in (0, 1):
                part = out[which * len(new):(which + 1) * len(new)]
                part[:] = own
                mask = np.stack([self.regions[r][which] for r in new])[..., None]
                np.copyto(part, fill, where=np.broadcast_to(mask, own.shape))
        if targets:
            start = len(self.outcomes["transplant"][0])
            sources = [self.tested[(start + j) % len(self.tested)] for j in range(len(targets))]
            own = np.stack([images[r] for r in sources])
            base = 2 * len(new)
            for which in (0, 1):
                part = out[base + which * len(targets):base + (which + 1) * len(targets)]
                part[:] = np.stack([images[t] for t in targets])
                mask = np.stack([self.regions[r][which] for r in sources])[..., None]
                np.copyto(part, own, where=np.broadcast_to(mask, own.shape))
        return out

    def record(self, predicted: np.ndarray) -> None:
        m, t = self._pending
        occ_top, occ_rnd = self.outcomes["occlusion"]
        occ_top += (predicted[:m] != self.target).tolist()
        occ_rnd += (predicted[m:2 * m] != self.target).tolist()
        tr_top, tr_rnd = self.outcomes["transplant"]
        tr_top += (predicted[2 * m:2 * m + t] == self.target).tolist()
        tr_rnd += (predicted[2 * m + t:2 * m + 2 * t] == self.target).tolist()
        self.rounds += 1

    def summary(self) -> Verification:
        mean_area = round(float(np.mean([self.regions[r][0].mean() for r in self.tested])), 4) if self.tested else None
        return Verification(True, None if self.tested else "no misclassified member with a positive map to test",
                            members_tested=len(self.tested), rounds=self.rounds, mean_area=mean_area,
                            occlusion=_rates(*self.outcomes["occlusion"]),
                            transplant=_rates(*self.outcomes["transplant"]))


def _lift(top: list[bool], rnd: list[bool]) -> tuple[float, float]:
    """Mean and standard error of the paired differences ``top - random``."""
    d = np.asarray(top, float) - np.asarray(rnd, float)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")


def _load(config: Config, root: Path, classifier, table: _Predictions, rows: list[int]) -> dict[int, np.ndarray]:
    """Preprocessed model inputs of ``rows``, by row id (unreadable images left out);
    decoded in two threads (Pillow releases the GIL while decoding)."""
    from concurrent.futures import ThreadPoolExecutor

    if not rows:
        return {}
    paths = [str(table.path[table.at[r]]) for r in rows]
    halves = [paths[: len(paths) // 2], paths[len(paths) // 2:]]
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda part: load_images(root, part, classifier.input_size, config.data.max_pixels,
                                                      classifier.input_shape[2]), halves))
    images = preprocess(np.concatenate([d[0] for d in done]), config.data.preprocess)
    errors = done[0][1] + done[1][1]
    return {r: images[i] for i, r in enumerate(rows) if errors[i] is None}


def _predict(classifier, inputs: np.ndarray, batch: int) -> np.ndarray:
    if len(inputs) == 0:
        return np.zeros(0, int)
    return np.concatenate([classifier.logits(inputs[i:i + batch]).argmax(axis=1)
                           for i in range(0, len(inputs), batch)])


def _rates(top: list[bool], rnd: list[bool]) -> Intervention:
    n = len(top)
    if n == 0:
        return Intervention()
    lift, se = _lift(top, rnd)
    return Intervention(n=n, flipped=int(sum(top)), rate=round(sum(top) / n, 4), random_flipped=int(sum(rnd)),
                        random_rate=round(sum(rnd) / n, 4), lift=round(lift, 4),
                        se=round(se, 4) if np.isfinite(se) else None)
