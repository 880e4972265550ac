"""Intervention tests of a finding's region cue: hide it, paste it, against a random region.

Used by ``audit.stages.verify`` (which documents the protocol). ``RegionTest`` holds one
finding's sequential tests: its candidates in seeded order and the outcomes so far;
the driver batches every round's model inputs of all findings into one pass.

For an error finding (``true -> predicted``) the members are its misclassified
images and the clean images are confidently correct images of ``true``; occlusion
counts a member as flipped when its prediction leaves ``predicted``. For a strategy
(correct predictions of ``C``) the members are its images, occlusion counts a
member when ``C``'s probability falls below half its value or the prediction leaves
``C``, and the clean images come from the two classes nearest to ``C`` (highest
mean probability of ``C`` on their own correct images): pasting the cue onto them
should move them to ``C``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from audit.config import Config
from audit.data import load_images, preprocess
from audit.findings import Finding, Intervention, Verification
from audit.image_properties import looks_summary, region_look
from audit.maps import top_regions

CONCLUSIVE = 3.0      # a lift whose +- CONCLUSIVE standard errors exclude 0 needs no more samples
TESTS = ("occlusion", "transplant")
NEAREST_CLASSES = 1   # a strategy's cue is pasted onto clean images of this many nearest classes


class Predictions:
    """The columns of the ``predictions`` table (predict stage) that verification reads, as numpy arrays;
    ``probs`` float ``[n, K]`` (NaN rows for unreadable images)."""

    def __init__(self, predictions: pd.DataFrame):
        self.row = predictions["row"].to_numpy(np.int64)
        self.path = predictions["path"].to_numpy(dtype=object).astype(str)
        self.label = predictions["label"].to_numpy(dtype=object).astype(str)
        self.predicted = predictions["predicted"].to_numpy(dtype=object).astype(str)
        self.margin = predictions["margin"].to_numpy(np.float64)
        self.ok = predictions["error"].isna().to_numpy()
        self.at = {int(r): i for i, r in enumerate(self.row)}
        self.classes = sorted(set(self.label[self.ok].tolist()))
        probs = predictions["probs"].tolist() if "probs" in predictions else []
        width = max((len(p) for p in probs if p is not None), default=0)
        self.probs = np.array([np.asarray(p, np.float64) if p is not None else np.full(width, np.nan)
                               for p in probs]).reshape(len(self.row), width)

    def nearest(self, target: int, name: str, k: int = NEAREST_CLASSES) -> list[str]:
        """The ``k`` other classes whose correct images give class ``target`` (named ``name``) the
        highest mean probability: where a cue of ``name`` would move images first."""
        if not self.probs.size:
            return []
        right = self.ok & (self.label == self.predicted) & (self.label != name)
        scores = {c: float(np.nanmean(self.probs[right & (self.label == c), target]))
                  for c in set(self.label[right].tolist())}
        return sorted(scores, key=lambda c: (-scores[c], c))[:k]


def seed(config: Config, *parts: str) -> np.random.Generator:
    """A generator seeded by ``config``'s ``seed`` and the SHA-1 of ``parts`` (e.g. "members", a finding ID)."""
    digest = hashlib.sha1("\n".join(parts).encode()).digest()
    return np.random.default_rng([config.seed, int.from_bytes(digest[:8], "little")])


