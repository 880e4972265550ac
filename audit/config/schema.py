"""The config schema: every setting once, with its default, its check and what it means.

One frozen dataclass per section; each field is a ``setting`` whose metadata holds
its ``Check`` (``audit.config.checks``) and its comment. ``audit.config.resolve``
reads defaults, validation and path handling from here, the commented
``pipelines/*.yaml`` are tested against it, and code reads values as attributes
(``config.select.margin``), so a misspelt key fails in the first test that runs it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from audit.config.checks import (DURATION, FLAG, FRACTION, NON_NEGATIVE_INT, POSITIVE_INT, Check, choice, integer,
                                 method_params, methods, names, number, optional, output_name, pair, run_id,
                                 text)

PREPROCESS = ("none", "unit", "symmetric", "imagenet", "tf", "torch", "caffe")
SOUNDNESS_CHECKS = ("chance", "class_order", "unreadable", "small_findings", "pair_size")   # audit.soundness


def setting(default: Any, check: Check, doc: str, *, path: bool = False, mapping: bool = False) -> Any:
    """A schema field: ``default``, its ``check``, the comment ``doc``; ``path``: a relative value in a
    YAML file is taken relative to that file; ``mapping``: a free-form mapping whose nested keys
    ``--set`` may address (``attribution.params.occlusion.patch=8``)."""
    metadata = {"check": check, "doc": doc, "path": path, "mapping": mapping}
    if isinstance(default, dict):   # a mapping default is read-only, one per instance
        return field(default_factory=lambda: MappingProxyType(dict(default)), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls: type) -> Any:
    """A ``Settings`` field holding section ``cls`` (a dataclass of ``setting`` fields), default-built."""
    return field(default_factory=cls, metadata={"section": True})


@dataclass(frozen=True)
class Model:
    """``model:`` the classifier file and the layer the layer-based methods explain."""

    path: str | None = setting(None, optional(text("a model file or folder path"), "a model file or folder path"),
                               "the classifier: .keras or .h5 file, or a SavedModel folder", path=True)
    target_layer: str | None = setting(None, optional(text("a layer name"), "a layer name"),
                                       "default: last layer with a spatial 4-D output")
    trust: bool = setting(False, FLAG, "allow Lambda layers (arbitrary code): --trust-model")
    signature: str = setting("serving_default", text("a signature name"),
                             "SavedModel without Keras metadata: the signature to run (--signature)")
    output: str | int | None = setting(None, optional(output_name(), "an output name, an output index or null"),
                                       "null: the only output | name or index of the classification head (--output)")


@dataclass(frozen=True)
class Data:
    """``data:`` the labelled images, the class order and how pixels are scaled for the model."""

    path: str | None = setting(None, optional(text("a folder or manifest path"), "a folder or manifest path"),
                               "folder of class subfolders, or CSV/parquet manifest", path=True)
    classes: str | None = setting(None, optional(text("a text file path"), "a text file path"),
                                  "text file, one class per line, model output order", path=True)
    preprocess: str = setting("none", choice(*PREPROCESS),
                              "none: RGB 0..255 | unit: 0..1 | symmetric: -1..1 | imagenet: mean/std | "
                              "tf: -1..1 | torch: mean/std | caffe: BGR minus ImageNet means")
    max_pixels: int = setting(89_478_485, POSITIVE_INT, "larger images are refused (decompression-bomb guard)")


@dataclass(frozen=True)
class Run:
    """``run:`` limits of the whole run."""

    budget: str | float | None = setting(None, DURATION, "wall time for the run, e.g. 45m: the attribution is "
                                         "planned to fit (audit.stages.plan); null: no limit (--budget)")


@dataclass(frozen=True)
class Predict:
    """``predict:`` batching of the prediction pass over the whole dataset."""

    batch_size: int = setting(64, POSITIVE_INT, "images per model call")
    partition_size: int = setting(512, POSITIVE_INT, "images per Dask task")


@dataclass(frozen=True)
class Select:
    """``select:`` which images are explained: errors, low-margin correct ones and contrast images."""

    margin: float = setting(0.15, FRACTION, "correct but top-1 minus top-2 probability below this: low confidence")
    max_per_pair: int = setting(200, POSITIVE_INT, "cap of selected images per confusion pair")
    contrast_per_class: int = setting(30, NON_NEGATIVE_INT,
                                      "correctly classified images of each predicted class, for contrast")
    pair: str | None = setting(None, optional(pair(), pair().describe()),
                               "\"true:predicted\" restricts the audit to one confusion pair")


@dataclass(frozen=True)
class Attribution:
    """``attribution:`` the attribution methods, their parameters and batching."""

    methods: tuple[str, ...] = setting(("gradcam", "integrated_gradients", "occlusion"), methods(),
                                       "the first one's maps drive discovery")
    params: Any = setting({}, method_params(),
                          "per method: {occlusion: {patch: 8}, integrated_gradients: {steps: 16}}", mapping=True)
    batch_size: int = setting(32, POSITIVE_INT, "model inputs per model call: the memory bound")
    partition_size: int = setting(256, POSITIVE_INT, "images per Dask task")
    precision: str = setting("float32", choice("float32", "mixed_float16"),
                             "mixed_float16: layers compute in float16 (for GPUs; slower on CPUs)")
    sample_per_pair: int | None = setting(16, optional(POSITIVE_INT, "a positive int or null"),
                                          "costly methods (measured) explain at most this many images per pair; "
                                          "null: all")
    sample_total: int | None = setting(32, optional(POSITIVE_INT, "a positive int or null"),
                                       "... and at most this many in all, most suspicious pairs first; null: no cap")


@dataclass(frozen=True)
class Discovery:
    """``discovery:`` features and clustering that turn selected images into candidate findings."""

    grid: int = setting(16, integer(1, 64), "spatial features: positive map pooled to grid x grid")
    pca_components: int = setting(16, POSITIVE_INT, "semantic features: PCA of attention-pooled activations")
    semantic_weight: float = setting(0.5, FRACTION, "share of the semantic block in the squared feature distance")
    neighbors: int = setting(10, integer(2), "kNN graph for spectral clustering")
    max_clusters: int = setting(6, POSITIVE_INT, "largest k the eigengap may choose")
    min_cluster_size: int = setting(4, integer(2), "smallest finding")
    min_pair_size: int = setting(4, integer(2), "pairs with fewer selected images are not clustered")
    density: bool = setting(True, FLAG, "also cluster with HDBSCAN (small tight groups)")
    max_overlap: float = setting(0.5, FRACTION,
                                 "a candidate overlapping a kept finding more than this (share) is dropped")


@dataclass(frozen=True)
class Verify:
    """``verify:`` intervention tests (occlusion, transplant) of the best findings' cues."""

    enabled: bool = setting(True, FLAG, "test the best findings by intervention")
    max_findings: int = setting(3, NON_NEGATIVE_INT, "the best-scored findings are tested by intervention")
    samples: int = setting(8, integer(2), "members occluded / clean images pasted onto, per round")
    max_samples: int = setting(32, integer(2), "at most this many of each per finding")
    max_se: float = setting(0.1, number(0, low_open=True, text="a number > 0"),
                            "a test stops once its lift's standard error is this small (or conclusive)")
    max_area: float = setting(0.2, number(0, 1, low_open=True, text="a float in (0, 1]"),
                              "largest top-attributed region, as a share of the image")
    budget: float = setting(0.3, number(0, low_open=True, text="a number > 0"),
                            "at most this many model passes per attributed image, in all")
    properties: bool = setting(True, FLAG, "also test image-property (global) cues: blur, colour cast, ...")
    min_property_lift: float = setting(0.5, FRACTION,
                                       "a property cue is confirmed when its shift beats the placebo by this")
    min_effect: float = setting(1.0, number(0, low_open=True, text="a number > 0"),
                                "a property is a candidate cue when members and clean images differ by this many SDs")


