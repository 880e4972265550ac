"""The findings section: one ``<section id="F-...">`` per finding, with its evidence.

Per finding: statistics, baseline status and triage, the causal tests (table and
bars), the cue montage (a patch around each member's located cue: ``cue.boxes``,
see ``audit.stages.locate``; older runs: around its map peak), the mean map, the
pair's Laplacian eigenvalues, exemplars with an overlay per attribution method,
and the member list. ``views(run, assets)`` builds them once per render (the
summary section shows the top ones again, reusing the same pictures).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from audit.report import internals, plots, story
from audit.report.assets import Assets
from audit.report.fmt import finite, str_or_none
from audit.report.images import image_view
from audit.report.loading import Run

MAX_DETAILED_FINDINGS = 25   # findings beyond this rank are listed but get no pictures
MAX_MONTAGE = 32             # cue tiles per finding
MAX_EXEMPLARS = 6
PREFERRED_METHOD = "gradcam"


def cue_method(run: Run) -> str | None:
    """The method whose maps cut the montage patches: Grad-CAM when ``run`` stores it, else its first method
    (None without maps)."""
    if not run.methods:
        return None
    return PREFERRED_METHOD if PREFERRED_METHOD in run.methods else run.methods[0]


def section(run: Run, assets: Assets) -> dict | None:
    """The findings section: the finding ``views``, the montage method, the embedding scatter plot.

    Parameters
    ----------
    run : Run
        The loaded run folder.
    assets : Assets
        Where the pictures go (``Assets.image``).
    """
    found = views(run, assets)
    return {"findings": found, "method": cue_method(run), "methods": run.methods, "input_hw": run.input_hw,
            "n_detailed": min(len(found), MAX_DETAILED_FINDINGS), "embedding": _embedding(run, assets)}


def strategies(run: Run, assets: Assets) -> dict | None:
    """"What the model relies on when it is right": the strategy findings of ``run`` (pictures into
    ``assets``), None when none."""
    found = [v for v in views(run, assets) if v["kind"] == "strategy"]
    return {"strategies": found} if found else None


def views(run: Run, assets: Assets) -> list[dict]:
    """The findings of ``run`` as the templates show them (pictures drawn once per render into ``assets``, then
    cached on the run), rank order; the first ``MAX_DETAILED_FINDINGS`` get pictures."""
    if "findings" in run.cache:
        return run.cache["findings"]
    lut = plots.colour_table()
    with_internals = internals.finding_ids(run.dir, run.summary.get("findings") or [])
    anchors = {f["id"]: f["anchor"] for f in run.findings}
    out = []
    for n, f in enumerate(run.findings):
        raw = f["raw"]
        view = {k: f[k] for k in ("id", "anchor", "rank", "true_label", "predicted_label", "size", "score",
                                  "status", "triage", "pair_anchor")}
        view.update({
            "n_errors": raw.get("n_errors"), "coherence": raw.get("coherence"), "support": raw.get("support"),
            "causal": raw.get("causal"), "verification": verification(raw),
            "detailed": n < MAX_DETAILED_FINDINGS, "montage": None, "mean": None, "exemplars": [],
            "notes": [], "members": [], "eigen": None, "verify_plot": None,
            "internals_anchor": f"internals-{f['anchor']}" if f["id"] in with_internals else None,
        })
        view.update(story.story_view(raw, anchors, lambda name, fig: assets.image(name, fig), f["anchor"]))
        exemplars = _exemplars(run, f)
        for p, r in zip(f["members"], f["rows"]):
            info = run.info(r)
            view["members"].append({"row": r, "path": p,
                                    "predicted": str_or_none(info["predicted"]) if info is not None else None,
                                    "confidence": finite(info.get("confidence")) if info is not None else None,
                                    "exemplar": r in exemplars})
        if view["detailed"]:
            _pictures(run, view, f["rows"], exemplars, assets, lut, raw.get("cue"))
            _plots(view, raw, assets)
        out.append(view)
    run.cache["findings"] = out
    return out


def _exemplars(run: Run, f: dict) -> list[int]:
    """Rows of finding ``f``'s most central members (``exemplar_rows``, then ``rows``, in centrality
    order), as many as its ``exemplar_rows`` (at most ``MAX_EXEMPLARS``), those with a map of every method
    first: the costly methods explain a sample (``attribution.sample_total``), and an exemplar shows an
    overlay per method."""
    n = min(len(f["exemplar_rows"]), MAX_EXEMPLARS)
    central = list(dict.fromkeys([*f["exemplar_rows"], *f["rows"]]))
    full = [r for r in central if all(int(r) in run.maps.get(m, {}) for m in run.methods)][:n]
    return list(dict.fromkeys([*full, *f["exemplar_rows"]]))[:n]


def _pictures(run: Run, view: dict, rows: list[int], exemplars: list[int], assets: Assets,
              lut: np.ndarray, cue: dict | None) -> None:
    method = cue_method(run)
    if method is None:
        view["notes"].append("no attribution maps stored: no pictures")
    located = cue_boxes(cue, rows)
    tiles: list[np.ndarray] = []
    boxes: list[dict] = []
    for r in dict.fromkeys(r for r in rows if r >= 0):
        if len(tiles) >= MAX_MONTAGE or (method is None and located is None):
            break
        if located is not None:
            img, box = run.image(r), located.get(r) or (0.0, 0.0, 1.0, 1.0)
        else:
            cam = run.cam(method, r)
            img = run.image(r) if cam is not None else None
            box = fractions(plots.peak_box(cam), cam.shape) if cam is not None else None
        if img is not None:
            tiles.append(plots.crop_tile(img, (1, 1), box))
            boxes.append({"row": r, "box": box})
    if tiles:
        w, h = plots.montage_shape(len(tiles))
        view["montage"] = {"src": assets.image(f"{view['anchor']}-montage", plots.montage(tiles)),
                           "width": w, "height": h, "n": len(tiles), "boxes": boxes,
                           "crops": _crops(cue["source"] if located is not None else None, method)}
    total, n_maps, no_map = None, 0, 0
    for r in dict.fromkeys(r for r in rows if r >= 0):  # running sum: members may be many
        cam = run.cam(method, r) if method else None
        if cam is None:
            no_map += 1
        elif total is None or cam.shape == total.shape:
            total = plots.normalise(cam) if total is None else total + plots.normalise(cam)
            n_maps += 1
    if total is not None:
        view["mean"] = {"src": assets.image(f"{view['anchor']}-mean", plots.mean_map(total / n_maps, n_maps)),
                        "n": n_maps}
    if method is not None and no_map:
        view["notes"].append(f"{no_map} member(s) have no stored {method} map")
    view["exemplars"] = [image_view(run, assets, r, lut=lut, box_method=method,
                                    box=located.get(r) if located is not None else None) for r in exemplars]
    unread = [r for r in rows if r in run.image_errors]
    if unread:
        view["notes"].append(f"{len(unread)} member image(s) could not be read now (moved or deleted?)")


def _crops(source: str | None, method: str | None) -> str:
    """What a montage tile shows, in words: by the located cue's ``source``, else the ``method`` map's peak."""
    side = f"{plots.CUE_FRACTION:.0%} of the image side"
    if source is None:
        return f"a square patch ({side}) around the maximum of its {method} map"
    if source.startswith("not located"):
        return f"the whole image (the cue was {source})"
    return f"a square patch (at least {side}) around its part of the cue, located by the {source}"


def cue_boxes(cue: dict | None, rows: list[int]) -> dict[int, tuple[float, float, float, float] | None] | None:
    """Each member row's located cue box ``(top, left, bottom, right)`` (fractions of the image; None: not
    located) from a finding's ``summary.json`` ``cue`` (its ``boxes`` in member order, aligned with
    ``rows``); None when the cue was never located (runs before ``audit.stages.locate``)."""
    boxes = cue.get("boxes") if isinstance(cue, dict) and cue.get("source") else None
    if not isinstance(boxes, list) or len(boxes) != len(rows):
        return None
    out = {}
    for r, b in zip(rows, boxes):
        ok = isinstance(b, list) and len(b) == 4 and all(finite(v) is not None for v in b)
        out[int(r)] = tuple(float(v) for v in b) if ok else None
    return out


def fractions(box: tuple[int, int, int, int], hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """The ``box`` ``(top, left, bottom, right)`` in pixels of a map of shape ``hw`` ``(h, w)`` as fractions of its
    height and width."""
    h, w = hw
    top, left, bottom, right = box
    return top / h, left / w, bottom / h, right / w


def verification(finding: dict) -> dict | None:
    """A finding's causal tests as table rows, or ``None`` when it has none.

    ``finding`` is its ``summary.json`` entry; rates (0..1), lifts and standard errors are
    copied from its ``verification``. ``confirmed`` is the trust stage's judgement (best
    lift at least ``trust.min_lift``), ``None`` when the run has no trust figures for it.
    """
    raw = finding.get("verification")
    if not isinstance(raw, dict):
        return None
    if not raw.get("verified"):
        return {"verified": False, "reason": str_or_none(raw.get("reason")) or "not verified", "tests": []}
    tests = []
    for key, label, what in (("occlusion", "occlusion", "members leaving the predicted class"),
                             ("transplant", "transplant", "clean images flipped to the predicted class")):
        t = raw.get(key)
        if not isinstance(t, dict):
            continue
        tests.append({"key": key, "label": label, "what": what, "n": t.get("n"), "flipped": t.get("flipped"),
                      "rate": finite(t.get("rate")), "random_flipped": t.get("random_flipped"),
                      "random_rate": finite(t.get("random_rate")), "lift": finite(t.get("lift")),
                      "se": finite(t.get("se"))})
    trust = finding.get("trust") if isinstance(finding.get("trust"), dict) else {}
    confirmed = trust.get("confirmed")
    return {"verified": True, "reason": str_or_none(raw.get("reason")), "tests": tests,
            "members_tested": raw.get("members_tested"), "mean_area": finite(raw.get("mean_area")),
            "confirmed": confirmed if isinstance(confirmed, bool) else None, "lift": finite(trust.get("lift"))}


def verification_text(v: dict | None) -> str:
    """One line for summary.md and the summary cards, e.g. "cue confirmed: occlusion 100% vs 0% random".

    ``v`` is a ``verification`` result (None: "not tested").
    """
    if not v:
        return "not tested"
    if not v["verified"]:
        return f"not verified ({v['reason']})"
    parts = []
    for t in v["tests"]:
        if t["rate"] is not None:
            rnd = f" vs {t['random_rate']:.0%} random" if t["random_rate"] is not None else ""
            parts.append(f"{t['label']} {t['rate']:.0%}{rnd}")
    verdict = {True: "cue confirmed: ", False: "cue not confirmed: "}.get(v.get("confirmed"), "")
    return verdict + ("; ".join(parts) or "no test could run")


def _plots(view: dict, raw: dict, assets: Assets) -> None:
    values = [v for v in (finite(x) for x in raw.get("eigenvalues") or []) if v is not None]
    k = raw.get("eigengap_k")
    k = int(k) if finite(k) is not None else None
    if len(values) >= 2:
        view["eigen"] = {"src": assets.image(f"{view['anchor']}-eigenvalues", plots.eigenvalues(values, k)),
                         "k": k, "n": len(values)}
    v = view["verification"]
    if v and v["verified"] and any(t["rate"] is not None for t in v["tests"]):
        fig = plots.verification_bars([(t["label"], t["rate"], t["random_rate"]) for t in v["tests"]])
        view["verify_plot"] = {"src": assets.image(f"{view['anchor']}-verification", fig)}


def _embedding(run: Run, assets: Assets) -> dict | None:
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
            s = str_or_none(fid)
            if c >= 0 and s and c not in labels:
                labels[int(c)] = s
    src = assets.image("embedding", plots.embedding_scatter(x, y, cluster, contrast, labels))
    return {"src": src, "n": len(d), "n_clusters": len(set(cluster[cluster >= 0].tolist())),
            "n_contrast": int(contrast.sum())}