class RegionTest:
    """The sequential tests of one finding: candidates in seeded order, outcomes so far.

    Parameters
    ----------
    config : Config
        ``verify.*``, ``select.margin`` and ``seed``.
    finding : Finding
        The finding tested (error group or strategy).
    table : Predictions
        The run's predictions.
    map_of : dict of int to int
        Prediction row -> index of its map.
    target : int
        Index of the finding's predicted class.
    """

    def __init__(self, config: Config, finding: Finding, table: Predictions, map_of: dict[int, int], target: int):
        self.finding, self.target = finding, target
        self.max_samples, self.max_se = config.verify.max_samples, config.verify.max_se
        self.rng = seed(config, "members", finding.id)
        self.strategy = finding.kind == "strategy"
        wrong = [int(r) for r in finding.rows
                 if int(r) in map_of and table.predicted[table.at[int(r)]] == finding.predicted_label]
        self.members = [wrong[i] for i in self.rng.permutation(len(wrong))]
        self.before = {r: table.probs[table.at[r], target] for r in self.members} if self.strategy else {}
        sources = table.nearest(target, finding.predicted_label) if self.strategy else [finding.true_label]
        clean = table.row[table.ok & np.isin(table.label, sources) & (table.predicted == table.label)
                          & (table.margin >= config.select.margin)]
        clean = clean[~np.isin(clean, finding.rows)]
        self.targets = clean[seed(config, "targets", *sources).permutation(len(clean))].tolist()
        self.sources = tuple(sources)
        self.regions: dict[int, tuple[np.ndarray, np.ndarray]] = {}   # tested (top, random), one cell wider
        self.cores: dict[int, np.ndarray] = {}                          # the top regions themselves: their area
        self.tested: list[int] = []          # members with a region, in test order
        self.outcomes = {t: ([], []) for t in TESTS}   # test -> (top hits, random hits)
        self.next_member = self.next_target = self.rounds = 0
        self.exhausted = False   # a round did not fit in the budget: no more rounds
        self.pasted: list[tuple[np.ndarray, np.ndarray]] = []   # presence of pasted (top, random) images
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
        """Whether another round may run: a test is still open (not conclusive, samples and candidates left)."""
        return not self.exhausted and any(self._open(t) for t in TESTS)

    def _sizes(self, samples: int) -> tuple[int, int]:
        take_m = samples if self._open("occlusion") or not self.tested else 0
        take_m = min(take_m, max(self.max_samples - len(self.tested), 0)) if self.tested else take_m
        take_m = min(take_m, len(self.members) - self.next_member)
        take_t = min(samples, self.max_samples - len(self.outcomes["transplant"][0])) if self._open("transplant") else 0
        return take_m, min(take_t, len(self.targets) - self.next_target)

    def round_cost(self, samples: int) -> int:
        """Model passes of the next round of at most ``samples`` per test: two per member and two per clean
        image."""
        return 2 * sum(self._sizes(samples))

    def next_round(self, samples: int) -> tuple[list[int], list[int]]:
        """The members and clean images of the next round, at most ``samples`` each (members also serve as
        transplant sources)."""
        take_m, take_t = self._sizes(samples)
        members = self.members[self.next_member:self.next_member + take_m]
        targets = self.targets[self.next_target:self.next_target + take_t]
        self.next_member += len(members)
        self.next_target += len(targets)
        return members, targets

    def inputs(self, members: list[int], targets: list[int], images: dict[int, np.ndarray], maps: np.ndarray,
               map_of: dict[int, int], config: Config) -> np.ndarray:
        """Model inputs of one round: occluded top, occluded random (per new tested member),
        transplanted top, transplanted random (per clean image), float32 RGB 0..255.

        ``members``, ``targets``: the round's rows (``next_round``); ``images``: decoded images by
        row; ``maps``, ``map_of``: the maps verification reads (``artifacts.read_first_maps``) and
        their row index; ``config``: ``discovery.grid`` and ``verify.max_area`` (regions by ``top_regions``).
        """
        members = [r for r in members if r in images]
        own_maps = maps[[map_of[r] for r in members]]
        shape = images[members[0]].shape[:2] if members else None
        cores = top_regions(own_maps, config.discovery.grid, config.verify.max_area, shape) if members else []
        # a cell larger than a pixel may hold a cue's edge without reaching half the peak: one cell wider
        wider = int(shape is not None and max(shape) > config.discovery.grid)
        masks = top_regions(own_maps, config.discovery.grid, config.verify.max_area, shape, dilate=wider) \
            if members else []
        new = []
        for r, core, mask in zip(members, cores, masks):
            if mask is not None and mask.shape == images[r].shape[:2]:
                shift = (int(self.rng.integers(mask.shape[0])), int(self.rng.integers(mask.shape[1])))
                self.regions[r] = (mask, np.roll(mask, shift, axis=(0, 1)))
                self.cores[r] = core
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

    def record(self, probs: np.ndarray, presence: np.ndarray | None = None) -> None:
        """Count one round's outcomes from its inputs' probabilities ``probs`` ``[n, K]`` (and keep the
        target-layer ``presence`` ``[n, c]`` of the pasted images, for the cue detector)."""
        m, t = self._pending
        predicted = probs.argmax(axis=1)
        left = predicted != self.target
        if self.strategy and m:   # a strategy: the class's probability halves (or the prediction leaves it)
            new = self.tested[len(self.tested) - m:]
            before = np.array([self.before[r] for r in new])
            left[:2 * m] |= probs[:2 * m, self.target] < 0.5 * np.tile(before, 2)
        occ_top, occ_rnd = self.outcomes["occlusion"]
        occ_top += left[:m].tolist()
        occ_rnd += left[m:2 * m].tolist()
        tr_top, tr_rnd = self.outcomes["transplant"]
        tr_top += (predicted[2 * m:2 * m + t] == self.target).tolist()
        tr_rnd += (predicted[2 * m + t:2 * m + 2 * t] == self.target).tolist()
        if presence is not None and t:
            self.pasted.append((presence[2 * m:2 * m + t], presence[2 * m + t:2 * m + 2 * t]))
        self.rounds += 1

    def detector(self, n_channels: int = 8) -> dict | None:
        """A detector of the cue from the (at most ``n_channels``) target-layer channels that pasting it
        switches on.

        Returns ``None`` without pasted images; else ``channels`` (int ``[k]``, the channels whose
        spatial maximum rises most, in standard deviations, when the top region rather than
        the random one is pasted, at least 0.5 SD) with their ``mean`` and ``scale`` (float
        ``[k]``, over all pasted images; channels rising less than half as much as the first are
        left out), and ``top`` / ``random``: the pasted images' detector
        scores (``audit.stages.link.scores``), to set its threshold.
        """
        if not self.pasted:
            return None
        top = np.concatenate([p[0] for p in self.pasted]).astype(np.float64)
        rnd = np.concatenate([p[1] for p in self.pasted]).astype(np.float64)
        both = np.concatenate([top, rnd])
        scale = both.std(axis=0) + 1e-6
        z = (top.mean(axis=0) - rnd.mean(axis=0)) / scale
        channels = np.argsort(-z, kind="stable")[:n_channels]
        channels = channels[z[channels] >= max(0.5, 0.5 * z[channels[0]])]
        if not len(channels):
            return None
        mean = both.mean(axis=0)[channels]
        score = lambda x: ((x[:, channels] - mean) / scale[channels]).mean(axis=1)
        return {"channels": channels, "mean": mean, "scale": scale[channels], "top": score(top), "random": score(rnd)}

    def region_facts(self, images: dict[int, np.ndarray]) -> dict:
        """Measured facts of the tested regions, from the decoded ``images`` by row, for the cue in words
        (``audit.stages.describe``): ``centres`` ``[m, 2]`` (y, x fractions), ``area`` (mean share of
        the image), the mean RGB 0..255 of the regions (``inside``), of their distinct pixels
        (``distinct``) and of the whole images (``outside``), and the rest of
        ``audit.image_properties.looks_summary``."""
        if not self.tested:
            return {}
        centres, looks = [], []
        for r in self.tested:
            mask = self.cores[r]
            ys, xs = np.nonzero(mask)
            centres.append(((ys.mean() + 0.5) / mask.shape[0], (xs.mean() + 0.5) / mask.shape[1]))
            if r in images and mask.any():
                looks.append(region_look(images[r], mask))
        facts = {"centres": np.array(centres), "area": float(np.mean([self.cores[r].mean() for r in self.tested])),
                 "inside": None, "outside": None}
        facts.update(looks_summary(looks))
        return facts

    def summary(self) -> Verification:
        """The finding's ``Verification``: members tested, rounds, mean region area (share) and both tests'
        rates."""
        mean_area = round(float(np.mean([self.cores[r].mean() for r in self.tested])), 4) if self.tested else None
        why = "no member with a positive map to test" if self.strategy else \
            "no misclassified member with a positive map to test"
        return Verification(True, None if self.tested else why,
                            members_tested=len(self.tested), rounds=self.rounds, mean_area=mean_area,
                            occlusion=rates(*self.outcomes["occlusion"]),
                            transplant=rates(*self.outcomes["transplant"]))


