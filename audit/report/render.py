"""Render the HTML report of a finished run folder from its artifacts.

``render(run_dir)`` reads only the run folder (``audit.artifacts``) and the
original images (``audit.data``); it never imports TensorFlow, so any run can be
re-rendered on a machine without it. Output: ``run_dir/index.html`` plus PNG
pictures in ``run_dir/assets/`` referenced by relative paths (works offline).

Every artifact is optional except that a report without ``run.json`` and
``summary.json`` says little: a missing or unreadable artifact is listed in a
notice at the top of the page and its sections are left out.

Asset names never contain class or file names: ``row-<row>-image.png``,
``row-<row>-overlay.png`` (``row`` = manifest row id), ``<finding>-montage.png``,
``<finding>-mean.png``, ``<finding>-eigenvalues.png`` and
``<finding>-verification.png`` (finding id when it is ``[A-Za-z0-9_-]+``,
otherwise a hash of it), ``confidence.png``, ``embedding.png``.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from audit import artifacts
from audit import data as audit_data
from audit.report import plots
from audit.report.internals import context as internals_section

TEMPLATES = Path(__file__).resolve().parent / "templates"
ASSETS = "assets"
INDEX = "index.html"

MAX_DETAILED_FINDINGS = 25   # findings beyond this rank are listed but get no pictures
MAX_MONTAGE = 32             # cue tiles per finding
MAX_EXEMPLARS = 6
MAX_SLICE_VALUES = 20        # a metadata column with more distinct values is not sliced
REASONS = ("misclassified", "low_confidence", "contrast")
PREFERRED_METHOD = "gradcam"
# manifest columns that are not metadata
_NOT_METADATA = set(audit_data.RESERVED_COLUMNS) | {"path", "label"}
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def render(run_dir: Path) -> Path:
    """Render index.html (and assets/) of a finished run folder from its artifacts; returns the index.html path."""
    run_dir = Path(run_dir)
    run = _Run.load(run_dir)
    assets = _Assets(run_dir / ASSETS)
    context = _context(run, assets)
    context.update(internals_section(run.summary, run_dir, lambda name, png: _embed_png(assets, name, png)))
    html = _environment().get_template("index.html.j2").render(**context)
    out = run_dir / INDEX
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    assets.prune()
    return out


# ---------------------------------------------------------------- loading

@dataclass
class _Run:
    dir: Path
    run: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    predictions: pd.DataFrame | None = None
    selection: pd.DataFrame | None = None
    discovery: pd.DataFrame | None = None
    method: str | None = None
    map_rows: dict[int, int] = field(default_factory=dict)   # row id -> index into maps
    maps: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, run_dir: Path) -> "_Run":
        r = cls(dir=run_dir)
        r.run = r._read(artifacts.RUN_JSON, artifacts.read_json) or {}
        r.summary = r._read(artifacts.SUMMARY, artifacts.read_json) or {}
        r.predictions = r._read(artifacts.PREDICTIONS, artifacts.read_table)
        r.selection = r._read(artifacts.SELECTION, artifacts.read_table)
        r.discovery = r._read(artifacts.DISCOVERY, artifacts.read_table)
        try:
            methods = artifacts.map_methods(run_dir)
        except OSError as exc:
            methods = []
            r.notes.append(f"attribution maps unreadable: {exc}")
        if methods:
            r.method = PREFERRED_METHOD if PREFERRED_METHOD in methods else methods[0]
            try:
                rows, maps = artifacts.read_maps(run_dir, r.method)
                r.maps = maps
                r.map_rows = {int(row): i for i, row in enumerate(rows.tolist())}
            except Exception as exc:  # a broken chunk must not cost the whole report
                r.notes.append(f"{artifacts.MAPS}/{r.method}: unreadable ({type(exc).__name__}: {exc})")
                r.method = None
        else:
            r.notes.append(f"no attribution maps in {artifacts.MAPS}/: findings are shown without pictures")
        return r

    def _read(self, name: str, reader):
        path = self.dir / name
        if not path.exists():
            self.notes.append(f"{name} is missing")
            return None
        try:
            return reader(path)
        except Exception as exc:
            self.notes.append(f"{name} is unreadable ({type(exc).__name__}: {exc})")
            return None

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.run.get("classes") or []]

    @property
    def data_root(self) -> Path:
        return Path(str((self.run.get("data") or {}).get("root") or "."))

    @property
    def input_hw(self) -> tuple[int, int] | None:
        size = (self.run.get("model") or {}).get("input_size")
        try:
            return int(size[0]), int(size[1])
        except (TypeError, ValueError, IndexError):
            return None

    def cam(self, row: int) -> np.ndarray | None:
        i = self.map_rows.get(int(row))
        return None if i is None or self.maps is None else self.maps[i]


class _Assets:
    """The assets folder: hands out file paths and forgets nothing written in this render."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.written: set[str] = set()

    def path(self, name: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written.add(name)
        return self.folder / name

    def has(self, name: str) -> bool:
        return name in self.written

    @staticmethod
    def rel(name: str) -> str:
        return f"{ASSETS}/{name}"

    def prune(self) -> None:
        """Delete PNGs left in assets/ by an earlier render that this one did not write."""
        if not self.folder.is_dir():
            return
        for p in self.folder.glob("*.png"):
            if p.name not in self.written:
                p.unlink(missing_ok=True)


def _embed_png(assets: "_Assets", name: str, png: bytes) -> str:
    """Write PNG bytes into assets/ under ``name`` (``.png`` appended if missing); return its src."""
    name = name if name.endswith(".png") else name + ".png"
    assets.path(name).write_bytes(png)
    return assets.rel(name)


# ---------------------------------------------------------------- helpers

def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["num"] = fmt_num
    env.filters["pct"] = fmt_pct
    env.filters["seconds"] = fmt_seconds
    return env


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_num(x: Any, digits: int = 3) -> str:
    """Numbers compactly (ints as ints, floats with ``digits`` decimals); anything else as text."""
    if x is None:
        return "—"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    v = _finite(x)
    if v is None:
        return "—" if isinstance(x, (float, np.floating)) else str(x)
    if v == 0:
        return f"{0:.{digits}f}"
    if abs(v) >= 1000:
        return f"{v:,.1f}"
    if abs(v) < 10 ** -digits:
        return f"{v:.{digits}g}"
    return f"{v:.{digits}f}"


def fmt_value(x: Any) -> str:
    """A metadata value as a column heading: integral numbers without decimals, others as written."""
    if isinstance(x, str):
        return x
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    v = _finite(x)
    if v is not None and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:g}" if v is not None else str(x)


