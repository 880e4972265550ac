"""The "Model internals" section of the report, from ``<run>/internals/`` (``audit.stages.internals``).

``context(summary, run_dir, embed_image)`` reads ``internals/index.json`` and the
PNGs it names, hands each PNG to ``embed_image(name, png_bytes) -> src`` (the
renderer decides how pictures reach the page) and returns ``{"internals": ...}``:
one entry per finding, anchored ``internals-<finding anchor>``, in the summary's
rank order. ``section(run, assets)`` is the report section (template
``sections/internals.html.j2``); ``finding_ids(run_dir, findings)`` the findings that
have an entry (matched by ID, else by member rows), which the Findings section links to. No TensorFlow here.

``write_page(folder)`` renders the standalone page of ``audit internals``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from audit.integrity import write_atomic

FOLDER = "internals"
INDEX = "index.json"


def context(summary: dict, run_dir: Path, embed_image: Callable[[str, bytes], str]) -> dict:
    """``{"internals": {...}}``, or ``{"internals": None}`` when the run has no internals.

    Parameters
    ----------
    summary : dict
        The run's ``summary.json`` (its findings, in rank order).
    run_dir : Path
        The run folder holding ``internals/``.
    embed_image : callable
        ``(name, png bytes) -> src``; a PNG that cannot be read becomes a note.
    """
    from audit.report.fmt import finding_key

    folder = Path(run_dir) / FOLDER
    try:
        index = json.loads((folder / INDEX).read_text())
    except (OSError, ValueError):
        return {"internals": None}
    by_finding = _entries(index, summary.get("findings") or [])
    notes: list[str] = []

    def src(name: Any) -> str | None:
        if not name:
            return None
        try:
            return embed_image(f"internals-{name}", (folder / str(name)).read_bytes())
        except OSError as exc:
            notes.append(f"{FOLDER}/{name}: {exc.strerror or exc}")
            return None

    classes = {key: dict(value, src=src(value.get("image"))) for key, value in (index.get("classes") or {}).items()}
    channels = {key: dict(value, filter_src=src(value.get("filter")), patches_src=src(value.get("patches")))
                for key, value in (index.get("channels") or {}).items()}
    findings = []
    for f in summary.get("findings") or []:
        entry = by_finding.get(str(f.get("id")))
        if entry is None:
            continue
        findings.append({
            "id": str(f["id"]), "anchor": "internals-" + finding_key(str(f["id"])),
            "finding_anchor": finding_key(str(f["id"])),
            "true_label": entry.get("true_label"), "predicted_label": entry.get("predicted_label"),
            "n_members_used": entry.get("n_members_used"),
            "classes": [classes[str(c)] for c in entry.get("classes") or [] if str(c) in classes],
            "channels": [dict(channels[str(c["channel"])], channel=c["channel"], score=c.get("score"))
                         for c in entry.get("channels") or [] if str(c.get("channel")) in channels],
            "activations": [dict(a, src=src(a.get("image"))) for a in entry.get("activations") or []],
        })
    return {"internals": {"layer": index.get("layer"), "layers": index.get("layers") or [],
                          "scanned_images": index.get("scanned_images"), "findings": findings,
                          "ids": [f["id"] for f in findings], "notes": notes}}


def section(run, assets) -> dict | None:
    """The report section's context, or ``None`` when the run has no internals entries.

    ``run``: the loaded ``Run``; ``assets``: its pictures go through ``assets.image``.
    """
    ctx = context(run.summary, run.dir, assets.image)["internals"]
    return ctx if ctx and ctx["findings"] else None


def finding_ids(run_dir: Path, findings: list[dict]) -> set[str]:
    """IDs of ``findings`` (summary.json's) with an entry in ``internals/index.json`` of the run folder
    ``run_dir``."""
    try:
        index = json.loads((Path(run_dir) / FOLDER / INDEX).read_text())
    except (OSError, ValueError):
        return set()
    return set(_entries(index, findings))


def _entries(index: dict, findings: list[dict]) -> dict[str, dict]:
    """Finding ID -> its entry of ``index``: by ID, else by the same member rows (a complete run
    re-gated against another baseline may rename its findings without running internals again)."""
    entries = [e for e in index.get("findings") or [] if isinstance(e, dict)]
    by_id = {str(e.get("id")): e for e in entries}
    by_members = {tuple(e["members"]): e for e in entries if e.get("members")}
    out = {}
    for f in findings:
        entry = by_id.get(str(f.get("id"))) or by_members.get(tuple(sorted(int(r) for r in f.get("rows") or [])))
        if entry is not None:
            out[str(f.get("id"))] = entry
    return out


def write_page(folder: Path) -> Path:
    """``folder/index.html`` of ``audit internals``: its ``index.json`` with the PNGs beside it."""
    from audit.report.jinja import environment

    folder = Path(folder)
    index = json.loads((folder / INDEX).read_text())
    html = environment().get_template("internals_page.html.j2").render(index=index, layout="folder")  # PNGs beside it
    out = folder / "index.html"
    write_atomic(out, html)
    return out
