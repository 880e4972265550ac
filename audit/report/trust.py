"""The report's "Trust" section: should the maps and the findings be believed?

``context(summary, run_dir, embed_image)`` builds the section's template context
(``templates/sections/trust.html.j2``, which renders it as ``s``) from ``summary["trust"]`` and the findings' ``trust``
dicts alone (``run_dir`` is not read: every figure comes from summary.json), so a
re-render needs neither TensorFlow nor the run's maps. ``embed_image(name,
png_bytes) -> src`` is the report's image embedding function (``name`` without
extension). Pictures
(matplotlib, imported here only): deletion and insertion curves per method
against the random maps, Spearman and SSIM per cascading-randomization step, the
agreement per pair of methods and the IG completeness-gap histogram.

Returns ``None`` when the run has no trust figures (trust disabled, or an older
run), and the section is then left out.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

EmbedImage = Callable[[str, bytes], str]
LEVELS = ("high", "medium", "low")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_COLOURS = ["#0b5cad", "#c0392b", "#2f7d4f", "#8e44ad", "#d35400", "#16a085", "#7f8c8d"]


def context(summary: dict, run_dir: Path, embed_image: EmbedImage) -> dict | None:
    """The Trust section's context, or ``None`` when ``summary`` has no trust figures.

    Parameters
    ----------
    summary : dict
        The run's ``summary.json``.
    run_dir : Path
        The run folder (not read).
    embed_image : callable
        ``(name, png bytes) -> src`` of the picture in the report.
    """
    trust = summary.get("trust")
    if not isinstance(trust, dict) or not isinstance(trust.get("methods"), dict):
        return None
    methods = [_method(name, m) for name, m in trust["methods"].items() if isinstance(m, dict)]
    random = trust.get("random") or {}
    gap = trust.get("completeness_gap")
    agreement = trust.get("agreement") or {}
    findings = [_finding(f) for f in summary.get("findings") or [] if isinstance(f, dict)
                and isinstance(f.get("trust"), dict)]
    colours = {m["name"]: _COLOURS[i % len(_COLOURS)] for i, m in enumerate(methods)}
    return {
        "methods": methods,
        "random": {"deletion_auc": random.get("deletion_auc"), "insertion_auc": random.get("insertion_auc"),
                   "n": len(random.get("deletion_auc_per_seed") or [])},
        "agreement": {"mean": agreement.get("mean"), "n_images": agreement.get("n_images"),
                      "pairs": [{"name": k.replace("~", " vs "), "value": v}
                                for k, v in (agreement.get("pairs") or {}).items()]},
        "gap": gap if isinstance(gap, dict) else None,
        "sample": trust.get("sample") or {},
        "settings": trust.get("settings") or {},
        "findings": findings,
        "curves": _embed(embed_image, "trust-curves", _curves_png, methods, random, colours),
        "sanity_plot": _embed(embed_image, "trust-sanity", _sanity_png, methods, colours),
        "agreement_plot": _embed(embed_image, "trust-agreement", _agreement_png, agreement.get("pairs")),
        "gap_plot": _embed(embed_image, "trust-gap", _gap_png, gap),
    }


def _method(name: str, m: dict) -> dict:
    f = m.get("faithfulness") or {}
    s = m.get("sanity") or {}
    badge = m.get("badge") or {}
    rl = s.get("random_logit") or {}
    return {"name": name, "sanity": badge.get("sanity"), "faithful": badge.get("faithful"),
            "trusted": badge.get("trusted"), "deletion_auc": f.get("deletion_auc"),
            "insertion_auc": f.get("insertion_auc"), "deletion_margin": f.get("deletion_margin"),
            "insertion_margin": f.get("insertion_margin"), "final_spearman": s.get("final_spearman"),
            "random_logit": rl.get("spearman"), "cascading": s.get("cascading") or [],
            "curves": f.get("curves") or {}, "text": method_text(name, badge, f)}


def method_text(name: str, badge: dict, faith: dict) -> str:
    """The checks of method ``name`` (its ``badge`` and faithfulness figures ``faith``) in plain words, e.g.
    "gradcam passes the sanity checks; hiding what it
    points at first lowers the prediction faster than random maps do (32 images, margin 0.12 ± 0.03)"."""
    sanity = {True: "passes the sanity checks", False: "fails the sanity checks (its maps barely depend on the "
              "model or the class)", None: "was not sanity-checked"}[badge.get("sanity")]
    n, margin, se = faith.get("n"), faith.get("deletion_margin"), faith.get("deletion_se")
    measured = f" ({n} images, margin {margin:.2f}" + (f" ± {se:.2f})" if se is not None else ")") \
        if n and margin is not None else ""
    faithful = {True: "hiding what it points at first lowers the prediction faster than random maps do",
                False: "hiding what it points at first does not beat random maps",
                None: "faithfulness not measured"}[badge.get("faithful")]
    shaky = "; too few images to be sure" if faith.get("conclusive") is False else ""
    return f"{name} {sanity}; {faithful}{measured}{shaky}."