def fmt_pct(x: Any) -> str:
    v = _finite(x)
    return "—" if v is None else f"{100.0 * v:.1f}%"


def fmt_seconds(x: Any) -> str:
    v = _finite(x)
    if v is None:
        return "—"
    if v < 0.1:
        return f"{1000 * v:.0f} ms"
    if v < 60:
        return f"{v:.1f} s"
    m, s = divmod(v, 60)
    return f"{int(m)} min {s:04.1f} s" if m < 60 else f"{int(m // 60)} h {int(m % 60):02d} min"


def slug(text: str) -> str:
    """Lower-case ASCII letters/digits joined by single '-' (no leading/trailing '-')."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:40].strip("-")


def class_slugs(names: list[str]) -> dict[str, str]:
    """A unique slug per class name; clashes and empty slugs get the class position appended."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for i, name in enumerate(names):
        s = slug(name) or "class"
        if s in used:
            s = f"{s}-{i}"
        while s in used:
            s = f"{s}-x"
        used.add(s)
        out[name] = s
    return out


def pair_anchor(true_slug: str, pred_slug: str) -> str:
    """Id of a confusion-matrix cell; slugs never contain '--', so the id is unambiguous."""
    return f"pair-{true_slug}--{pred_slug}"


def finding_key(fid: str) -> str:
    """A file-name and anchor safe form of a finding id: the id itself when safe, else a hash."""
    fid = str(fid)
    if _SAFE_ID.fullmatch(fid):
        return fid
    return "finding-" + hashlib.sha1(fid.encode("utf-8")).hexdigest()[:10]


def _str_or_none(x: Any) -> str | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    try:
        if pd.isna(x):
            return None
    except (TypeError, ValueError):
        pass
    return str(x)


def _readable_mask(pred: pd.DataFrame) -> pd.Series:
    mask = pd.Series(True, index=pred.index)
    if "predicted" in pred:
        mask &= pred["predicted"].notna()
    if "predicted_idx" in pred:
        mask &= pd.to_numeric(pred["predicted_idx"], errors="coerce").fillna(-1) >= 0
    if "error" in pred:
        mask &= pred["error"].isna()
    return mask


