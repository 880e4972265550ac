"""One image of the run as the report shows it: original, one overlay per attribution method, top-k.

``strip`` (the view's picture) is shared by the finding exemplars (``image_view``) and
the gallery's per-image view, so an image looks the same wherever it appears (and is
encoded once: asset names are keyed by row, ``view_name``). ``sheet`` packs many
thumbnails into one picture (the gallery's pages, a confusion pair's strip).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from audit.report import plots
from audit.report.assets import Assets
from audit.report.fmt import finite, str_or_none
from audit.report.loading import Run

THUMB = 96      # px, gallery and pair-strip thumbnails (box side)
VIEW = 160      # px, per-image view and exemplars (box side; small originals are not upscaled)
QUALITY = 70    # JPEG quality of thumbnails, sheets and image views: smooth overlays lose nothing visible
TOP_K = 5


def display_hw(run: Run, row: int, img: np.ndarray) -> tuple[int, int]:
    """``(h, w)`` the model saw for prediction row ``row`` of ``run``: its first stored map's shape, else the model
    input, else the decoded image ``img``'s own (uint8 ``[h, w, 3]``)."""
    for method in run.methods:
        hw = run.map_hw(method, row)
        if hw is not None:
            return hw
    return run.input_hw or img.shape[:2]


def _sized(run: Run, row: int, img: np.ndarray, box: int) -> Image.Image:
    box = min(box, max(img.shape[:2]))  # never upscale a small original
    return plots.thumbnail(Image.fromarray(img), display_hw(run, row, img), box)


def thumbnail(run: Run, row: int) -> Image.Image | None:
    """The thumbnail of one image, as the model saw it.

    Parameters
    ----------
    run : Run
        The loaded run folder.
    row : int
        Prediction row id of the image.

    Returns
    -------
    PIL.Image.Image or None
        RGB, h and w <= ``THUMB`` px; None when the image cannot be read.
    """
    img = run.image(row)
    return None if img is None else _sized(run, row, img, THUMB)