def _finding(f: dict) -> dict:
    t = f["trust"]
    fid = str(f.get("id") or "")
    return {"id": fid, "anchor": fid if _SAFE_ID.fullmatch(fid) else None,
            "true_label": f.get("true_label"), "predicted_label": f.get("predicted_label"),
            "agreement": t.get("agreement"), "n_images": t.get("n_images"), "lift": t.get("lift"),
            "agrees": t.get("agrees"), "confirmed": t.get("confirmed"),
            "level": t.get("level") if t.get("level") in LEVELS else None,
            "text": str(t.get("text") or "") or None}


def _embed(embed_image: EmbedImage, name: str, draw: Callable[..., Any], *args) -> str | None:
    png = draw(*args)
    return None if png is None else embed_image(name, png)


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="white", metadata={"Software": None})
    return buffer.getvalue()


def _style(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)


def _curves_png(methods: list[dict], random: dict, colours: dict) -> bytes | None:
    """Deletion and insertion curves: one line per method, the random maps dashed."""
    if not any(m["curves"].get("deletion") for m in methods):
        return None
    fig, axes = _figure(7.2, 2.6, 2)
    for ax, kind in zip(axes, ("deletion", "insertion")):
        for m in methods:
            y = np.asarray(m["curves"].get(kind) or [], dtype=float)
            if len(y):
                ax.plot(np.linspace(0, 1, len(y)), y, color=colours[m["name"]], label=m["name"], lw=1.6)
        y = np.asarray((random.get("curves") or {}).get(kind) or [], dtype=float)
        if len(y):
            ax.plot(np.linspace(0, 1, len(y)), y, color="#333333", ls="--", lw=1.2, label="random maps")
        ax.set_title(f"{kind} (lower is better)" if kind == "deletion" else f"{kind} (higher is better)", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        _style(ax, f"fraction of pixels {'removed' if kind == 'deletion' else 'restored'}",
               "probability of the explained class")
    axes[1].legend(fontsize=7, frameon=False)
    return _png(fig)


def _sanity_png(methods: list[dict], colours: dict) -> bytes | None:
    """Spearman and SSIM to the original maps after each cascading-randomization step."""
    if not any(m["cascading"] for m in methods):
        return None
    fig, axes = _figure(7.2, 2.6, 2)
    longest = max((m["cascading"] for m in methods), key=len)
    labels = ["none"] + [str(s.get("top_layer")) for s in longest]
    for ax, key in zip(axes, ("spearman", "ssim")):
        for m in methods:
            steps = m["cascading"]
            y = np.array([np.nan if s.get(key) is None else s[key] for s in steps], dtype=float)
            ax.plot(np.arange(len(y) + 1), np.r_[1.0, y], marker="o", ms=3, color=colours[m["name"]],
                    label=m["name"], lw=1.4)
        ax.axhline(0.0, color="#999999", lw=0.8)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=6)
        ax.set_ylim(-1.05, 1.05)
        _style(ax, "randomized down to layer", "Spearman" if key == "spearman" else "SSIM")
    axes[0].legend(fontsize=7, frameon=False)
    return _png(fig)


def _agreement_png(pairs: dict | None) -> bytes | None:
    if not pairs:
        return None
    names = list(pairs)
    values = [np.nan if pairs[n] is None else pairs[n] for n in names]
    fig, (ax,) = _figure(4.2, 0.5 + 0.35 * len(names))
    ax.barh(range(len(names)), values, color="#0b5cad")
    ax.set_yticks(range(len(names)), [n.replace("~", " vs ") for n in names], fontsize=7)
    ax.set_xlim(-1, 1)
    ax.axvline(0.0, color="#999999", lw=0.8)
    _style(ax, "mean Spearman over images", "")
    return _png(fig)


def _gap_png(gap: dict | None) -> bytes | None:
    hist = (gap or {}).get("histogram") or {}
    counts, edges = hist.get("counts"), hist.get("edges")
    if not counts or not edges or len(edges) != len(counts) + 1:
        return None
    fig, (ax,) = _figure(4.2, 2.4)
    edges = np.asarray(edges, dtype=float)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#8e44ad", alpha=0.75)
    ax.axvline(0.0, color="#333333", lw=0.8)
    _style(ax, "sum(map) - (f(x) - f(baseline)), logits", "images")
    return _png(fig)