def _correct_mask(pred: pd.DataFrame) -> pd.Series:
    readable = _readable_mask(pred)
    return readable & (pred["predicted"].astype(str) == pred["label"].astype(str))


# ---------------------------------------------------------------- the page

def _context(run: _Run, assets: _Assets) -> dict:
    pred = run.predictions
    if pred is not None:
        missing = [c for c in ("row", "path", "label", "predicted") if c not in pred.columns]
        if missing:
            run.notes.append(f"{artifacts.PREDICTIONS} lacks column(s) {', '.join(missing)}")
            pred = run.predictions = None
    summary = run.summary
    findings_raw = sorted((f for f in summary.get("findings") or [] if isinstance(f, dict)),
                          key=lambda f: math.inf if _finite(f.get("rank")) is None else _finite(f.get("rank")))
    classes = list(run.classes)
    if pred is not None:  # labels the model does not know still get a matrix row
        for name in pd.unique(pred["label"].astype(str)):
            if name not in classes:
                classes.append(name)
    slugs = class_slugs(classes)
    findings = _findings(run, findings_raw, slugs, assets)
    status = str(summary.get("status") or "unknown").lower()
    gates = [{"name": str(g.get("name", "?")), "value": g.get("value"), "threshold": g.get("threshold"),
              "passed": g.get("passed")} for g in summary.get("gates") or [] if isinstance(g, dict)]
    model, data = run.run.get("model") or {}, run.run.get("data") or {}
    return {
        "run_id": str(summary.get("run_id") or run.run.get("run_id") or run.dir.name),
        "created": run.run.get("created"),
        "status": status if status in ("pass", "fail") else "unknown",
        "metrics": _metrics(summary, pred, len(findings)),
        "gates": gates,
        "failed_gates": [g["name"] for g in gates if g["passed"] is False],
        "model_name": Path(str(model["path"])).name if model.get("path") else None,
        "data_name": Path(str(data["path"])).name if data.get("path") else None,
        "headline": findings[0] if findings else None,
        "findings": findings,
        "n_detailed": min(len(findings), MAX_DETAILED_FINDINGS),
        "method": run.method,
        "input_hw": run.input_hw,
        "limits": {"montage": MAX_MONTAGE, "exemplars": MAX_EXEMPLARS, "slice_values": MAX_SLICE_VALUES,
                   "alpha": plots.OVERLAY_ALPHA, "cmap": plots.CMAP, "fraction": plots.CUE_FRACTION},
        "embedding": _embedding(run, assets),
        "confusion": _confusion(pred, classes, slugs, findings) if pred is not None else None,
        "selection": _selection(run.selection),
        "slices": _slices(pred, classes) if pred is not None else None,
        "histogram": _histogram(pred, assets) if pred is not None else None,
        "unreadable": _unreadable(pred) if pred is not None else None,
        "meta": _meta(run.run),
        "notes": run.notes,
    }


def _metrics(summary: dict, pred: pd.DataFrame | None, n_findings: int) -> list[dict]:
    m = dict(summary.get("metrics") or {})
    if pred is not None:  # fall back on the predictions when the summary lacks a metric
        readable = _readable_mask(pred)
        m.setdefault("n_images", len(pred))
        m.setdefault("n_unreadable", int((~readable).sum()))
        if readable.any():
            m.setdefault("accuracy", float(_correct_mask(pred)[readable].mean()))
    return [
        {"label": "images", "value": fmt_num(m.get("n_images")), "key": "n_images", "warn": False},
        {"label": "unreadable", "value": fmt_num(m.get("n_unreadable")), "key": "n_unreadable",
         "warn": bool(_finite(m.get("n_unreadable")))},
        {"label": "accuracy", "value": fmt_pct(m.get("accuracy")), "key": "accuracy", "warn": False},
        {"label": "selected", "value": fmt_num(m.get("n_selected")), "key": "n_selected", "warn": False},
        {"label": "findings", "value": fmt_num(n_findings), "key": "n_findings", "warn": False},
    ]


# ---------------------------------------------------------------- findings

