"""Pictures of the report: heat-map overlays, cue montages and matplotlib plots.

Everything here returns pictures and keeps no global state: image composition
(numpy + Pillow) returns uint8 RGB arrays, plots return ``matplotlib.figure.Figure``
objects drawn on an explicit Agg canvas (pyplot is never imported). The report
embeds either through ``audit.report.assets.Assets.image``.

Geometry: attribution maps live at the model's input resolution ``(H, W)``.
Originals are decoded at their own size; a box in map coordinates is mapped
onto the original by scaling each axis (the model input is the original
resized without keeping the aspect ratio), so crops come from the full-
resolution original but cover exactly what the model saw.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from PIL import Image, ImageDraw

TILE = 128            # px, side of a montage tile and the box a thumbnail fits in
GAP = 2               # px between montage tiles
MONTAGE_COLS = 8      # tiles per montage row (fewer when there are fewer members)
CUE_FRACTION = 1 / 3  # side of the cue patch relative to the shorter map side
OVERLAY_ALPHA = 0.45
CMAP = "jet"
BACKGROUND = (255, 255, 255)



# ---------------------------------------------------------------- geometry

def normalise(cam: np.ndarray) -> np.ndarray:
    """Map ``cam`` (any shape) min-max scaled to float32 [0, 1] for display; NaN/inf count as 0, a flat map
    gives zeros."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.size == 0:
        return cam
    finite = np.isfinite(cam)
    if not finite.all():   # nan_to_num costs 5x more on the (usual) map without any
        cam = np.where(finite, cam, np.float32(0.0))
    lo, hi = float(cam.min()), float(cam.max())
    if not hi > lo:
        return np.zeros_like(cam)
    return (cam - lo) / (hi - lo)


