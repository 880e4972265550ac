"""One frozen configuration object, resolved once: defaults < YAML < ``--set`` < flags.

Every key is declared in ``DEFAULTS`` and checked by one rule in ``RULES``; an
unknown key or a bad value stops the run before any work (exit 2) with one line
such as "`select.margin` must be a float in [0, 1] (got 3)".
"""
from __future__ import annotations

import copy
import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

import yaml

from audit.errors import UsageError

PREPROCESS = ("none", "unit", "symmetric", "imagenet")
PATH_KEYS = ("model.path", "data.path", "data.classes", "out", "baseline.run_dir", "triage.path", "history.path")

DEFAULTS: dict[str, Any] = {
    "run_id": None,            # default: UTC timestamp
    "out": None,               # run folder; default reports/<run_id>
    "seed": 0,
    "model": {
        "path": None,
        "target_layer": None,  # default: last layer with a spatial 4-D output
        "trust": False,        # allow Lambda layers (arbitrary code): --trust-model
    },
    "data": {
        "path": None,          # folder of class subfolders, or CSV/parquet manifest
        "classes": None,       # text file, one class per line, model output order
        "preprocess": "none",  # none: RGB 0..255 | unit: 0..1 | symmetric: -1..1 | imagenet: mean/std
        "max_pixels": 89_478_485,  # larger images are refused (decompression-bomb guard)
    },
    "predict": {
        "batch_size": 64,
        "partition_size": 512,  # images per Dask task
    },
    "select": {
        "margin": 0.15,             # correct but top-1 minus top-2 probability below this: low confidence
        "max_per_pair": 200,        # cap of selected images per confusion pair
        "contrast_per_class": 30,   # correctly classified images of each predicted class, for contrast
        "pair": None,               # "true:predicted" restricts the audit to one confusion pair
    },
    "attribution": {
        "methods": ["gradcam", "integrated_gradients", "occlusion"],  # the first one's maps drive discovery
        "params": {},               # per method: {occlusion: {patch: 8}, integrated_gradients: {steps: 16}}
        "batch_size": 32,
        "partition_size": 256,
    },
    "discovery": {
        "grid": 16,                # spatial features: positive map pooled to grid x grid
        "pca_components": 16,      # semantic features: PCA of attention-pooled activations
        "semantic_weight": 0.5,    # share of the semantic block in the squared feature distance
        "neighbors": 10,           # kNN graph for spectral clustering
        "max_clusters": 6,         # largest k the eigengap may choose
        "min_cluster_size": 4,
        "min_pair_size": 4,        # pairs with fewer selected images are not clustered
        "density": True,           # also cluster with HDBSCAN (small tight groups)
        "max_overlap": 0.5,        # a density cluster overlapping a spectral one more (Jaccard) is dropped
    },
    "verify": {
        "enabled": True,
        "max_findings": 3,         # the best-scored findings are tested by intervention
        "samples": 8,              # members occluded / clean images pasted onto, per round
        "max_samples": 32,         # at most this many of each per finding
        "max_se": 0.1,             # a test stops once its lift's standard error is this small (or conclusive)
        "max_area": 0.2,           # largest top-attributed region, as a share of the image
        "budget": 0.3,             # at most this many model passes per attributed image, in all
    },
    "trust": {
        "enabled": True,
        "methods": None,           # null: every attribution method; else a subset of attribution.methods
        "sample": 12,              # attributed images for deletion/insertion curves (seeded sample)
        "steps": 8,                # deletion/insertion steps: fractions 0, 1/steps, ..., 1 of the pixels
        "random_maps": 2,          # uniform random maps (one seed each): the faithfulness baseline
        "sanity_sample": 8,        # at most this many images of that sample for the sanity checks (once per audit)
        "sanity_budget": 0.1,      # ... and at most this share of attribute's work: images x (steps + 1) re-explained
        "randomization_steps": 5,  # cascading randomization: at most this many steps, top layers first
        "grid": 16,                # agreement: maps area-pooled to grid x grid cells before rank correlation
        "max_spearman": 0.5,       # sanity: |Spearman| of fully randomized maps to the originals below this
        "max_random_logit_spearman": 0.8,  # sanity: |Spearman| of maps for a random other class below this
        "min_margin": 0.0,         # faithful: deletion and insertion AUC beat random maps' by more than this
        "min_agreement": 0.3,      # a finding's maps agree: mean Spearman between methods (positive maps) >= this
        "min_lift": 0.1,           # a finding's cue is confirmed: best verification lift >= this
    },
    "gates": {
        "max_error_rate": None,     # fail when 1 - accuracy exceeds this
        "max_finding_score": None,  # fail when any finding (not suppressed) scores above this
        "max_new_finding_score": None,  # fail when a new finding, not acknowledged or suppressed, scores above this
        "max_pair_error_rate_increase": None,  # fail when a pair's error rate rises more than this over the baseline
        "min_verification_lift": None,  # fail when a finding (not suppressed) is verified with at least this lift
    },
    "baseline": {
        "run_dir": None,            # previous run folder (--baseline); "latest": newest other run in the history
        "tolerance": 0.15,          # cue centres at most this far apart (fraction of the image) match ...
        "focus_tolerance": 0.5,     # ... when their focus differs by at most this (|log2 ratio|)
        "min_overlap": 0.5,         # or members overlapping at least this much (Jaccard) match
    },
    "triage": {
        "path": None,               # triage.yaml acknowledging / suppressing finding IDs (--triage)
    },
    "history": {
        "path": "auto",             # history.parquet; auto: in the run folder's parent; null: no history
    },
    "demo": {
        "rail_rate": 0.87,          # share of bathroom training images with rails (audit demo --rail-rate)
    },
    "dask": {
        "scheduler": None,          # None: local threads; "tcp://host:8786": a distributed cluster
        "workers": 2,
    },
    "report": {
        "exemplars": 6,
        "layout": "single",          # single: one self-contained index.html | folder: index.html + assets/
        "max_bytes": 10_000_000,     # size budget of the report; a warning line when exceeded
        "max_image_views": 300,      # single layout: gallery images with embedded overlays (folder: all)
    },
    "internals": {                 # look inside the model (audit.internals), for the top findings
        "enabled": True,
        "findings": 3,             # the best-ranked findings get a "Model internals" entry
        "layers": None,            # activation-map layers; default: n_layers spread shallow to deep
        "n_layers": 3,
        "channels": 8,             # channels shown per layer in activation maps, by attribution
        "exemplars": 2,            # a finding's exemplars shown as activation maps
        "finding_channels": 3,     # target-layer channels most attributed in a finding's cue area
        "max_members": 64,         # members used to rank those channels
        "patches": 9,              # maximally activating dataset patches per channel
        "max_images": 2000,        # audit images scanned for patches (a seeded sample beyond this)
        "steps": 128,              # gradient-ascent steps (filter and class visualization)
        "learning_rate": 0.05,     # step, as a share of the input range (gradient normalised per image)
        "jitter": 4,               # random shift of up to this many input pixels per step
        "blur_every": 4,           # Gaussian blur every this many steps (0: never)
        "blur_sigma": 0.5,         # in input pixels, filter visualization
        "class_blur_sigma": 1.0,   # in input pixels, class visualization (a whole-model objective needs more)
        "octaves": 3,              # multiscale: resolutions, ending at the input size
        "octave_scale": 1.4,       # ratio between octaves
        "polish": 0.25,            # filter visualization: last share of the steps, no jitter, step and blur -> 0
        "l2": 0.01,                # class visualization: S_c(I) - l2 * ||I||^2 (I in half-range units)
        "batch_size": 64,          # images per model call (ascent batches, patch scan)
    },
}


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _fraction(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _pair(v: Any) -> bool:
    return isinstance(v, str) and v.count(":") == 1 and all(part.strip() for part in v.split(":"))


def _methods(v: Any) -> bool:
    from audit.explainers import available

    return isinstance(v, list) and len(v) > 0 and all(m in available() for m in v)


def _method_params(v: Any) -> bool:
    from audit.explainers import available

    return isinstance(v, dict) and all(m in available() and isinstance(p, (dict, type(None)))
                                       for m, p in v.items())


def _methods_text() -> str:
    from audit.explainers import available

    return "a non-empty list of: " + ", ".join(available())


MAPPINGS = ("attribution.params",)  # keys whose value is a free-form mapping

RULES: dict[str, tuple[Callable[[Any], bool], str | Callable[[], str]]] = {
    "run_id": (_optional(lambda v: isinstance(v, str) and v.replace("-", "").replace("_", "").isalnum()),
               "letters, digits, - and _ only"),
    "out": (_optional(_str), "a folder path"),
    "seed": (_nonneg_int, "a non-negative int"),
    "model.path": (_optional(_str), "a model file or folder path"),
    "model.target_layer": (_optional(_str), "a layer name"),
    "model.trust": (lambda v: isinstance(v, bool), "true or false"),
    "data.path": (_optional(_str), "a folder or manifest path"),
    "data.classes": (_optional(_str), "a text file path"),
    "data.preprocess": (lambda v: v in PREPROCESS, "one of " + ", ".join(PREPROCESS)),
    "data.max_pixels": (_positive_int, "a positive int"),
    "predict.batch_size": (_positive_int, "a positive int"),
    "predict.partition_size": (_positive_int, "a positive int"),
    "select.margin": (_fraction, "a float in [0, 1]"),
    "select.max_per_pair": (_positive_int, "a positive int"),
    "select.contrast_per_class": (_nonneg_int, "a non-negative int"),
    "select.pair": (_optional(_pair), "\"true:predicted\", two class names"),
    "attribution.methods": (_methods, _methods_text),
    "attribution.params": (_method_params, "a mapping of registered method name to a mapping of its parameters"),
    "attribution.batch_size": (_positive_int, "a positive int"),
    "attribution.partition_size": (_positive_int, "a positive int"),
    "discovery.grid": (lambda v: _positive_int(v) and v <= 64, "an int in [1, 64]"),
    "discovery.pca_components": (_positive_int, "a positive int"),
    "discovery.neighbors": (lambda v: _positive_int(v) and v >= 2, "an int >= 2"),
    "discovery.max_clusters": (_positive_int, "a positive int"),
    "discovery.min_cluster_size": (lambda v: _positive_int(v) and v >= 2, "an int >= 2"),
    "discovery.min_pair_size": (lambda v: _positive_int(v) and v >= 2, "an int >= 2"),
    "discovery.semantic_weight": (_fraction, "a float in [0, 1]"),
    "discovery.density": (lambda v: isinstance(v, bool), "true or false"),
    "discovery.max_overlap": (_fraction, "a float in [0, 1]"),
    "verify.enabled": (lambda v: isinstance(v, bool), "true or false"),
    "verify.max_findings": (_nonneg_int, "a non-negative int"),
    "verify.samples": (lambda v: _positive_int(v) and v >= 2, "an int >= 2"),
    "verify.max_samples": (lambda v: _positive_int(v) and v >= 2, "an int >= 2"),
    "verify.max_se": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a number > 0"),
    "verify.max_area": (lambda v: _fraction(v) and v > 0, "a float in (0, 1]"),
    "verify.budget": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a number > 0"),
    "trust.enabled": (lambda v: isinstance(v, bool), "true or false"),
    "trust.methods": (_optional(_methods), lambda: "null or " + _methods_text()),
    "trust.sample": (_positive_int, "a positive int"),
    "trust.steps": (lambda v: _positive_int(v) and v >= 2, "an int >= 2"),
    "trust.random_maps": (_positive_int, "a positive int"),
    "trust.sanity_sample": (_nonneg_int, "a non-negative int"),
    "trust.sanity_budget": (lambda v: _number(v) and v > 0, "a number > 0"),
    "trust.randomization_steps": (_positive_int, "a positive int"),
    "trust.grid": (lambda v: _positive_int(v) and 2 <= v <= 64, "an int in [2, 64]"),
    "trust.max_spearman": (lambda v: _number(v) and -1 <= v <= 1, "a number in [-1, 1]"),
    "trust.max_random_logit_spearman": (lambda v: _number(v) and -1 <= v <= 1, "a number in [-1, 1]"),
    "trust.min_margin": (_number, "a number"),
    "trust.min_agreement": (lambda v: _number(v) and -1 <= v <= 1, "a number in [-1, 1]"),
    "trust.min_lift": (lambda v: _number(v) and -1 <= v <= 1, "a number in [-1, 1]"),
    "gates.max_error_rate": (_optional(_fraction), "a float in [0, 1] or null"),
    "gates.max_finding_score": (_optional(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
                                "a number or null"),
    "gates.max_new_finding_score": (_optional(_number), "a number or null"),
    "gates.max_pair_error_rate_increase": (_optional(_fraction), "a float in [0, 1] or null"),
    "gates.min_verification_lift": (_optional(lambda v: _fraction(v) and v > 0), "a float in (0, 1] or null"),
    "baseline.run_dir": (_optional(_str), "a run folder path, \"latest\" or null"),
    "baseline.tolerance": (_fraction, "a float in [0, 1]"),
    "baseline.focus_tolerance": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "baseline.min_overlap": (lambda v: _fraction(v) and v > 0, "a float in (0, 1]"),
    "triage.path": (_optional(_str), "a triage YAML file path or null"),
    "history.path": (_optional(_str), "\"auto\", a parquet file path or null"),
    "demo.rail_rate": (_fraction, "a float in [0, 1]"),
    "dask.scheduler": (_optional(_str), "null (local) or a scheduler address such as tcp://host:8786"),
    "dask.workers": (_positive_int, "a positive int"),
    "report.exemplars": (_positive_int, "a positive int"),
    "report.layout": (lambda v: v in ("single", "folder"), "single or folder"),
    "report.max_bytes": (_positive_int, "a positive int (bytes)"),
    "report.max_image_views": (_nonneg_int, "a non-negative int"),
    "internals.enabled": (lambda v: isinstance(v, bool), "true or false"),
    "internals.findings": (_nonneg_int, "a non-negative int"),
    "internals.layers": (_optional(lambda v: isinstance(v, list) and len(v) > 0 and all(_str(x) for x in v)),
                         "null or a non-empty list of layer names"),
    "internals.n_layers": (_positive_int, "a positive int"),
    "internals.channels": (_positive_int, "a positive int"),
    "internals.exemplars": (_nonneg_int, "a non-negative int"),
    "internals.finding_channels": (_positive_int, "a positive int"),
    "internals.max_members": (_positive_int, "a positive int"),
    "internals.patches": (_positive_int, "a positive int"),
    "internals.max_images": (_positive_int, "a positive int"),
    "internals.steps": (_positive_int, "a positive int"),
    "internals.learning_rate": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "internals.jitter": (_nonneg_int, "a non-negative int"),
    "internals.blur_every": (_nonneg_int, "a non-negative int"),
    "internals.blur_sigma": (lambda v: _number(v) and 0 <= v <= 10, "a number in [0, 10]"),
    "internals.class_blur_sigma": (lambda v: _number(v) and 0 <= v <= 10, "a number in [0, 10]"),
    "internals.octaves": (_positive_int, "a positive int"),
    "internals.octave_scale": (lambda v: _number(v) and 1 <= v <= 4, "a number in [1, 4]"),
    "internals.polish": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "internals.l2": (lambda v: _number(v) and v >= 0, "a non-negative number"),
    "internals.batch_size": (_positive_int, "a positive int"),
}


@dataclass(frozen=True)
class Config:
    """The resolved configuration: read it as ``config["select.margin"]`` or ``config.section("select")``."""

    values: MappingProxyType
    source: str | None = None

    def __getitem__(self, dotted: str) -> Any:
        node: Any = self.values
        for part in dotted.split("."):
            node = node[part]
        return node

    def section(self, name: str) -> MappingProxyType:
        return self.values[name]

    def to_dict(self) -> dict:
        return _thaw(self.values)

    @property
    def run_dir(self) -> Path:
        return Path(self["out"])

    def __reduce__(self):  # picklable for Dask workers (MappingProxyType is not)
        return (_rebuild, (self.to_dict(), self.source))


def _rebuild(values: dict, source: str | None) -> Config:
    return Config(_freeze(values), source)


def resolve(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = (),
            flags: dict[str, Any] | None = None) -> Config:
    """Build the config: defaults, then the YAML file, then ``--set key=value``, then flags.

    ``flags`` maps dotted keys to values; ``None`` values are ignored. Relative
    paths in the YAML file are taken relative to the YAML file's folder.
    """
    values = copy.deepcopy(DEFAULTS)
    source = None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"{path}: no such config file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"{path}: the config must be a mapping of keys")
        for key, value in _flatten(loaded):
            if key in PATH_KEYS and isinstance(value, str) and value not in ("auto", "latest"):
                value = str((path.parent / value)) if not Path(value).is_absolute() else value
            _assign(values, key, value, where=str(path))
        source = str(path)
    for item in sets:
        if "=" not in item:
            raise UsageError(f"--set {item}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _assign(values, key.strip(), value, where="--set")
    for key, value in (flags or {}).items():
        if value is not None:
            _assign(values, key, value, where="flag")
    for key, (check, text) in RULES.items():
        value = _get(values, key)
        if not check(value):
            text = text() if callable(text) else text
            raise UsageError(f"`{key}` must be {text} (got {value!r})")
    extra = [m for m in values["trust"]["methods"] or [] if m not in values["attribution"]["methods"]]
    if extra:
        raise UsageError(f"`trust.methods` must be among `attribution.methods` (got {', '.join(extra)})")
    if values["run_id"] is None:
        values["run_id"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    if values["out"] is None:
        values["out"] = str(Path("reports") / values["run_id"])
    return Config(_freeze(values), source)


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in RULES and isinstance(_get(DEFAULTS, dotted, None), dict):
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def _assign(values: dict, dotted: str, value: Any, where: str) -> None:
    mapping = next((key for key in MAPPINGS if dotted.startswith(key + ".")), None)
    if mapping is not None:  # e.g. --set attribution.params.occlusion.patch=8
        node = _get(values, mapping)
        *parents, leaf = dotted[len(mapping) + 1:].split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"{where}: `{dotted}`: `{part}` is not a mapping")
        node[leaf] = value
        return
    if dotted not in RULES:
        raise UsageError(f"{where}: unknown key `{dotted}`")
    *parents, leaf = dotted.split(".")
    node = values
    for part in parents:
        node = node[part]
    node[leaf] = value


def _get(values: dict, dotted: str, default: Any = KeyError) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is KeyError:
                raise KeyError(dotted)
            return default
        node = node[part]
    return node


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, MappingProxyType):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value