def _findings(run: _Run, raw: list[dict], slugs: dict[str, str], assets: _Assets) -> list[dict]:
    pred = run.predictions
    by_row = pred.set_index(pred["row"].astype(int), drop=False) if pred is not None else None
    path_to_row: dict[str, int] | None = None
    image_errors: dict[int, str] = {}
    used_keys: set[str] = set()
    out = []
    for n, f in enumerate(raw):
        fid = str(f.get("id") or f"finding-{n + 1}")
        key = finding_key(fid)
        if key in used_keys:
            key = f"{key}-{n + 1}"
        used_keys.add(key)
        members = [str(p) for p in f.get("members") or []]
        rows = [int(r) for r in f.get("rows") or [] if _finite(r) is not None]
        if len(rows) != len(members):
            if path_to_row is None and pred is not None:
                path_to_row = {}
                for p, r in zip(pred["path"].astype(str), pred["row"].astype(int)):
                    path_to_row.setdefault(p, int(r))
            if members and path_to_row is not None:
                rows = [path_to_row.get(p, -1) for p in members]
            elif rows and not members and by_row is not None:
                members = [str(by_row.at[r, "path"]) if r in by_row.index else "?" for r in rows]
        member_row = dict(zip(members, rows))
        exemplar_rows = []
        for p in f.get("exemplars") or []:
            r = member_row.get(str(p))
            if r is None and path_to_row is not None:
                r = path_to_row.get(str(p))
            if r is not None and r >= 0 and r not in exemplar_rows:
                exemplar_rows.append(r)
        exemplar_rows = exemplar_rows[:MAX_EXEMPLARS]
        true_label = str(f.get("true_label", ""))
        predicted_label = str(f.get("predicted_label", ""))
        view = {
            "id": fid, "anchor": key, "rank": f.get("rank", n + 1),
            "true_label": true_label, "predicted_label": predicted_label,
            "pair_anchor": (pair_anchor(slugs[true_label], slugs[predicted_label])
                            if true_label in slugs and predicted_label in slugs else None),
            "size": f.get("size", len(members)), "n_errors": f.get("n_errors"),
            "score": f.get("score"), "coherence": f.get("coherence"),
            "support": f.get("support"), "causal": f.get("causal"),
            "verification": _verification(f.get("verification")),
            "detailed": n < MAX_DETAILED_FINDINGS,
            "montage": None, "mean": None, "exemplars": [], "notes": [],
            "members": [], "eigen": None, "verify_plot": None,
        }
        for p, r in zip(members, rows):
            info = by_row.loc[r] if by_row is not None and r in by_row.index else None
            view["members"].append({
                "row": r, "path": p,
                "predicted": _str_or_none(info["predicted"]) if info is not None else None,
                "confidence": info.get("confidence") if info is not None else None,
                "exemplar": r in exemplar_rows,
            })
        if view["detailed"]:
            _finding_pictures(run, view, rows, members, exemplar_rows, by_row, image_errors, assets)
            _finding_plots(view, f, assets)
        out.append(view)
    return out