@dataclass(frozen=True)
class Strategies:
    """``strategies:`` the audit of correct predictions: which cues each class relies on."""

    enabled: bool = setting(True, FLAG, "also audit correct predictions: what each class relies on")
    max_per_class: int = setting(200, POSITIVE_INT, "correct predictions clustered per class (stratified by confidence)")
    min_focus: float = setting(0.3, FRACTION, "a candidate cue is compact: members' mean focus at least this")
    max_tested: int = setting(4, NON_NEGATIVE_INT, "strategy candidates tested by intervention, best first")
    min_lift: float = setting(0.3, FRACTION,
                              "kept when hiding and pasting the region both beat a random region by this")
    min_gap: float = setting(0.15, FRACTION,
                             "and when the class's accuracy without the cue is this much lower (or it explains errors)")


@dataclass(frozen=True)
class Link:
    """``link:`` findings that share a cue, and the cue's slice of the whole data set."""

    enabled: bool = setting(True, FLAG, "link findings that share a cue and measure the cue's slice on all images")
    min_share: float = setting(0.5, FRACTION, "same cue: at least this share of a finding's members carry it")
    max_missing_share: float = setting(0.3, FRACTION,
                                       "missing cue: at most this share of a group of the cue's class carry it")


SPEARMAN = number(-1, 1, text="a number in [-1, 1]")


