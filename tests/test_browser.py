"""The report in a real browser: Debian chromium, headless, driven by playwright.

Generic checks that cover every section, present and future: no console error
(a CSP violation or a script error counts), no dialog (an injected ``alert``
would open one), every ``<img>`` decoded (``naturalWidth > 0``) on every gallery
page and in the per-image view, every in-page ``href="#..."`` resolves to an
element. Then the interactions: a confusion-matrix cell reaches its pair section,
``#<finding id>`` anchors land on the finding, the report works inside a
sandboxed iframe. Screenshots go to ``reports/browser-test/`` (printed).

The browser is part of the set-up (``make install`` installs Debian chromium), so
a missing browser FAILS these tests, it never skips them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.test_report import CLASSES, EVIL, F1, F2, QUOTED, build_run

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "reports" / "browser-test"
METHODS = ["gradcam", "integrated_gradients", "occlusion"]

# every image element decoded, every in-page link target present
_PAGE_STATE = """() => ({
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src').slice(0, 60), ok: i.complete && i.naturalWidth > 0})),
  missing_targets: Array.from(document.querySelectorAll('a[href^="#"]')).map(a => a.getAttribute('href').slice(1))
      .filter(id => id && !document.getElementById(decodeURIComponent(id))),
  external: Array.from(document.querySelectorAll('[src],[href]')).map(e => e.getAttribute('src') || e.getAttribute('href'))
      .filter(u => /^(https?:)?\\/\\//i.test(u)),
})"""


def chromium_path() -> str:
    path = os.environ.get("AUDIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Debian chromium is not installed: run `make install` (it installs chromium with apt-get)")
    return path


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run `make install` (test extra)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Watched:
    """A page that records console errors, page errors and dialogs."""

    def __init__(self, browser, width: int = 1280, height: int = 900):
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def open(self, url: str) -> None:
        self.page.goto(url, wait_until="load")

    def state(self) -> dict:
        return self.page.evaluate(_PAGE_STATE)


def _assert_clean(w: Watched, what: str) -> dict:
    state = w.state()
    bad = [i["src"] for i in state["images"] if not i["ok"]]
    assert not bad, f"{what}: {len(bad)} image(s) did not load: {bad[:5]}"
    assert not state["missing_targets"], f"{what}: links to missing ids: {state['missing_targets'][:10]}"
    assert not state["external"], f"{what}: external URLs: {state['external'][:5]}"
    assert not w.errors, f"{what}: {w.errors[:5]}"
    assert not w.dialogs, f"{what}: dialogs opened: {w.dialogs}"
    return state


def _walk_gallery(w: Watched) -> int:
    """Visit every gallery page; every image on each must load. Returns the number of tiles seen."""
    page = w.page
    page.select_option("#gallery-controls select[name=size]", "24")
    seen = 0
    for _ in range(1000):
        tiles = page.locator("#gallery-grid .tile").count()
        seen += tiles
        _assert_clean(w, "gallery page")
        info = page.inner_text("#gallery-info")
        current, total = [int(x) for x in info.split(" · ")[0].replace("page ", "").split(" of ")]
        if current == total:
            return seen
        page.click(".pager button[data-page='1']")
    raise AssertionError("gallery pager never reached its last page")


def _check_report(w: Watched, run_dir: Path, shots: str, methods: list[str]) -> dict:
    page = w.page
    url = (run_dir / "index.html").as_uri()
    w.open(url)
    state = _assert_clean(w, "first load")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{shots}-summary.png"))

    # a confusion-matrix cell reaches its pair section
    cell = page.locator("table.cm a.cell").first
    target = cell.get_attribute("href")
    assert target and target.startswith("#pair-")
    cell.click()
    assert page.evaluate("location.hash") == target
    section = page.locator(f"section{target}")
    assert section.count() == 1 and section.is_visible()
    assert page.evaluate("id => { const r = document.getElementById(id).getBoundingClientRect();"
                         " return r.top >= -2 && r.top < window.innerHeight; }", target[1:])
    page.screenshot(path=str(SHOTS / f"{shots}-pair.png"))

    # #<finding id> anchors land on the finding
    fid = page.locator("section.finding").first.get_attribute("id")
    w.open(f"{url}#{fid}")
    assert page.evaluate("document.querySelector(':target') && document.querySelector(':target').id") == fid
    assert 0 <= page.evaluate("id => document.getElementById(id).getBoundingClientRect().top", fid) < 80
    page.screenshot(path=str(SHOTS / f"{shots}-finding.png"))

    # gallery: every page loads; the image view shows the original and one overlay per method
    w.open(url)
    n_tiles = _walk_gallery(w)
    n_items = len(json.loads(page.inner_text("#gallery-data"))["items"])
    assert n_tiles == n_items
    page.select_option("#gallery-controls select[name=size]", "48")
    page.locator("#gallery-grid .tile").first.click()
    assert page.locator("#image-view").is_visible()
    captions = page.locator("#image-view figcaption.panels span").all_inner_texts()
    assert captions == ["image"] + methods, captions
    assert page.locator("#image-view .view-top tbody tr").count() >= 2
    # one overlay over its image: an opacity slider, a method choice, a colour bar, click to zoom
    layer = page.locator("#image-view .layered")
    assert layer.locator(".layer.top img").evaluate("i => i.complete && i.naturalWidth > 0")
    page.locator("#image-view input.opacity").fill("30")
    assert page.evaluate("getComputedStyle(document.querySelector('#image-view .layer.top')).opacity") == "0.3"
    assert page.locator("#image-view .colourbar .ramp").is_visible()
    assert page.locator("#image-view .layer-controls select option").all_inner_texts() == methods
    width = layer.bounding_box()["width"]
    layer.click()
    assert layer.bounding_box()["width"] == pytest.approx(2 * width, abs=2)
    assert page.locator("#image-view figure.strip-view img").bounding_box()["width"] >= 224 * len(captions)
    _assert_clean(w, "image view")
    page.screenshot(path=str(SHOTS / f"{shots}-image-view.png"))
    page.keyboard.press("Escape")
    assert not page.locator("#image-view").is_visible()

    # a filter narrows the gallery to one pair
    pair_option = page.locator("#gallery-controls select[name=pair] option").nth(1)
    pair = pair_option.get_attribute("value")
    page.select_option("#gallery-controls select[name=pair]", pair)
    labels = page.locator("#gallery-grid .tile .cap:not(.muted)").all_inner_texts()
    assert labels and len(set(labels)) <= 2  # misclassified "t → p" and low-confidence "t → t"
    return state


def _sandboxed(browser, run_dir: Path) -> None:
    """The report inside <iframe sandbox="allow-scripts">: no storage, opaque origin; still no error."""
    wrapper = run_dir / "sandbox.html"
    wrapper.write_text('<!DOCTYPE html><html><body><iframe sandbox="allow-scripts" src="index.html" '
                       'style="width:1200px;height:800px"></iframe></body></html>', encoding="utf-8")
    w = Watched(browser)
    w.open(wrapper.as_uri())
    frame = w.page.frames[1]
    frame.wait_for_load_state("load")
    assert frame.locator("#gallery-grid .tile").count() > 0
    bad = frame.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
    assert bad == 0
    assert not w.errors, w.errors[:5]
    wrapper.unlink()
    w.page.close()


# ---------------------------------------------------------------- synthetic run: hostile names

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from audit.report.render import render

    run_dir = build_run(tmp_path_factory.mktemp("browser"))
    render(run_dir)
    return run_dir


def test_synthetic_report_in_browser(browser, synthetic, capsys):
    w = Watched(browser)
    _check_report(w, synthetic, "synthetic", ["gradcam"])
    text = w.page.inner_text("body")
    assert EVIL in text and QUOTED in text          # shown as text, never run (no dialog above)
    w.open((synthetic / "index.html").as_uri() + f"#{F2}")
    assert w.page.evaluate("document.querySelector(':target').id") == F2
    assert w.page.locator(f"section#{F1}").count() == 1
    assert set(CLASSES) <= set(w.page.locator("table.cm tbody th[scope=row]").all_inner_texts())
    _sandboxed(browser, synthetic)
    with capsys.disabled():
        print(f"\n  screenshots: {SHOTS}/synthetic-*.png")


def test_folder_layout_in_browser(browser, tmp_path):
    from audit.report.render import render

    run_dir = build_run(tmp_path)
    render(run_dir, layout="folder")
    assert (run_dir / "assets").is_dir()
    w = Watched(browser)
    state = _check_report(w, run_dir, "folder", ["gradcam"])
    assert any(i["src"].startswith("assets/") for i in state["images"])


# ---------------------------------------------------------------- the size budget

def test_single_file_stays_within_its_budget(browser, tmp_path, capsys):
    """A run whose gallery alone is many times ``report.max_bytes`` (the benchmark's synthetic run, small):
    the single file stays within the budget, drawing the first pages' thumbnails and views and saying how
    to get the rest; in the browser the gallery pages, its thumbnails (cells of sprite sheets) decode at
    their size, tiles past the budget say so, and a click opens the image view."""
    from audit.report.render import render
    from benchmarks.report import build
    from tests.test_report import set_report_config

    run_dir = build(tmp_path / "big", n_selected=1200, n_rows=1300, n_classes=3, n_findings=2)
    budget = 2_000_000   # the findings, pair strips and plots of this run take 1.25 MB
    set_report_config(run_dir, max_bytes=budget)
    warnings: list[str] = []
    render(run_dir, warn=warnings.append)
    size = (run_dir / "index.html").stat().st_size
    assert size <= budget and not warnings, (size, warnings)
    assert size > 0.8 * budget            # what the budget leaves is spent on pictures, not left empty
    data = json.loads(next(iter(re.findall(r'id="gallery-data">(.*?)</script>',
                                           (run_dir / "index.html").read_text(encoding="utf-8"), re.S))))
    n_items, n_thumbs = len(data["items"]), sum(1 for it in data["items"] if it[-1])
    assert n_items == 1200 and 48 <= n_thumbs < n_items and 1 <= len(data["views"]) < 300

    w = Watched(browser)
    w.open((run_dir / "index.html").as_uri())
    page = w.page
    assert "report.max_bytes" in page.inner_text("#gallery-budget")
    assert page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") > 0
    page.locator("#gallery").scroll_into_view_if_needed()
    tiles = page.locator("#gallery-grid .tile")
    assert tiles.count() == 48
    assert page.evaluate("Array.from(document.querySelectorAll('#gallery-grid .tile img'))"
                         ".filter(i => i.complete && i.naturalWidth > 0).length") == 48
    box = tiles.first.locator(".thumb").bounding_box()
    assert (round(box["width"]), round(box["height"])) == (96, 96)   # one cell of its sheet, not the sheet
    page.screenshot(path=str(SHOTS / "budget-gallery.png"))
    tiles.first.click()
    assert page.locator("#image-view").is_visible()
    assert page.locator("#image-view figcaption.panels span").all_inner_texts() == ["image"] + METHODS
    _assert_clean(w, "image view of a report at its budget")
    page.screenshot(path=str(SHOTS / "budget-image-view.png"))
    page.keyboard.press("Escape")
    # past the thumbnails the file holds, a tile says so; paging still works
    page.select_option("#gallery-controls select[name=size]", "240")
    last = -(-n_items // 240)
    for _ in range(last - 1):
        page.click(".pager button[data-page='1']")
    assert page.inner_text("#gallery-info").startswith(f"page {last} of {last}")
    assert page.locator("#gallery-grid .tile img").count() == max(0, n_thumbs - (last - 1) * 240)
    assert "thumbnail not in this file" in page.locator("#gallery-grid .tile").last.inner_text()
    _assert_clean(w, "last gallery page")
    with capsys.disabled():
        print(f"\n  report at its budget: {size / 1e6:.2f} MB of {budget / 1e6:.2f} MB, {n_thumbs} thumbnails and "
              f"{len(data['views'])} views of {n_items} images; screenshots: {SHOTS}/budget-*.png")


# ---------------------------------------------------------------- the demo report

@pytest.fixture(scope="module")
def demo_run(demo_nights):
    """The demo as a user first runs it (``audit demo``, default settings): the README's night 1."""
    folder, story = demo_nights
    assert story.returncode == 0, story.stderr[-2000:]
    return folder / "reports" / "night1"


@pytest.mark.slow
def test_demo_report_in_browser(browser, demo_run, capsys):
    html = demo_run / "index.html"
    size = html.stat().st_size
    assert size <= 10_000_000, f"single-file demo report is {size} bytes"
    assert not (demo_run / "assets").exists()
    # the summary (verdict, gates, changes, top findings) fits one 1400x1000 screen
    w = Watched(browser, width=1400, height=1000)
    w.open(html.as_uri())
    assert w.page.locator("#verdict").get_attribute("data-state") == "cue_found"
    assert w.page.evaluate("document.querySelector('.summary-main').getBoundingClientRect().bottom") <= 1000
    w.page.screenshot(path=str(SHOTS / "demo-summary-1400x1000.png"))
    state = _check_report(w, demo_run, "demo", METHODS)
    assert len(state["images"]) > 20
    summary = json.loads((demo_run / "summary.json").read_text())
    top = summary["findings"][0]
    w.open(html.as_uri() + f"#{top['id']}")
    assert w.page.evaluate("document.querySelector(':target').id") == top["id"]
    # the exemplars of the top finding show one overlay per method
    captions = w.page.locator(f"section#{top['id']} .exemplar").first.locator("figcaption.panels span").all_inner_texts()
    assert captions == ["image"] + METHODS
    # trust: a badge row per method with the figures of summary.json, its plots decoded
    trust = w.page.locator("section#trust")
    assert trust.is_visible()
    rows = {r.get_attribute("data-method"): r for r in trust.locator("tr[data-method]").all()}
    assert set(rows) == set(METHODS)
    for method in METHODS:
        figures = summary["trust"]["methods"][method]
        assert rows[method].get_attribute("data-sanity") == str(figures["badge"]["sanity"]).lower()
        auc = f"{figures['faithfulness']['deletion_auc']:.3f}"
        # the figures sit behind the "details" toggle: read the row whether it is open or not
        assert auc in rows[method].text_content(), (method, auc, rows[method].text_content())
    assert trust.locator("img").count() >= 3
    trust.scroll_into_view_if_needed()
    w.page.screenshot(path=str(SHOTS / "demo-trust.png"))
    # model internals: reached from the top finding, its pictures decoded
    w.page.locator(f"section#{top['id']} a[href='#internals-{top['id']}']").click()
    assert w.page.evaluate("location.hash") == f"#internals-{top['id']}"
    entry = w.page.locator(f"section#internals-{top['id']}")
    assert entry.is_visible() and entry.locator("img").count() >= 3
    assert entry.evaluate("e => Array.from(e.querySelectorAll('img')).every(i => i.complete && i.naturalWidth > 0)")
    w.page.screenshot(path=str(SHOTS / "demo-internals.png"))
    _assert_clean(w, "trust and internals")
    _sandboxed(browser, demo_run)
    with capsys.disabled():
        print(f"\n  demo report: {size / 1e6:.2f} MB; screenshots: {SHOTS}/demo-*.png")