def _finding_pictures(run: _Run, view: dict, rows: list[int], members: list[str], exemplar_rows: list[int],
                      by_row: pd.DataFrame | None, image_errors: dict[int, str], assets: _Assets) -> None:
    """Cue montage, mean map and exemplar overlays of one finding (written to assets/)."""
    if run.maps is None:
        view["notes"].append("no attribution maps stored: no pictures")
    paths = dict(zip(rows, members))
    for r in exemplar_rows:
        if r not in paths and by_row is not None and r in by_row.index:
            paths[r] = str(by_row.at[r, "path"])

    def image(r: int) -> np.ndarray | None:
        if r in image_errors:
            return None
        try:
            return audit_data.read_image(audit_data.resolve(run.data_root, paths[r]))
        except Exception as exc:  # moved, deleted or undecodable since the run
            image_errors[r] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return None

    tiles: list[np.ndarray] = []
    exemplar_set = set(exemplar_rows)
    order = list(dict.fromkeys([r for r in rows if r >= 0] + exemplar_rows))
    member_set = set(rows)
    for r in order:
        want_tile = len(tiles) < MAX_MONTAGE and r in member_set
        want_exemplar = r in exemplar_set
        if not (want_tile or want_exemplar):
            continue
        cam = run.cam(r)
        img = image(r) if (cam is not None or want_exemplar) else None
        box = plots.peak_box(cam) if cam is not None else None
        if img is not None and cam is not None and want_tile:
            tiles.append(plots.crop_tile(img, cam.shape, box))
        if want_exemplar:
            view["exemplars"].append(_exemplar(run, r, paths.get(r, "?"), img, cam, box, by_row,
                                               image_errors.get(r), assets))
    if tiles:
        name = f"{view['anchor']}-montage.png"
        plots.save_png(plots.montage(tiles), assets.path(name))
        w, h = plots.montage_shape(len(tiles))
        view["montage"] = {"src": assets.rel(name), "width": w, "height": h, "n": len(tiles)}
    total, n_maps, no_map = None, 0, 0
    for r in dict.fromkeys(r for r in rows if r >= 0):  # running sum: members may be many
        cam = run.cam(r)
        if cam is None:
            no_map += 1
        elif total is None or cam.shape == total.shape:
            total = plots.normalise(cam) if total is None else total + plots.normalise(cam)
            n_maps += 1
    if total is not None:
        name = f"{view['anchor']}-mean.png"
        plots.mean_map(total / n_maps, assets.path(name), n_maps)
        view["mean"] = {"src": assets.rel(name), "n": n_maps}
    if run.maps is not None and no_map:
        view["notes"].append(f"{no_map} member(s) have no stored {run.method} map")
    failed = [r for r in order if r in image_errors]
    if failed:
        view["notes"].append(f"{len(failed)} member image(s) could not be read now (moved or deleted?)")


def _verification(raw: Any) -> dict | None:
    """The finding's causal tests as table rows, or ``None`` when it has none."""
    if not isinstance(raw, dict):
        return None
    if not raw.get("verified"):
        return {"verified": False, "reason": _str_or_none(raw.get("reason")) or "not verified", "tests": []}
    tests = []
    for key, label, what in (("occlusion", "occlusion", "members leaving the predicted class"),
                             ("transplant", "transplant", "clean images flipped to the predicted class")):
        t = raw.get(key)
        if not isinstance(t, dict):
            continue
        tests.append({"key": key, "label": label, "what": what, "n": t.get("n"), "flipped": t.get("flipped"),
                      "rate": _finite(t.get("rate")), "random_flipped": t.get("random_flipped"),
                      "random_rate": _finite(t.get("random_rate")), "lift": _finite(t.get("lift")),
                      "se": _finite(t.get("se"))})
    return {"verified": True, "reason": _str_or_none(raw.get("reason")), "tests": tests,
            "members_tested": raw.get("members_tested"), "mean_area": _finite(raw.get("mean_area"))}


def _finding_plots(view: dict, raw: dict, assets: _Assets) -> None:
    """The pair's eigenvalue plot and the verification bars of one finding (written to assets/)."""
    values = [v for v in (_finite(x) for x in raw.get("eigenvalues") or []) if v is not None]
    k = raw.get("eigengap_k")
    k = int(k) if _finite(k) is not None else None
    if len(values) >= 2:
        name = f"{view['anchor']}-eigenvalues.png"
        plots.eigenvalues(values, k, assets.path(name))
        view["eigen"] = {"src": assets.rel(name), "k": k, "n": len(values)}
    v = view["verification"]
    if v and v["verified"] and any(t["rate"] is not None for t in v["tests"]):
        name = f"{view['anchor']}-verification.png"
        plots.verification_bars([(t["label"], t["rate"], t["random_rate"]) for t in v["tests"]], assets.path(name))
        view["verify_plot"] = {"src": assets.rel(name)}


def _exemplar(run: _Run, r: int, path: str, img: np.ndarray | None, cam: np.ndarray | None,
              box, by_row: pd.DataFrame | None, error: str | None, assets: _Assets) -> dict:
    info = by_row.loc[r] if by_row is not None and r in by_row.index else None
    ex = {"row": r, "path": path, "image": None, "overlay": None, "width": None, "height": None,
          "label": _str_or_none(info["label"]) if info is not None else None,
          "predicted": _str_or_none(info["predicted"]) if info is not None else None,
          "confidence": info.get("confidence") if info is not None else None,
          "margin": info.get("margin") if info is not None else None,
          "error": error}
    if img is None:
        if error is None and info is not None:
            ex["error"] = _str_or_none(info.get("error"))
        return ex
    hw = cam.shape if cam is not None else (run.input_hw or img.shape[:2])
    thumb = plots.thumbnail(img, hw)
    ex["height"], ex["width"] = thumb.shape[:2]
    name = f"row-{r}-image.png"
    if not assets.has(name):
        plots.save_png(thumb, assets.path(name))
    ex["image"] = assets.rel(name)
    if cam is not None:
        name = f"row-{r}-overlay.png"
        if not assets.has(name):
            plots.save_png(plots.overlay(thumb, cam, box=box), assets.path(name))
        ex["overlay"] = assets.rel(name)
    return ex