def sheet(run: Run, rows: list[int], cols: int, gap: int = 0,
          max_width: int | None = None) -> tuple[np.ndarray | None, list[list[int] | None]]:
    """The thumbnails of many images as one picture (a sprite sheet): one JPEG shares its headers and
    compresses neighbours together, so a page of thumbnails costs about half the bytes of separate files.

    Parameters
    ----------
    run : Run
        The loaded run folder.
    rows : list of int
        Prediction row ids, in cell order (left to right, then down).
    cols : int
        Cells per line; a cell is as large as the largest thumbnail (at most ``THUMB`` px square).
    gap : int, default 0
        px of white between cells.
    max_width : int, optional
        px the sheet may span: fewer cells per line when ``cols`` of them would not fit.

    Returns
    -------
    (np.ndarray or None, list)
        The sheet, uint8 ``[H, W, 3]`` (None when no image could be read), and per row its cell
        ``[x, y, w, h]`` in px (the thumbnail at the cell's top left), None when unreadable.
    """
    pictures = [thumbnail(run, r) for r in rows]
    drawn = [p for p in pictures if p is not None]
    if not drawn:
        return None, [None] * len(rows)
    cell_w, cell_h = max(p.width for p in drawn), max(p.height for p in drawn)
    if max_width is not None:
        cols = max(1, min(cols, (max_width + gap) // (cell_w + gap)))
    lines = -(-len(rows) // cols)
    width = min(cols, len(rows))
    out = Image.new("RGB", (width * (cell_w + gap) - gap, lines * (cell_h + gap) - gap), (255, 255, 255))
    cells: list[list[int] | None] = []
    for i, p in enumerate(pictures):
        if p is None:
            cells.append(None)
            continue
        x, y = (i % cols) * (cell_w + gap), (i // cols) * (cell_h + gap)
        out.paste(p, (x, y))
        cells.append([x, y, p.width, p.height])
    return np.asarray(out), cells


def top_k(run: Run, row: int, k: int = TOP_K, info: dict | None = None) -> list[dict]:
    """The ``k`` most probable classes of prediction row ``row`` of ``run``: ``[{"label", "p"}]`` (p: softmax
    probability 0..1, from ``probs`` in predictions); [] without probabilities. ``info``: the row's
    ``run.info(row)`` when the caller has it (not read again)."""
    info = run.info(row) if info is None else info
    if info is None or info.get("probs") is None:
        return []
    try:
        probs = np.asarray(info["probs"], dtype=float).ravel()
    except (TypeError, ValueError):
        return []
    if probs.size == 0 or not np.isfinite(probs).any():
        return []
    order = np.argsort(-np.nan_to_num(probs, nan=-1.0), kind="stable")[:k]
    names = run.classes
    return [{"label": names[i] if i < len(names) else f"class {i}", "p": float(probs[i])}
            for i in order if np.isfinite(probs[i])]


def strip(run: Run, row: int, lut: np.ndarray | None = None, box_method: str | None = None,
          box: tuple[float, float, float, float] | None = None) -> tuple[np.ndarray | None, list[str]]:
    """The picture of one image's view: the image as the model saw it (``VIEW``-px box), then one overlay per
    stored attribution method, side by side (``plots.GAP`` px apart).

    Parameters
    ----------
    run : Run
        The loaded run folder.
    row : int
        Prediction row id of the image.
    lut : np.ndarray, optional
        uint8 ``[256, 3]`` colour table (``plots.colour_table``), reused across images.
    box_method : str, optional
        Method whose overlay gets the cue box outlined.
    box : tuple of float, optional
        The located cue box ``(top, left, bottom, right)``, fractions of the image
        (``audit.cues.Cue.boxes``); default the ``box_method`` map's peak box.

    Returns
    -------
    (PIL.Image.Image or None, list of str)
        RGB, ``n * w + (n - 1) * GAP`` px wide and ``h`` high (composed as PIL images: one view per
        selected image in the folder layout, so no array round trips), and the panel names
        (``"image"``, then the methods), or (None, []) when the image cannot be read.
    """
    img = run.image(row)
    if img is None:
        return None, []
    base = _sized(run, row, img, VIEW)
    panels, names = [base], ["image"]
    for method in run.methods:
        cam = run.cam(method, row)
        if cam is not None:
            outline = None
            if method == box_method:
                outline = plots.peak_box(cam) if box is None else \
                    tuple(round(v * n) for v, n in zip(box, cam.shape * 2))
            panels.append(plots.overlay_image(base, cam, box=outline, lut=lut))
            names.append(method)
    out = Image.new("RGB", (len(panels) * (base.width + plots.GAP) - plots.GAP, base.height), plots.BACKGROUND)
    for i, panel in enumerate(panels):
        out.paste(panel, (i * (base.width + plots.GAP), 0))
    return out, names


def view_name(row: int, box_method: str | None = None, box: tuple[float, float, float, float] | None = None) -> str:
    """The asset name of the view picture of ``row`` (with ``box_method``'s peak box, or the cue ``box``
    (fractions), outlined), shared by every section that shows it."""
    return f"row-{row}-view" + (f"-box-{box_method}" if box_method else "") + \
        ("-at-" + "-".join(f"{v:.4f}" for v in box) if box_method and box is not None else "")


def image_view(run: Run, assets: Assets, row: int, lut: np.ndarray | None = None,
               box_method: str | None = None, box: tuple[float, float, float, float] | None = None) -> dict:
    """Everything the report shows of one image, its picture (``strip``) included.

    Returns ``{"row", "path", "label", "predicted", "confidence", "margin", "error",
    "strip": src|None, "panels": ["image", "<method>", ...], "width", "height" (of one
    panel), "top": [...]}``.

    Parameters
    ----------
    run : Run
        The loaded run folder.
    assets : Assets
        Where the strip picture goes.
    row : int
        Prediction row id of the image.
    lut : np.ndarray, optional
        uint8 ``[256, 3]`` colour table (``plots.colour_table``), reused across images.
    box_method : str, optional
        Method whose overlay gets the cue box outlined.
    box : tuple of float, optional
        The located cue box (fractions of the image); default the map's peak box.
    """
    info = run.info(row)
    view = {"row": int(row), "path": run.path(row), "label": None, "predicted": None, "confidence": None,
            "margin": None, "error": None, "strip": None, "panels": [], "width": None, "height": None,
            "top": top_k(run, row, info=info)}
    if info is not None:
        view.update(label=str_or_none(info["label"]), predicted=str_or_none(info["predicted"]),
                    confidence=finite(info.get("confidence")), margin=finite(info.get("margin")),
                    error=str_or_none(info.get("error")))
    picture, names = strip(run, row, lut, box_method, box)
    if picture is None:
        view["error"] = view["error"] or run.image_errors.get(row) or "image unavailable"
        return view
    view["height"] = picture.height
    view["width"] = (picture.width - (len(names) - 1) * plots.GAP) // len(names)
    view["strip"] = assets.image(view_name(row, box_method, box), picture, quality=QUALITY)
    view["panels"] = names
    return view
