"""What a finding's cue is and which findings share it: the report's view of the link stage.

``story_view`` turns a finding's ``kind``, ``cue`` text, ``related`` links,
``properties`` and ``cue_slice`` (``audit.stages.link``, ``audit.stages.describe``)
into what the templates show: a one-line title in words, the linked findings
with their anchors, the global-cue tests and the two-bar slice plot.
"""
from __future__ import annotations

from typing import Callable

from matplotlib.figure import Figure

from audit.report.fmt import finite

RELATIONS = {"same_cue": "same cue", "missing_cue": "the cue's absence"}


def title(raw: dict) -> str:
    """The one line in words of ``raw`` (a summary.json finding):
    ``"bathroom relies on: a small cyan patch ..."`` for a
    strategy, ``"pool called bathroom: ..."`` for an error group (the cue text when known)."""
    cue = (raw.get("cue") or {}).get("text")
    if raw.get("kind") == "strategy":
        return f"{raw.get('true_label')} relies on {cue}" if cue else f"{raw.get('true_label')} relies on a shared cue"
    head = f"{raw.get('true_label')} called {raw.get('predicted_label')}"
    return f"{head}: {cue}" if cue else head


def story_view(raw: dict, anchors: dict[str, str], image: Callable[[str, Figure], str], anchor: str) -> dict:
    """The parts of a finding's section that tell its story (see the module docstring).

    ``raw``: the summary.json finding; ``anchors``: finding ID -> anchor of related findings;
    ``image``: ``(name, figure) -> src``; ``anchor``: this finding's anchor (names its pictures).
    """
    related = []
    for r in raw.get("related") or []:
        rid, relation = (r.get("id"), r.get("relation")) if isinstance(r, dict) else (r, None)
        related.append({"id": rid, "anchor": anchors.get(rid), "relation": RELATIONS.get(relation, relation or "")})
    tests = []
    for p in raw.get("properties") or []:
        t = p.get("test") or {}
        tests.append({"property": p.get("property"), "direction": p.get("direction"), "effect": finite(p.get("effect")),
                      "shift": p.get("shift"), "rate": finite(t.get("rate")), "placebo": finite(t.get("random_rate")),
                      "lift": finite(t.get("lift")), "se": finite(t.get("se")), "n": t.get("n")})
    s = raw.get("cue_slice")
    plot = None
    if s and (s.get("accuracy_with") is not None or s.get("accuracy_without") is not None):
        plot = image(f"{anchor}-slice", slice_bars(s))
    cue = raw.get("cue") or {}
    return {"kind": raw.get("kind") or "error", "title": title(raw), "cue_text": cue.get("text"),
            "cue_type": cue.get("type"), "story": raw.get("story"), "related": related, "properties": tests,
            "slice": s, "slice_plot": plot}


def slice_bars(s: dict) -> Figure:
    """Two bars: the class's accuracy (0..1) on its images with the cue and without it (``s``: the
    finding's ``cue_slice``)."""
    from audit.report.plots import _new_figure

    fig = _new_figure(3.0, 1.4)
    ax = fig.add_subplot()
    values = [s.get("accuracy_with"), s.get("accuracy_without")]
    labels = [f"with the cue ({s.get('n_with', 0)})", f"without ({s.get('n_without', 0)})"]
    ax.barh([1, 0], [v or 0.0 for v in values], color=["#2e86c1", "#c0392b"], height=0.6)
    for y, v in zip((1, 0), values):
        ax.text((v or 0.0) + 0.01, y, "no images" if v is None else f"{v:.0%}", va="center", fontsize=7)
    ax.set_yticks([1, 0], labels, fontsize=7)
    ax.set_xlim(0, 1.15)
    ax.set_title(f"accuracy on {s.get('label')}", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    return fig