def _embedding(run: _Run, assets: _Assets) -> dict | None:
    d = run.discovery
    if d is None or d.empty or not {"x", "y", "cluster"} <= set(d.columns):
        return None
    x = pd.to_numeric(d["x"], errors="coerce").to_numpy(float)
    y = pd.to_numeric(d["y"], errors="coerce").to_numpy(float)
    if not (np.isfinite(x) & np.isfinite(y)).any():
        return None
    cluster = pd.to_numeric(d["cluster"], errors="coerce").fillna(-1).astype(int).to_numpy()
    contrast = (d["is_contrast"].fillna(False).astype(bool).to_numpy() if "is_contrast" in d
                else np.zeros(len(d), bool))
    labels: dict[int, str] = {}
    if "finding_id" in d:
        for c, fid in zip(cluster, d["finding_id"]):
            s = _str_or_none(fid)
            if c >= 0 and s and c not in labels:
                labels[int(c)] = s
    name = "embedding.png"
    plots.embedding_scatter(x, y, cluster, contrast, labels, assets.path(name))
    return {"src": assets.rel(name), "n": len(d), "n_clusters": len(set(cluster[cluster >= 0].tolist())),
            "n_contrast": int(contrast.sum())}


# ---------------------------------------------------------------- tables

def _confusion(pred: pd.DataFrame, classes: list[str], slugs: dict[str, str], findings: list[dict]) -> dict:
    readable = _readable_mask(pred)
    labels = pred["label"].astype(str)
    predicted = pred["predicted"].astype(str)
    columns = list(classes)
    for name in pd.unique(predicted[readable]):
        if name not in slugs:  # a prediction outside the class list (should not happen)
            slugs.update(class_slugs(columns + [name]))
            columns.append(name)
    counts = pd.crosstab(labels[readable], predicted[readable])
    unreadable = labels[~readable].value_counts()
    by_pair: dict[tuple[str, str], list[dict]] = {}
    for f in findings:
        by_pair.setdefault((f["true_label"], f["predicted_label"]), []).append(f)
    rows = []
    for t in classes:
        n = int(counts.loc[t].sum()) if t in counts.index else 0
        cells = []
        for p in columns:
            c = int(counts.at[t, p]) if t in counts.index and p in counts.columns else 0
            rate = c / n if n else 0.0
            diag = t == p
            alpha = 0.0 if c == 0 else 0.10 + 0.75 * rate
            rgb = "47, 125, 79" if diag else "192, 57, 43"
            cells.append({
                "count": c, "rate": rate, "diag": diag, "pred": p,
                "id": pair_anchor(slugs[t], slugs[p]) if (c and not diag) else None,
                "style": f"background-color: rgba({rgb}, {alpha:.3f})" if c else "",
                "dark": alpha > 0.55,
                "findings": by_pair.get((t, p), []) if not diag else [],
            })
        rows.append({"label": t, "n": n, "cells": cells, "unreadable": int(unreadable.get(t, 0)),
                     "recall": (int(counts.at[t, t]) / n) if n and t in counts.columns else None})
    return {"columns": columns, "rows": rows, "vertical": len(columns) > 8,
            "has_unreadable": bool((~readable).any()),
            "col_totals": [int(counts[p].sum()) if p in counts.columns else 0 for p in columns]}