def peak_box(cam: np.ndarray, fraction: float = CUE_FRACTION) -> tuple[int, int, int, int]:
    """Square box ``(top, left, bottom, right)`` (map pixels, end exclusive) around the maximum of ``cam``.

    ``cam`` is one map ``[h, w]``; the side is ``fraction`` of its shorter side (at least 1
    pixel); the box is shifted to stay inside the map. A flat map gives the centred box.
    """
    cam = np.asarray(cam, dtype=np.float32)
    h, w = cam.shape
    side = int(max(1, min(min(h, w), round(min(h, w) * fraction))))
    values = np.where(np.isfinite(cam), cam, -np.inf)
    finite = values[np.isfinite(values)]
    if finite.size and finite.max() > finite.min():
        cy, cx = np.unravel_index(int(np.argmax(values)), cam.shape)
    else:
        cy, cx = h // 2, w // 2
    top = int(np.clip(cy - side // 2, 0, h - side))
    left = int(np.clip(cx - side // 2, 0, w - side))
    return top, left, top + side, left + side


def fit_size(hw: Sequence[int], box: int = TILE) -> tuple[int, int]:
    """(width, height) of a ``hw`` = (H, W) picture scaled to fit a ``box`` x ``box`` square."""
    h, w = int(hw[0]), int(hw[1])
    if h >= w:
        return max(1, round(box * w / h)), box
    return box, max(1, round(box * h / w))


# ---------------------------------------------------------------- tiles

def crop_tile(image: np.ndarray, map_hw: Sequence[int], box: tuple[int, int, int, int],
              tile: int = TILE) -> np.ndarray:
    """Cut the region ``box`` (map coordinates) out of the full-size ``image``, upscaled to ``tile`` x ``tile``.

    ``image``: uint8 RGB ``[ih, iw, 3]`` original; ``map_hw``: the map's ``(h, w)``, each axis
    scaled onto the original's (bicubic); returns uint8 ``[tile, tile, 3]``.
    """
    mh, mw = int(map_hw[0]), int(map_hw[1])
    ih, iw = image.shape[:2]
    top, left, bottom, right = box
    sy, sx = ih / mh, iw / mw
    region = (left * sx, top * sy, right * sx, bottom * sy)
    out = Image.fromarray(image).resize((tile, tile), Image.Resampling.BICUBIC, box=region)
    return np.asarray(out, dtype=np.uint8)


def thumbnail(image: Image.Image, map_hw: Sequence[int], box: int = TILE) -> Image.Image:
    """``image`` (a PIL RGB image) as the model sees it, squashed to the ``map_hw`` = (h, w) aspect, fitted into
    ``box`` px (``fit_size``; bilinear). PIL in and out: a view strip is composed without array round trips."""
    return image.resize(fit_size(map_hw, box), Image.Resampling.BILINEAR)


def _lut(cmap: str) -> np.ndarray:
    """uint8 RGB [256, 3] table of a matplotlib colormap (built per call: no global state)."""
    return (matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def overlay(thumb: np.ndarray, cam: np.ndarray, alpha: float = OVERLAY_ALPHA, cmap: str = CMAP,
            box: tuple[int, int, int, int] | None = None, lut: np.ndarray | None = None) -> np.ndarray:
    """Blend the (per-image min-max normalised) map ``cam`` ``[h, w]`` over ``thumb`` (uint8 RGB, any size).

    ``alpha``: weight (0..1) of the heat map; ``cmap``: a matplotlib colormap name; ``box``:
    outlined in white (map coords); ``lut``: a colour table from ``colour_table(cmap)`` to
    reuse over many overlays. Returns uint8 RGB of ``thumb``'s shape.
    """
    return np.asarray(overlay_image(Image.fromarray(np.ascontiguousarray(thumb)), cam, alpha, cmap, box, lut))


def overlay_image(thumb: Image.Image, cam: np.ndarray, alpha: float = OVERLAY_ALPHA, cmap: str = CMAP,
                  box: tuple[int, int, int, int] | None = None, lut: np.ndarray | None = None) -> Image.Image:
    """``overlay`` on a PIL RGB image ``thumb``, returning one (the report's view strips: no array round trips);
    ``cam``, ``alpha``, ``cmap``, ``box`` and ``lut`` as there."""
    tw, th = thumb.size
    table = _lut(cmap) if lut is None else lut
    heat = table[(normalise(cam) * 255.0 + 0.5).astype(np.uint8)]   # coloured at map resolution,
    heat_img = Image.fromarray(heat).resize((tw, th), Image.Resampling.BILINEAR)  # then scaled (fast)
    out = Image.blend(thumb, heat_img, alpha)
    if box is not None:
        mh, mw = cam.shape
        top, left, bottom, right = box
        sy, sx = th / mh, tw / mw
        rect = (round(left * sx), round(top * sy), max(round(left * sx), round(right * sx) - 1),
                max(round(top * sy), round(bottom * sy) - 1))
        ImageDraw.Draw(out).rectangle(rect, outline=(255, 255, 255), width=1)
    return out


def colour_table(cmap: str = CMAP) -> np.ndarray:
    """The uint8 RGB ``[256, 3]`` colour table of colormap ``cmap`` that ``overlay`` uses, to compute once."""
    return _lut(cmap)


def montage_shape(n: int, cols: int = MONTAGE_COLS, tile: int = TILE, gap: int = GAP) -> tuple[int, int]:
    """(width, height) in px of the montage of ``n`` tiles (``tile`` px square, ``cols`` per row, ``gap`` px)."""
    if n <= 0:
        return 0, 0
    c = min(n, cols)
    r = -(-n // c)
    return c * tile + (c - 1) * gap, r * tile + (r - 1) * gap


def montage(tiles: Sequence[np.ndarray], cols: int = MONTAGE_COLS, gap: int = GAP) -> np.ndarray:
    """``tiles`` (equally sized uint8 RGB) row by row, ``cols`` per row, into one picture with ``gap``-px white
    gaps; no tile raises ``ValueError``."""
    if not tiles:
        raise ValueError("montage of no tiles")
    th, tw = tiles[0].shape[:2]
    c = min(len(tiles), cols)
    r = -(-len(tiles) // c)
    out = np.empty((r * th + (r - 1) * gap, c * tw + (c - 1) * gap, 3), np.uint8)
    # one background row broadcast down: 30x faster than the 3-value tuple pixel by pixel (0.3 ms a view strip)
    out[...] = np.tile(np.asarray(BACKGROUND, np.uint8), (out.shape[1], 1))
    for i, t in enumerate(tiles):
        y, x = divmod(i, c)
        out[y * (th + gap): y * (th + gap) + th, x * (tw + gap): x * (tw + gap) + tw] = t
    return out


# ---------------------------------------------------------------- figures

def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def mean_map(mean01: np.ndarray, n: int, cmap: str = CMAP) -> Figure:
    """The mean ``mean01`` ``[h, w]`` (0..1) of the per-image normalised maps of a finding's ``n`` members, in
    colormap ``cmap``, with a colour bar."""
    fig = _new_figure(2.6, 2.2)
    ax = fig.add_subplot()
    im = ax.imshow(mean01, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"mean of {n} map{'s' if n != 1 else ''}", fontsize=8)
    cbar = fig.colorbar(im, ax=ax, shrink=0.85)
    cbar.ax.tick_params(labelsize=7)
    return fig


def confidence_histogram(correct: np.ndarray, wrong: np.ndarray, bins: int = 20) -> Figure:
    """Histogram of top-1 confidence (0..1, ``bins`` equal bins): ``correct`` vs. ``wrong`` predictions'
    confidences (1-D arrays; non-finite values left out)."""
    fig = _new_figure(6.4, 2.6)
    ax = fig.add_subplot()
    edges = np.linspace(0.0, 1.0, bins + 1)
    for values, colour, label in ((correct, "#2f7d4f", "correct"), (wrong, "#c0392b", "wrong")):
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        ax.hist(values, bins=edges, color=colour, alpha=0.55, label=f"{label} ({len(values)})",
                edgecolor=colour, linewidth=0.8)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("top-1 confidence", fontsize=8)
    ax.set_ylabel("images", fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False)
    return fig


def embedding_scatter(x: np.ndarray, y: np.ndarray, cluster: np.ndarray, is_contrast: np.ndarray,
                      labels: dict[int, str]) -> Figure:
    """2-D embedding of the clustered images: colour = cluster, grey = unclustered, hollow = contrast.

    ``x``, ``y``: float ``[n]`` coordinates (non-finite points left out); ``cluster``: int ``[n]``
    (-1 unclustered); ``is_contrast``: bool ``[n]``; ``labels`` maps a cluster id to the
    text written at its centroid (the finding id).
    """
    fig = _new_figure(5.6, 4.0)
    ax = fig.add_subplot()
    x, y = np.asarray(x, float), np.asarray(y, float)
    cluster = np.asarray(cluster, int)
    is_contrast = np.asarray(is_contrast, bool)
    ok = np.isfinite(x) & np.isfinite(y)
    palette = matplotlib.colormaps["tab10"]
    ids = sorted(c for c in set(cluster[ok].tolist()) if c >= 0)
    colours = {c: palette(i % 10) for i, c in enumerate(ids)}
    for c in [-1] + ids:
        for contrast in (False, True):
            m = ok & (cluster == c) & (is_contrast == contrast)
            if not m.any():
                continue
            col = (0.6, 0.6, 0.6, 1.0) if c < 0 else colours[c]
            if contrast:
                ax.scatter(x[m], y[m], s=18, facecolors="none", edgecolors=[col], linewidths=0.9)
            else:
                ax.scatter(x[m], y[m], s=14, color=[col], alpha=0.85, linewidths=0)
    for c in ids:
        m = ok & (cluster == c)
        text = labels.get(c)
        if text:
            ax.annotate(text, (float(np.median(x[m])), float(np.max(y[m]))), fontsize=7,
                        ha="center", va="bottom", xytext=(0, 7), textcoords="offset points",
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colours[c], "lw": 0.8})
    ax.margins(0.12)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_color("#cccccc")
    return fig


def eigenvalues(values: Sequence[float], k: int | None) -> Figure:
    """The smallest eigenvalues ``values`` (ascending) of a pair's normalised graph Laplacian, with the eigengap
    that chose ``k`` clusters marked between eigenvalues ``k - 1`` and ``k`` (0-based)."""
    values = np.asarray(values, dtype=float)
    fig = _new_figure(3.2, 2.2)
    ax = fig.add_subplot()
    index = np.arange(len(values))
    ax.plot(index, values, "o-", color="#34495e", markersize=3.5, linewidth=1.0)
    if k is not None and 0 < k < len(values):
        ax.axvspan(k - 1, k, color="#e67e22", alpha=0.25, linewidth=0)
        ax.annotate(f"gap: k = {k}", (k - 0.5, float(values[k - 1] + values[k]) / 2), fontsize=7,
                    ha="left", va="center", xytext=(6, 0), textcoords="offset points")
    ax.set_xlabel("index", fontsize=8)
    ax.set_ylabel("eigenvalue", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def verification_bars(tests: Sequence[tuple[str, float | None, float | None]]) -> Figure:
    """Paired horizontal bars per intervention: the rate with the top-attributed region
    against the rate with a random region of the same area (``tests``: (label, rate,
    random_rate); a ``None`` rate is drawn as an empty row)."""
    fig = _new_figure(3.6, 0.8 + 0.55 * len(tests))
    ax = fig.add_subplot()
    y = np.arange(len(tests))[::-1].astype(float)
    top = [t[1] if t[1] is not None else 0.0 for t in tests]
    rnd = [t[2] if t[2] is not None else 0.0 for t in tests]
    ax.barh(y + 0.18, top, height=0.34, color="#c0392b", label="top region")
    ax.barh(y - 0.18, rnd, height=0.34, color="#95a5a6", label="random region")
    for yy, t, a, b in zip(y, tests, top, rnd):
        if t[1] is None:   # the test found nothing to run on: say so rather than draw 0%
            ax.text(0.01, yy, "not run", va="center", fontsize=7, color="#6b7280")
            continue
        ax.text(a + 0.01, yy + 0.18, f"{a:.0%}", va="center", fontsize=7)
        ax.text(b + 0.01, yy - 0.18, f"{b:.0%}", va="center", fontsize=7)
    ax.set_yticks(y, [t[0] for t in tests], fontsize=8)
    ax.set_xlim(0.0, 1.12)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.tick_params(axis="x", labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=7, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2)
    return fig


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> dict:
    """Calibration of top-1 confidence over ``bins`` equal-width bins of [0, 1].

    ``confidence``: float ``[n]`` (non-finite left out); ``correct``: bool ``[n]``. Returns
    ``{"ece", "edges", "count", "accuracy", "confidence"}``: ECE is the count-weighted
    mean of |accuracy - mean confidence| over the bins (empty bins have NaN accuracy
    and confidence and weigh nothing).
    """
    conf = np.asarray(confidence, float)
    ok = np.asarray(correct, bool)
    keep = np.isfinite(conf)
    conf, ok = conf[keep], ok[keep]
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(int)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(index, weights=ok.astype(float), minlength=bins) / count
        mean_conf = np.bincount(index, weights=conf, minlength=bins) / count
    n = int(count.sum())
    gaps = np.where(count > 0, np.abs(np.nan_to_num(acc) - np.nan_to_num(mean_conf)), 0.0)
    ece = float((gaps * count).sum() / n) if n else float("nan")
    return {"ece": ece, "edges": edges, "count": count, "accuracy": acc, "confidence": mean_conf}


def reliability_diagram(cal: dict) -> Figure:
    """Accuracy per confidence bin against the diagonal of perfect calibration, counts below (``cal``: from
    ``reliability``)."""
    fig = _new_figure(4.2, 3.6)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    edges, count = cal["edges"], cal["count"]
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    filled = count > 0
    top.plot([0, 1], [0, 1], "--", color="#888888", linewidth=0.9, label="perfect calibration")
    top.bar(centres[filled], np.nan_to_num(cal["accuracy"][filled]), width=width[filled] * 0.92,
            color="#0b5cad", alpha=0.75, label="accuracy")
    top.bar(centres[filled], np.nan_to_num(cal["confidence"][filled] - cal["accuracy"][filled]),
            bottom=np.nan_to_num(cal["accuracy"][filled]), width=width[filled] * 0.92,
            color="#c0392b", alpha=0.3, label="gap to confidence")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy", fontsize=8)
    top.set_title(f"ECE {cal['ece']:.3f}" if np.isfinite(cal["ece"]) else "ECE —", fontsize=9)
    top.legend(fontsize=7, frameon=False, loc="upper left")
    bottom.bar(centres, count, width=width * 0.92, color="#59636e")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("top-1 confidence", fontsize=8)
    bottom.set_ylabel("images", fontsize=8)
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=3))
    for ax in (top, bottom):
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    return fig


def trend_lines(runs: Sequence[str], series: dict[str, Sequence[float]], ylabel: str) -> Figure:
    """One line per entry of ``series`` (label -> share 0..1 per run) over ``runs`` (run ids, oldest first);
    NaN = absent that night; y axis ``ylabel``, in percent."""
    fig = _new_figure(7.0, 3.0)
    ax = fig.add_subplot()
    x = np.arange(len(runs))
    palette = matplotlib.colormaps["tab10"]
    for i, (label, values) in enumerate(series.items()):
        ax.plot(x, np.asarray(values, float), "o-", color=palette(i % 10), markersize=3.5,
                linewidth=1.2, label=label)
    _run_axis(ax, runs)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylim(bottom=0)
    if series:
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def trend_bars(runs: Sequence[str], counts: Sequence[float], accuracy: Sequence[float]) -> Figure:
    """Findings per run (bars, ``counts``) and ``accuracy`` (0..1, line, right axis) over ``runs`` (run ids)."""
    fig = _new_figure(7.0, 2.6)
    ax = fig.add_subplot()
    x = np.arange(len(runs))
    ax.bar(x, counts, color="#c0392b", alpha=0.7, width=0.6, label="findings")
    ax.set_ylabel("findings", fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _run_axis(ax, runs)
    acc = np.asarray(accuracy, float)
    if np.isfinite(acc).any():
        ax2 = ax.twinx()
        ax2.plot(x, acc, "o-", color="#1a7f37", markersize=3.5, linewidth=1.2)
        ax2.set_ylabel("accuracy", fontsize=8, color="#1a7f37")
        ax2.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax2.tick_params(labelsize=7)
    return fig


def _run_axis(ax, runs: Sequence[str]) -> None:
    x = np.arange(len(runs))
    step = max(1, len(runs) // 12)
    ax.set_xticks(x[::step], [str(r) for r in runs][::step], rotation=30, ha="right", fontsize=7)
    ax.set_xlim(-0.5, len(runs) - 0.5)
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
