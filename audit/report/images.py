"""One image of the run as the report shows it: original, one overlay per attribution method, top-k.

``image_view`` is shared by the finding exemplars, the pair sections and the
gallery's per-image view, so an image looks the same wherever it appears (and,
asked twice with the same size, is encoded once: asset names are keyed by row).
"""
from __future__ import annotations

import numpy as np

from audit.report import plots
from audit.report.assets import Assets
from audit.report.fmt import finite, str_or_none
from audit.report.loading import Run

THUMB = 96      # px, gallery and pair-strip thumbnails (box side)
VIEW = 160      # px, per-image view and exemplars (box side; small originals are not upscaled)
TOP_K = 5


def display_hw(run: Run, row: int, img: np.ndarray) -> tuple[int, int]:
    """``(h, w)`` the model saw for prediction row ``row`` of ``run``: its first stored map's shape, else the model
    input, else the decoded image ``img``'s own (uint8 ``[h, w, 3]``)."""
    for method in run.methods:
        hw = run.map_hw(method, row)
        if hw is not None:
            return hw
    return run.input_hw or img.shape[:2]


def _sized(run: Run, row: int, img: np.ndarray, box: int) -> np.ndarray:
    box = min(box, max(img.shape[:2]))  # never upscale a small original
    return plots.thumbnail(img, display_hw(run, row, img), box)


def thumb(run: Run, assets: Assets, row: int) -> str | None:
    """``src`` (from ``assets``) of the ``THUMB``-px thumbnail of prediction row ``row`` of ``run``, or None when
    its image cannot be read."""
    name = f"row-{row}-thumb"
    if assets.has(name):
        return assets.image(name, None)
    img = run.image(row)
    if img is None:
        return None
    return assets.image(name, _sized(run, row, img, THUMB), quality=70)


def top_k(run: Run, row: int, k: int = TOP_K) -> list[dict]:
    """The ``k`` most probable classes of prediction row ``row`` of ``run``: ``[{"label", "p"}]`` (p: softmax
    probability 0..1, from ``probs`` in predictions); [] without probabilities."""
    info = run.info(row)
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


def image_view(run: Run, assets: Assets, row: int, lut: np.ndarray | None = None,
               box_method: str | None = None, with_pictures: bool = True) -> dict:
    """Everything the report shows of one image; the picture only when ``with_pictures``.

    The picture is one strip: the image as the model saw it, then one overlay per
    stored attribution method, side by side (one file per image in the folder
    layout). Returns ``{"row", "path", "label", "predicted", "confidence",
    "margin", "error", "strip": src|None, "panels": ["image", "<method>", ...],
    "width", "height" (of one panel), "top": [...]}``. ``box_method``: outline
    that method's peak box (the cue patch of the montage).

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
        Method whose peak box is outlined.
    with_pictures : bool, default True
        Draw the strip (else ``strip`` is None).
    """
    info = run.info(row)
    view = {"row": int(row), "path": run.path(row), "label": None, "predicted": None, "confidence": None,
            "margin": None, "error": None, "strip": None, "panels": [], "width": None, "height": None,
            "top": top_k(run, row)}
    if info is not None:
        view.update(label=str_or_none(info["label"]), predicted=str_or_none(info["predicted"]),
                    confidence=finite(info.get("confidence")), margin=finite(info.get("margin")),
                    error=str_or_none(info.get("error")))
    if not with_pictures:
        return view
    img = run.image(row)
    if img is None:
        view["error"] = view["error"] or run.image_errors.get(row) or "image unavailable"
        return view
    base = _sized(run, row, img, VIEW)
    view["height"], view["width"] = base.shape[:2]
    panels, names = [base], ["image"]
    for method in run.methods:
        cam = run.cam(method, row)
        if cam is not None:
            box = plots.peak_box(cam) if method == box_method else None
            panels.append(plots.overlay(base, cam, box=box, lut=lut))
            names.append(method)
    name = f"row-{row}-view" + (f"-box-{box_method}" if box_method else "")
    view["strip"] = assets.image(name, plots.montage(panels, cols=len(panels), gap=plots.GAP))
    view["panels"] = names
    return view