@dataclass(frozen=True)
class Trust:
    """``trust:`` faithfulness, sanity checks and agreement of the attribution maps."""

    enabled: bool = setting(True, FLAG, "faithfulness, sanity checks and agreement of the maps")
    methods: tuple[str, ...] | None = setting(None, optional(methods(), lambda: "null or " + methods().describe()),
                                              "null: every attribution method; else a subset of attribution.methods")
    sample: int = setting(32, POSITIVE_INT,
                          "attributed images for deletion/insertion curves (seeded sample; 12 flipped between runs)")
    steps: int = setting(8, integer(2), "deletion/insertion steps: fractions 0, 1/steps, ..., 1 of the pixels")
    random_maps: int = setting(2, POSITIVE_INT, "uniform random maps (one seed each): the faithfulness baseline")
    sanity_sample: int = setting(8, NON_NEGATIVE_INT,
                                 "at most this many images of that sample for the sanity checks (once per audit)")
    sanity_budget: float = setting(0.1, number(0, low_open=True, text="a number > 0"),
                                   "... and at most this share of attribute's work: images x (steps + 1) re-explained")
    randomization_steps: int = setting(5, POSITIVE_INT,
                                       "cascading randomization: at most this many steps, top layers first")
    grid: int = setting(16, integer(2, 64), "agreement: maps area-pooled to grid x grid cells before rank correlation")
    max_spearman: float = setting(0.5, SPEARMAN,
                                  "sanity: |Spearman| of fully randomized maps to the originals below this")
    max_random_logit_spearman: float = setting(0.8, SPEARMAN,
                                               "sanity: |Spearman| of maps for a random other class below this")
    min_margin: float = setting(0.0, number(text="a number"),
                                "faithful: deletion and insertion AUC beat random maps' by more than this")
    min_agreement: float = setting(0.3, SPEARMAN,
                                   "a finding's maps agree: mean Spearman between methods (positive maps) >= this")
    min_lift: float = setting(0.1, SPEARMAN, "a cue is confirmed: conclusive occlusion and transplant lifts >= this")
    min_size: int = setting(8, POSITIVE_INT,
                            "smaller findings (or verified on fewer images) cannot be trusted high nor found")


@dataclass(frozen=True)
class Gates:
    """``gates:`` thresholds whose breach fails the run (exit 1); null: the gate is off."""

    max_error_rate: float | None = setting(None, optional(FRACTION, "a float in [0, 1] or null"),
                                           "fail when 1 - accuracy exceeds this")
    max_finding_score: float | None = setting(None, optional(number(text="a number"), "a number or null"),
                                              "fail when any finding (not suppressed) scores above this")
    max_new_finding_score: float | None = setting(
        None, optional(number(text="a number"), "a number or null"),
        "fail when a new finding, not acknowledged or suppressed, scores above this")
    max_pair_error_rate_increase: float | None = setting(
        None, optional(FRACTION, "a float in [0, 1] or null"),
        "fail when a pair's error rate rises more than this over the baseline")
    min_verification_lift: float | None = setting(
        None, optional(number(0, 1, low_open=True, text="a float in (0, 1]"), "a float in (0, 1] or null"),
        "fail when a finding (not suppressed) is verified with at least this lift")
    max_unreadable_rate: float | None = setting(0.05, optional(FRACTION, "a float in [0, 1] or null"),
                                                "fail when more than this share of the images cannot be read")
    soundness: tuple[str, ...] = setting((), Check(lambda v: isinstance(v, (list, tuple)) and all(
        c in SOUNDNESS_CHECKS for c in v), "a list of: " + ", ".join(SOUNDNESS_CHECKS)),
        "soundness checks whose warning fails the run, e.g. [chance, class_order]")