def _selection(sel: pd.DataFrame | None) -> dict | None:
    if sel is None or sel.empty or "reason" not in sel.columns:
        return None
    if "true_label" in sel.columns and "pair_label" in sel.columns:
        true, other = sel["true_label"].astype(str), sel["pair_label"].astype(str)
        pair = true + " -> " + other
        sides = dict(zip(pair, zip(true, other)))
    else:
        pair = sel["pair"].astype(str) if "pair" in sel.columns else sel["label"].astype(str) + " -> ?"
        sides = {}
    reason = sel["reason"].astype(str)
    reasons = [r for r in REASONS if (reason == r).any()] + sorted(set(reason) - set(REASONS))
    table = pd.crosstab(pair, reason)
    table = table.loc[table.sum(axis=1).sort_values(ascending=False, kind="stable").index]
    rows = [{"pair": p, "sides": sides.get(p),
             "counts": [int(table.at[p, r]) if r in table.columns else 0 for r in reasons],
             "total": int(table.loc[p].sum())} for p in table.index]
    return {"reasons": reasons, "rows": rows,
            "totals": [int((reason == r).sum()) for r in reasons], "total": len(sel)}


def _value_key(v: Any):
    if v is None:
        return (2, 0.0, "")
    f = _finite(v) if not isinstance(v, str) else None
    return (0, f, "") if f is not None else (1, 0.0, str(v))


def _slices(pred: pd.DataFrame, classes: list[str]) -> dict:
    readable = _readable_mask(pred)
    correct = _correct_mask(pred)
    labels = pred["label"].astype(str)
    tables, skipped = [], []
    for col in [c for c in pred.columns if c not in _NOT_METADATA]:
        series = pred[col]
        try:
            n_distinct = series.nunique(dropna=False)
        except TypeError:  # lists, arrays, dicts: not a slicing key
            skipped.append({"column": col, "why": "not a scalar column"})
            continue
        if n_distinct > MAX_SLICE_VALUES:
            skipped.append({"column": col, "why": f"{n_distinct} distinct values"})
            continue
        missing = series.isna()
        values = sorted({v for v in series[~missing].tolist()}, key=_value_key)
        keys: list[tuple[str, pd.Series]] = [(fmt_value(v), (series == v) & ~missing) for v in values]
        if missing.any():
            keys.append(("(missing)", missing))
        rows = []
        present = set(labels[readable].unique().tolist())
        ordered = [c for c in classes if c in present] + sorted(present - set(classes))
        for label in ordered + [None]:  # None: all labels
            in_label = readable if label is None else readable & (labels == label)
            cells = []
            for _, mask in keys:
                m = in_label & mask
                n = int(m.sum())
                cells.append({"n": n, "acc": float(correct[m].mean()) if n else None})
            n_all = int(in_label.sum())
            rows.append({"label": label, "cells": cells, "n": n_all,
                         "acc": float(correct[in_label].mean()) if n_all else None})
        tables.append({"column": col, "value_names": [k for k, _ in keys], "rows": rows})
    return {"tables": tables, "skipped": skipped}


def _histogram(pred: pd.DataFrame, assets: _Assets) -> dict | None:
    if "confidence" not in pred.columns:
        return None
    readable = _readable_mask(pred)
    if not readable.any():
        return None
    correct = _correct_mask(pred)
    conf = pd.to_numeric(pred["confidence"], errors="coerce")
    name = "confidence.png"
    plots.confidence_histogram(conf[correct].to_numpy(float), conf[readable & ~correct].to_numpy(float),
                               assets.path(name))
    wrong = conf[readable & ~correct]
    return {"src": assets.rel(name), "n_correct": int(correct.sum()), "n_wrong": int(len(wrong)),
            "wrong_confident": int((wrong >= 0.9).sum())}


def _unreadable(pred: pd.DataFrame) -> list[dict]:
    bad = pred[~_readable_mask(pred)]
    errors = bad["error"] if "error" in bad.columns else pd.Series(None, index=bad.index)
    return [{"row": int(r), "path": str(p), "error": _str_or_none(e) or "unreadable"}
            for r, p, e in zip(bad["row"], bad["path"], errors)]


def _meta(run: dict) -> dict:
    model = run.get("model") or {}
    data = run.get("data") or {}
    timings = {k: v for k, v in (run.get("timings") or {}).items()}
    total = sum(v for v in (_finite(t) for t in timings.values()) if v is not None)

    def items(d: dict) -> list[tuple[str, str]]:
        return [(str(k), v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in d.items()]

    return {
        "config": json.dumps(run.get("config") or {}, indent=2, default=str, ensure_ascii=False),
        "versions": items(run.get("versions") or {}),
        "model": items(model),
        "data": items(data),
        "timings": list(timings.items()),
        "total_time": total if timings else None,
        "classes": [str(c) for c in run.get("classes") or []],
    }