def _lift(top: list[bool], rnd: list[bool]) -> tuple[float, float]:
    """Mean and standard error of the paired differences ``top - random``."""
    d = np.asarray(top, float) - np.asarray(rnd, float)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")


def rates(top: list[bool], rnd: list[bool]) -> Intervention:
    """An ``Intervention`` from paired outcomes ``top`` / ``rnd`` (flipped with the top / a random region):
    counts, rates (0..1), lift and its standard error; empty for no pair."""
    n = len(top)
    if n == 0:
        return Intervention()
    lift, se = _lift(top, rnd)
    return Intervention(n=n, flipped=int(sum(top)), rate=round(sum(top) / n, 4), random_flipped=int(sum(rnd)),
                        random_rate=round(sum(rnd) / n, 4), lift=round(lift, 4),
                        se=round(se, 4) if np.isfinite(se) else None)


def load(config: Config, root: Path, classifier, table: Predictions, rows: list[int]) -> dict[int, np.ndarray]:
    """Decoded images of ``rows`` (paths from ``table``, under ``root``; ``config``'s ``data.max_pixels``; the
    ``classifier``'s input size), float32 RGB 0..255 at the model's input size, before its
    preprocessing), by row id (unreadable images left out); decoded in two threads (Pillow
    releases the GIL while decoding)."""
    from concurrent.futures import ThreadPoolExecutor

    if not rows:
        return {}
    paths = [str(table.path[table.at[r]]) for r in rows]
    halves = [paths[: len(paths) // 2], paths[len(paths) // 2:]]
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda part: load_images(root, part, classifier.input_size, config.data.max_pixels,
                                                      classifier.input_shape[2]), halves))
    images = np.concatenate([d[0] for d in done])
    errors = done[0][1] + done[1][1]
    return {r: images[i] for i, r in enumerate(rows) if errors[i] is None}


def predict(classifier, inputs: np.ndarray, config: Config) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities ``[n, K]`` from ``classifier`` of ``inputs`` ``[n, H, W, C]`` (float RGB 0..255, preprocessed
    here by ``config``'s ``data.preprocess``, ``predict.batch_size`` per call)
    and, when the model has a target layer, each image's channel ``presence`` ``[n, c]``."""
    batch = config.predict.batch_size
    if len(inputs) == 0:
        return np.zeros((0, classifier.n_classes)), None
    fused = getattr(classifier, "layer", None) is not None
    probs, presence = [], []
    for i in range(0, len(inputs), batch):
        x = preprocess(inputs[i:i + batch], config.data.preprocess)
        if fused:
            logits, _, _, seen = classifier.logits_and_cam(x)
            presence.append(seen)
        else:
            logits = classifier.logits(x)
        probs.append(_softmax(logits))
    return np.concatenate(probs), np.concatenate(presence) if fused else None


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)