@dataclass(frozen=True)
class Soundness:
    """``soundness:`` warnings about the audit itself (near-chance accuracy, class order, unreadable share)."""

    chance_margin: float = setting(0.1, FRACTION, "warn when accuracy is within this of the largest class's share")
    uniform_ratio: float = setting(1.5, number(1, text="a number >= 1"),
                                   "warn when the mean top probability is below this / number of classes")
    class_order_gain: float = setting(0.2, number(0, 1, low_open=True, text="a float in (0, 1]"),
                                      "warn when renaming the outputs raises accuracy by this much")
    max_unreadable_rate: float = setting(0.05, FRACTION, "warn when more than this share of images is unreadable")
    min_clusterable_share: float = setting(0.5, FRACTION,
                                           "warn when fewer selected images sit in pairs large enough to cluster")


@dataclass(frozen=True)
class Baseline:
    """``baseline:`` the previous run whose findings new ones are matched to, and the matching tolerances."""

    run_dir: str | None = setting(None, optional(text("a run folder path"), "a run folder path, \"latest\" or null"),
                                  "previous run folder (--baseline); \"latest\": newest other run in the history",
                                  path=True)
    tolerance: float = setting(0.15, FRACTION, "cue centres at most this far apart (fraction of the image) match ...")
    focus_tolerance: float = setting(0.5, number(0, text="a number >= 0"),
                                     "... when their focus differs by at most this (|log2 ratio|)")
    min_overlap: float = setting(0.5, number(0, 1, low_open=True, text="a float in (0, 1]"),
                                 "or members overlapping at least this much (Jaccard) match")


@dataclass(frozen=True)
class Triage:
    """``triage:`` the file that acknowledges or suppresses finding IDs."""

    path: str | None = setting(None, optional(text("a triage YAML file path"), "a triage YAML file path or null"),
                               "triage.yaml acknowledging / suppressing finding IDs (--triage)", path=True)


@dataclass(frozen=True)
class History:
    """``history:`` the parquet file with one row per run and confusion pair, for trends."""

    path: str | None = setting("auto", optional(text("a parquet file path"), "\"auto\", a parquet file path or null"),
                               "history.parquet; auto: in the run folder's parent; null: no history", path=True)


@dataclass(frozen=True)
class Demo:
    """``demo:`` the embedded synthetic scenario (``audit demo``)."""

    rail_rate: float = setting(0.87, FRACTION,
                               "share of bathroom training images with rails (audit demo --rail-rate)")


@dataclass(frozen=True)
class Dask:
    """``dask:`` where the task graph runs."""

    scheduler: str | None = setting(None, optional(text("a scheduler address"),
                                                   "null (local) or a scheduler address such as tcp://host:8786"),
                                    "null: local threads; \"tcp://host:8786\": a distributed cluster")
    workers: int = setting(2, POSITIVE_INT, "local threads")


@dataclass(frozen=True)
class Report:
    """``report:`` layout, size budget and templates of the HTML report."""

    exemplars: int = setting(6, POSITIVE_INT, "exemplar images per finding")
    layout: str = setting("single", Check(lambda v: v in ("single", "folder"), "single or folder"),
                          "single: one self-contained index.html | folder: index.html + assets/")
    max_bytes: int = setting(10_000_000, integer(1, text="a positive int (bytes)"),
                             "size budget of the single-file report (the gallery's thumbnails and image views "
                             "fill what the rest leaves); a warning line when exceeded")
    max_image_views: int = setting(300, NON_NEGATIVE_INT,
                                   "single layout: at most this many gallery images with embedded overlays, "
                                   "within max_bytes (folder: all)")
    templates: str | None = setting(None, optional(text("a folder path"), "a folder path or null"),
                                    "folder of template overrides searched before the shipped templates/",
                                    path=True)
    url: str | None = setting(None, optional(text("a URL"), "a URL or null"),
                              "where the report is published (absolute link in summary.md and summary.json)")
    summary_format: str = setting("md", choice("md", "slack"),
                                  "md: summary.md with tables | slack: no tables, for chat")


