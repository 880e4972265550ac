"""Render the report of a finished run folder: ``render(run_dir, layout=None)``.

Reads only the run folder's artifacts (``audit.report.loading``), the original
images and ``../history.parquet``; never imports TensorFlow, so any run can be
re-rendered anywhere (``audit render RUN_DIR``). Writes into the run folder:

* ``index.html``: the report. ``single`` layout (default, ``report.layout``): one
  self-contained file, CSS, script and pictures inline (compressed JPEG/PNG
  ``data:`` URIs), no external URL, no storage or fetch, so it works offline and
  in a sandboxed iframe. ``folder`` layout: pictures in ``assets/`` beside it.
  The single file stays within ``report.max_bytes``: the page is rendered once without the
  pictures a section draws only when there is room (``Section.fill``: the gallery's
  thumbnails and image views), which then get the bytes left; when the report still exceeds
  the budget one warning line is printed.
  Every file is written atomically and recorded in ``artifacts.json`` (the folder layout's
  pictures as one staged folder, flushed once and renamed into place before ``index.html`` is
  written: ``audit.report.assets``); an artifact that
  no longer matches its checksum is left out with a note atop the report and one
  warning line naming it.
* ``summary.md`` (for a PR or chat message) and ``junit.xml`` (one test per gate).

The page is a list of sections, ``SECTIONS`` below. Adding one takes two things:

1. a context function ``def my_section(run: Run, assets: Assets) -> dict | None``
   (``None`` leaves the section out) that reads the artifacts through ``run`` and
   embeds every picture with ``assets.image(name, array_or_png_bytes_or_figure)``,
   which returns the ``src`` for either layout (see ``audit.report.assets``);
2. a template ``templates/sections/<key>.html.j2`` (the project's top-level
   ``templates/``, see ``audit.report.jinja``) that renders ``s`` (the dict
   returned) plus the shared ``run_id``; then one ``Section(...)`` line in
   ``SECTIONS``. The section gets ``<section id="<key>">``, a navigation link and the
   browser test's checks (images load, in-page links resolve) automatically.

Jinja autoescape is on for every template; data reaches scripts only as JSON
through ``tojson``. Text from the data set is never marked safe.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from audit import integrity
from audit.errors import UsageError
from audit.report import findings, gallery, internals, outputs, summary, tables, trend, trust
from audit.report.assets import LAYOUTS, Assets
from audit.report.jinja import environment
from audit.report.loading import Run

INDEX = "index.html"
_MARGIN = 16_384   # bytes of the budget kept free: JSON and markup the fills add beyond their estimate


@dataclass(frozen=True)
class Section:
    """One section of the page: ``key`` (element id and template name), ``title`` (heading and navigation
    text), ``context`` (``(run, assets) -> dict | None``; None leaves the section out) and ``fill``
    (optional: ``(context, run, assets, spare)`` draws the section's optional pictures into its context
    once the rest of the page is rendered, within ``spare`` bytes of the single file; None in the folder
    layout: all of them)."""

    key: str                                        # element id, template sections/<key>.html.j2
    title: str                                      # heading and navigation text
    context: Callable[[Run, Assets], dict | None]   # None: the section is left out
    fill: Callable[[dict, Run, Assets, int | None], None] | None = None   # pictures within the bytes left


SECTIONS: list[Section] = [
    Section("summary", "Summary", summary.section),
    Section("findings", "Findings", findings.section),
    Section("strategies", "What the model relies on when it is right", findings.strategies),
    Section("trust", "Trust", lambda run, assets: trust.context(run.summary, run.dir, assets.image)),
    Section("internals", "Model internals", internals.section),
    Section("confusion", "Confusion pairs", tables.confusion),
    Section("gallery", "Gallery", gallery.section, gallery.fill),
    Section("slices", "Metrics by metadata", tables.slices),
    Section("calibration", "Confidence and calibration", tables.calibration),
    Section("trend", "Trend", trend.section),
    Section("unreadable", "Unreadable images", tables.unreadable),
    Section("run", "Run metadata", tables.meta),
]


def render(run_dir: Path, layout: str | None = None, warn: Callable[[str], None] | None = None,
           templates: str | Path | None = None) -> Path:
    """Render ``index.html`` (+ ``assets/`` in the folder layout), ``summary.md`` and ``junit.xml``.

    Parameters
    ----------
    run_dir : Path
        A finished run folder.
    layout : str, optional
        ``"single"`` or ``"folder"``; default ``report.layout`` of the run's config.
    warn : callable, optional
        Receives the one-line size-budget and damaged-file warnings (default: stderr).
    templates : str or Path, optional
        A folder of template overrides, searched before the shipped templates;
        default ``report.templates`` of the run's config.

    Returns
    -------
    Path
        The path of ``index.html``.

    Raises
    ------
    ValueError
        For an unknown layout.
    UsageError
        When the overrides folder does not exist.
    """
    run_dir = Path(run_dir)
    with integrity.recording(run_dir):
        return _render(run_dir, layout, warn or _stderr, templates)


def _render(run_dir: Path, layout: str | None, warn: Callable[[str], None], templates: str | Path | None) -> Path:
    run = Run.load(run_dir)
    layout = layout or run.config.report.layout
    if layout not in LAYOUTS:
        raise ValueError(f"report layout must be one of {', '.join(LAYOUTS)} (got {layout!r})")
    with Assets(run_dir, layout) as assets:   # the folder layout's pictures are staged until commit
        return _draw(run, run_dir, layout, assets, warn, templates)


def _draw(run: Run, run_dir: Path, layout: str, assets: Assets, warn: Callable[[str], None],
          templates: str | Path | None) -> Path:
    shown, fills = [], []
    for sec in SECTIONS:  # in page order: later sections may reuse pictures of earlier ones
        ctx = sec.context(run, assets)
        if ctx is not None:
            shown.append({"key": sec.key, "title": sec.title, "template": f"sections/{sec.key}.html.j2", "s": ctx})
            if sec.fill is not None:
                fills.append((sec.fill, ctx))
    head = summary.summary_view(run)
    overrides = templates or run.config.report.templates
    if overrides is not None and not Path(overrides).is_dir():
        raise UsageError(f"`report.templates` {overrides}: no such folder")
    page = environment(overrides).get_template("index.html.j2")

    def html() -> str:
        return page.render(sections=shown, run_id=head["run_id"], status=head["status"], notes=run.notes,
                           layout=layout, n_pictures=assets.count)

    budget = run.config.report.max_bytes
    if fills:   # the optional pictures get what the rest of the page leaves of the budget
        spare = None if layout == "folder" else budget - len(html().encode("utf-8")) - _MARGIN
        for fill, ctx in fills:
            before = assets.bytes
            fill(ctx, run, assets, None if spare is None else max(0, spare))
            if spare is not None:
                spare -= 4 * (assets.bytes - before) // 3
    text = html()
    out = run_dir / INDEX
    assets.commit()                      # the pictures are in place before the page that links them
    integrity.write_atomic(out, text)
    assets.prune()
    outputs.write(run_dir, head, INDEX, run.config.report.summary_format, run.config.report.url)
    size = out.stat().st_size + (assets.bytes if layout == "folder" else 0)
    if size > budget:
        hint = "; try --layout folder" if layout == "single" else ""
        warn(f"audit: warning: report is {size / 1e6:.1f} MB, over report.max_bytes "
                          f"= {budget / 1e6:.1f} MB{hint}")
    for line in run.damaged:
        warn(f"audit: warning: {line}")
    return out


def report_size(run_dir: Path) -> int:
    """Bytes of the rendered report in the run folder ``run_dir``: index.html plus assets/ when present."""
    run_dir = Path(run_dir)
    total = (run_dir / INDEX).stat().st_size
    folder = run_dir / "assets"
    if folder.is_dir():
        total += sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return total


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