@dataclass(frozen=True)
class Internals:
    """``internals:`` the look inside the model (activation maps, channels, patches, visualizations)."""

    enabled: bool = setting(True, FLAG, "look inside the model (audit.internals), for the top findings")
    findings: int = setting(3, NON_NEGATIVE_INT, "the best-ranked findings get a \"Model internals\" entry")
    layers: tuple[str, ...] | None = setting(None, optional(names("layer names"), "null or a non-empty list of layer names"),
                                             "activation-map layers; default: n_layers spread shallow to deep")
    n_layers: int = setting(3, POSITIVE_INT, "activation-map layers when layers is null")
    channels: int = setting(8, POSITIVE_INT, "channels shown per layer in activation maps, by attribution")
    exemplars: int = setting(2, NON_NEGATIVE_INT, "a finding's exemplars shown as activation maps")
    finding_channels: int = setting(3, POSITIVE_INT, "target-layer channels most attributed in a finding's cue area")
    max_members: int = setting(64, POSITIVE_INT, "members used to rank those channels")
    patches: int = setting(9, POSITIVE_INT, "maximally activating dataset patches per channel")
    max_images: int = setting(2000, POSITIVE_INT, "audit images searched for patches (a seeded sample beyond this; "
                                                  "predict's channel maxima pick the few the model scans)")
    steps: int = setting(128, POSITIVE_INT, "gradient-ascent steps (filter and class visualization)")
    learning_rate: float = setting(0.05, number(0, 1, low_open=True, text="a number in (0, 1]"),
                                   "step, as a share of the input range (gradient normalised per image)")
    jitter: int = setting(4, NON_NEGATIVE_INT, "random shift of up to this many input pixels per step")
    blur_every: int = setting(4, NON_NEGATIVE_INT, "Gaussian blur every this many steps (0: never)")
    blur_sigma: float = setting(0.5, number(0, 10, text="a number in [0, 10]"),
                                "in input pixels, filter visualization")
    class_blur_sigma: float = setting(1.0, number(0, 10, text="a number in [0, 10]"),
                                      "in input pixels, class visualization (a whole-model objective needs more)")
    octaves: int = setting(3, POSITIVE_INT, "multiscale: resolutions, ending at the input size")
    octave_scale: float = setting(1.4, number(1, 4, text="a number in [1, 4]"), "ratio between octaves")
    polish: float = setting(0.25, number(0, 1, high_open=True, text="a number in [0, 1)"),
                            "filter visualization: last share of the steps, no jitter, step and blur -> 0")
    l2: float = setting(0.01, number(0, text="a non-negative number"),
                        "class visualization: S_c(I) - l2 * ||I||^2 (I in half-range units)")
    batch_size: int = setting(64, POSITIVE_INT, "images per model call (ascent batches, patch scan)")


@dataclass(frozen=True)
class Settings:
    """Every setting of a run; ``audit.config.Config`` adds where the values came from."""

    run_id: str | None = setting(None, optional(run_id(), run_id().describe()), "default: UTC timestamp")
    out: str | None = setting(None, optional(text("a folder path"), "a folder path"),
                              "run folder; default reports/<run_id>", path=True)
    seed: int = setting(0, NON_NEGATIVE_INT, "seeds every sample the audit draws")
    run: Run = section(Run)
    model: Model = section(Model)
    data: Data = section(Data)
    predict: Predict = section(Predict)
    select: Select = section(Select)
    attribution: Attribution = section(Attribution)
    discovery: Discovery = section(Discovery)
    verify: Verify = section(Verify)
    strategies: Strategies = section(Strategies)
    link: Link = section(Link)
    trust: Trust = section(Trust)
    gates: Gates = section(Gates)
    soundness: Soundness = section(Soundness)
    baseline: Baseline = section(Baseline)
    triage: Triage = section(Triage)
    history: History = section(History)
    demo: Demo = section(Demo)
    dask: Dask = section(Dask)
    report: Report = section(Report)
    internals: Internals = section(Internals)
