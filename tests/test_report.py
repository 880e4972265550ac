"""The HTML report: rendered from a small synthetic run folder built here (no model, no TensorFlow)."""
from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw


from audit import artifacts  # noqa: E402
from audit.report import plots  # noqa: E402
from audit.report.render import render  # noqa: E402

EVIL = "<script>alert(1)</script>"
QUOTED = 'a "b" & c.png'
CLASSES = ["pool", "bathroom", EVIL]
INPUT = (32, 32)          # model input (H, W); the maps have this size
ORIGINAL = (48, 64)       # (H, W) of the image files: not the model's aspect ratio
PEAK = (8, 24)            # where the rails' maps peak, in map pixels (y, x)

# (file, label, predicted, confidence, cue) in manifest order; predicted None = unreadable
ROWS = [
    ("pool/p0.png", "pool", "bathroom", 0.81, 1),
    ("pool/p1.png", "pool", "bathroom", 0.77, 1),
    ("pool/p2.png", "pool", "bathroom", 0.64, 1),
    ("pool/p3.png", "pool", "pool", 0.91, 1),
    ("pool/p4.png", "pool", "pool", 0.97, 0),
    ("pool/p5.png", "pool", "pool", 0.52, 0),
    ("pool/p6.png", "pool", "pool", 0.95, 0),
    ("pool/p7.png", "pool", "pool", 0.99, 0),
    ("pool/broken.png", "pool", None, 0.0, 1),
    ("bathroom/b0.png", "bathroom", "bathroom", 0.96, 0),
    ("bathroom/b1.png", "bathroom", "bathroom", 0.88, 0),
    ("bathroom/b2.png", "bathroom", "bathroom", 0.93, 0),
    ("bathroom/b3.png", "bathroom", EVIL, 0.58, 0),
    (f"evil/{QUOTED}", EVIL, "pool", 0.71, 1),
    ("evil/e1.png", EVIL, EVIL, 0.90, 0),
    ("evil/e2.png", EVIL, EVIL, 0.86, 1),
]
BROKEN_ERROR = "UnidentifiedImageError: cannot identify image file 'broken.png'"
# readable (true, predicted) -> count
EXPECTED_CONFUSION = {
    ("pool", "pool"): 5, ("pool", "bathroom"): 3,
    ("bathroom", "bathroom"): 3, ("bathroom", EVIL): 1,
    (EVIL, EVIL): 2, (EVIL, "pool"): 1,
}
RAILS = [0, 1, 2]                 # rows of finding 1 (pool -> bathroom)
F1, F2 = "F-3fa2c1", "F-00b7e2"


def _image(label: str, rails: bool, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    h, w = ORIGINAL
    base = {"pool": (40, 120, 200), "bathroom": (225, 225, 215)}.get(label, (120, 80, 140))
    arr = np.clip(np.array(base, float) + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr)
    if rails:  # two silver bars around the map peak (map -> image: scale each axis)
        cy, cx = PEAK[0] * h / INPUT[0], PEAK[1] * w / INPUT[1]
        d = ImageDraw.Draw(im)
        for dx in (-5, 3):
            d.rectangle((cx + dx, cy - 8, cx + dx + 2, cy + 8), fill=(200, 200, 210))
        d.rectangle((cx - 6, cy - 3, cx + 6, cy - 2), fill=(200, 200, 210))
    return im


def _cam(peak: tuple[int, int], scale: float) -> np.ndarray:
    yy, xx = np.mgrid[0:INPUT[0], 0:INPUT[1]]
    return (scale * np.exp(-((yy - peak[0]) ** 2 + (xx - peak[1]) ** 2) / 18.0)).astype(np.float32)


def build_run(root: Path, with_maps: bool = True) -> Path:
    """A finished run folder with every artifact the report reads; returns the run folder.

    Images go to ``root/data`` (the manifest root), the run to ``root/run``.
    """
    data_root, run_dir = root / "data", root / "run"
    run_dir.mkdir(parents=True)
    records = []
    for row, (path, label, predicted, conf, cue) in enumerate(ROWS):
        file = data_root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        error = None
        if predicted is None:
            file.write_bytes(b"this is not a png")
            error = BROKEN_ERROR
        else:
            _image(label, row in RAILS, row).save(file)
        others = [c for c in CLASSES if c != predicted]
        probs = [0.0] * len(CLASSES)
        if predicted is not None:
            probs[CLASSES.index(predicted)] = conf
            probs[CLASSES.index(others[0])] = round(1 - conf - 0.01, 4)
            probs[CLASSES.index(others[1])] = 0.01
        records.append({
            "row": row, "path": path, "label": label, "label_idx": CLASSES.index(label),
            "predicted": predicted, "predicted_idx": CLASSES.index(predicted) if predicted else -1,
            "confidence": conf if predicted else float("nan"),
            "margin": (conf - (1 - conf - 0.01)) if predicted else float("nan"),
            "runner_up": others[0] if predicted else None, "probs": probs, "error": error,
            "cue": cue, "source": "web" if row % 2 else "camera", "tags": ["a", str(row)],
        })
    pred = pd.DataFrame(records)
    artifacts.write_table(run_dir / artifacts.PREDICTIONS, pred)

    sel_rows = {0: "misclassified", 1: "misclassified", 2: "misclassified", 12: "misclassified",
                13: "misclassified", 5: "low_confidence", 4: "contrast", 7: "contrast"}
    sel = pred.loc[list(sel_rows)].copy()
    sel["reason"] = [sel_rows[r] for r in sel["row"]]
    sel["true_label"] = sel["label"]
    sel["pair_label"] = [p if reason != "low_confidence" else ru
                         for p, ru, reason in zip(sel["predicted"], sel["runner_up"], sel["reason"])]
    sel.loc[sel["reason"] == "contrast", "pair_label"] = "bathroom"
    sel["pair"] = sel["true_label"] + " -> " + sel["pair_label"]
    artifacts.write_table(run_dir / artifacts.SELECTION, sel.reset_index(drop=True))

    if with_maps:  # two chunks, not in row order
        cams = {r: _cam(PEAK, 3.0 + r) for r in RAILS}
        cams.update({13: _cam((24, 6), 0.02), 12: _cam((16, 16), 1.0), 5: _cam((4, 4), 2.0),
                     4: _cam((20, 20), 1.0), 7: _cam((28, 10), 1.0)})
        keys = sorted(cams)
        first, second = keys[4:], keys[:4]
        artifacts.write_map_chunk(run_dir, "gradcam", 0, np.array(first), np.stack([cams[r] for r in first]))
        artifacts.write_map_chunk(run_dir, "gradcam", 1, np.array(second), np.stack([cams[r] for r in second]))

    disc = pd.DataFrame({
        "row": [0, 1, 2, 13, 4, 7, 12],
        "path": [ROWS[r][0] for r in (0, 1, 2, 13, 4, 7, 12)],
        "pair": ["pool -> bathroom"] * 3 + [f"{EVIL} -> pool", "pool -> bathroom", "pool -> bathroom",
                                           f"bathroom -> {EVIL}"],
        "true_label": ["pool"] * 3 + [EVIL, "pool", "pool", "bathroom"],
        "predicted_label": ["bathroom"] * 3 + ["pool", "pool", "pool", EVIL],
        "cluster": [0, 0, 0, 1, -1, -1, -1],
        "finding_id": [F1, F1, F1, F2, None, None, None],
        "is_contrast": [False, False, False, False, True, True, False],
        "x": [0.1, 0.2, 0.15, 2.0, 0.5, 0.6, 1.2], "y": [1.0, 1.1, 0.9, -1.0, 0.4, 0.2, 0.0],
    })
    artifacts.write_table(run_dir / artifacts.DISCOVERY, disc)

    summary = {
        "run_id": "run-test-001", "status": "fail",
        "metrics": {"n_images": 16, "n_unreadable": 1, "accuracy": 10 / 15, "n_selected": 8},
        "findings": [
            {"id": F1, "rank": 1, "true_label": "pool", "predicted_label": "bathroom", "size": 3,
             "score": 2.5, "coherence": 0.83, "members": [ROWS[r][0] for r in RAILS], "rows": RAILS,
             "n_errors": 3, "exemplars": [ROWS[1][0], ROWS[0][0]]},
            {"id": F2, "rank": 2, "true_label": EVIL, "predicted_label": "pool", "size": 1,
             "score": 0.5, "coherence": 1.0, "members": [ROWS[13][0]], "rows": [13],
             "n_errors": 1, "exemplars": [ROWS[13][0]]},
        ],
        "gates": [{"name": "accuracy", "passed": False, "value": 10 / 15, "threshold": 0.9},
                  {"name": "max_finding_size", "passed": True, "value": 3, "threshold": 10}],
    }
    artifacts.write_json(run_dir / artifacts.SUMMARY, summary)
    run = {
        "run_id": "run-test-001", "created": "2025-01-01T12:00:00+00:00",
        "config": {"select": {"low_confidence": 0.6}, "note": EVIL},
        "versions": {"python": "3.11.7", "tensorflow": "2.x", "cnn-audit": "0.1"},
        "model": {"path": "/models/m.keras", "sha256": "ab" * 32, "input_size": list(INPUT),
                  "target_layer": "conv5", "logits": "softmax stripped"},
        "data": {"path": str(data_root / "manifest.csv"), "root": str(data_root), "sha256": "cd" * 32,
                 "n_rows": len(ROWS)},
        "classes": CLASSES,
        "timings": {"predict": 1.5, "select": 0.01, "attribute": 3.2, "discover": 0.4},
    }
    artifacts.write_json(run_dir / artifacts.RUN_JSON, run)
    return run_dir


class _Page(HTMLParser):
    """Tags with attributes, element ids, and the page's visible text (entities decoded)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: (v or "") for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)

    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.tags if "id" in a}

    def find(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.tags if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    run_dir = build_run(tmp_path_factory.mktemp("report"))
    index = render(run_dir)
    html = index.read_text(encoding="utf-8")
    return run_dir, index, html, _Page(html)


def test_render_writes_index(rendered):
    run_dir, index, html, page = rendered
    assert index == run_dir / "index.html"
    assert html.startswith("<!DOCTYPE html>")
    assert "run-test-001" in html
    verdict = [a for t, a in page.tags if a.get("id") == "verdict"]
    assert verdict and "fail" in verdict[0]["class"].split()
    metrics = {a["data-metric"] for a in page.find("div") if "data-metric" in a}
    assert {"n_images", "n_unreadable", "accuracy", "n_selected"} <= metrics
    assert "66.7%" in html  # accuracy 10/15


def test_finding_sections_and_anchors(rendered):
    _, _, html, page = rendered
    sections = {a["id"] for a in page.find("section") if "id" in a}
    assert {F1, F2} <= sections
    assert f'href="#{F1}"' in html and f'href="#{F2}"' in html
    # ranked: finding 1 before finding 2
    assert html.index(f'<section class="finding" id="{F1}"') < html.index(f'<section class="finding" id="{F2}"')


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_montage_and_overlays_exist_are_referenced_and_valid(rendered):
    run_dir, _, _, page = rendered
    srcs = [a["src"] for a in page.find("img")]
    assert srcs and all(s.startswith("assets/") for s in srcs)
    for s in srcs:
        assert (run_dir / s).is_file(), s
    montage = f"assets/{F1}-montage.png"
    assert montage in srcs
    assert _png_size(run_dir / montage) == plots.montage_shape(len(RAILS)) == (3 * 128 + 2 * plots.GAP, 128)
    assert _png_size(run_dir / f"assets/{F2}-montage.png") == (128, 128)
    for r in (0, 1, 13):  # exemplars: image + overlay at the model's aspect, 128 px
        for kind in ("image", "overlay"):
            name = f"assets/row-{r}-{kind}.png"
            assert name in srcs
            assert _png_size(run_dir / name) == (128, 128)
    assert "assets/row-2-overlay.png" not in srcs  # a member, not an exemplar
    assert _png_size(run_dir / f"assets/{F1}-mean.png")[0] > 50
    assert "assets/confidence.png" in srcs and "assets/embedding.png" in srcs


def test_montage_tiles_show_the_cue(rendered):
    """The first tile is cut around the map peak: it holds the silver rails, the pool around them is blue."""
    run_dir = rendered[0]
    with Image.open(run_dir / f"assets/{F1}-montage.png") as im:
        tile = np.asarray(im.convert("RGB"))[:, :128].astype(int)
    grey = (np.abs(tile[..., 0] - tile[..., 2]) < 30) & (tile[..., 0] > 150)
    assert grey.mean() > 0.1  # rails
    whole = np.asarray(_image("pool", True, 0)).astype(int)
    assert ((np.abs(whole[..., 0] - whole[..., 2]) < 30) & (whole[..., 0] > 150)).mean() < grey.mean() / 2


def test_asset_names_are_safe(rendered):
    run_dir = rendered[0]
    names = [p.name for p in (run_dir / "assets").iterdir()]
    assert names and all(re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in names), names


def test_confusion_matrix_counts(rendered):
    _, _, html, page = rendered
    cells = {(a["data-true"], a["data-pred"]): int(a["data-count"]) for a in page.find("td") if "data-count" in a}
    for t in CLASSES:
        for p in CLASSES:
            assert cells[(t, p)] == EXPECTED_CONFUSION.get((t, p), 0), (t, p)
    ids = page.ids()
    assert "pair-pool--bathroom" in ids
    assert "pair-bathroom--script-alert-1-script" in ids
    assert "pair-script-alert-1-script--pool" in ids
    assert "pair-pool--pool" not in ids            # diagonal: no pair anchor
    assert "pair-bathroom--pool" not in ids         # zero count: no anchor
    # the pair's finding is linked from its cell
    cell = re.search(r'<td id="pair-pool--bathroom".*?</td>', html, re.S).group(0)
    assert f'href="#{F1}"' in cell
    assert 'href="#pair-pool--bathroom"' in html    # and back from the finding


def test_escaping(rendered):
    _, _, html, page = rendered
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert QUOTED not in html
    assert "<script" not in html.lower()
    text = "".join(page.text)
    assert EVIL in text and QUOTED in text  # shown as text once decoded
    assert any(a.get("title") == f"evil/{QUOTED}" for a in page.find("img"))  # attribute values decode back


def test_slices_show_accuracy(rendered):
    _, _, html, page = rendered
    cells = {(a["data-label"], a["data-value"]): a for a in page.find("td") if "data-acc" in a}
    # pools with the cue (rails): 1 of 4 readable right; without: 4 of 4
    assert cells[("pool", "1")]["data-acc"] == "0.2500" and cells[("pool", "1")]["data-n"] == "4"
    assert cells[("pool", "0")]["data-acc"] == "1.0000" and cells[("pool", "0")]["data-n"] == "4"
    assert cells[(EVIL, "1")]["data-acc"] == "0.5000"
    assert 'data-column="cue"' in html and 'data-column="source"' in html
    assert "25.0%" in html
    assert 'data-column="tags"' not in html  # list column: not sliced


def test_selection_unreadable_and_metadata(rendered):
    _, _, html, page = rendered
    sel = re.search(r'<table class="selection">.*?</table>', html, re.S).group(0)
    rows = {re.sub(r"<[^>]+>", "", head): re.findall(r'<td class="n">(\d*)</td>', rest)
            for head, rest in re.findall(r"<tr[^>]*><td>(.*?)</td>(.*?)</tr>", sel, re.S)}
    assert rows["pool&rarr;bathroom"] == ["3", "1", "2", "6"]  # misclassified, low confidence, contrast, total
    assert rows["bathroom&rarr;&lt;script&gt;alert(1)&lt;/script&gt;"] == ["1", "", "", "1"]
    assert rows["total"] == ["5", "1", "2", "8"]
    unread = re.search(r'<table class="unreadable">.*?</table>', html, re.S).group(0)
    assert "pool/broken.png" in unread and "UnidentifiedImageError" in unread
    assert "ab" * 32 in html and "cd" * 32 in html
    assert "conv5" in html and "attribute" in html and "3.2 s" in html and "10 ms" in html
    assert '&#34;low_confidence&#34;: 0.6' in html  # config as pretty JSON


def test_offline_and_no_script(rendered):
    _, _, html, _ = rendered
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "@import" not in html and "url(" not in html


def test_rerender_is_stable_and_prunes(rendered):
    run_dir, index, html, _ = rendered
    stale = run_dir / "assets" / "row-999-overlay.png"
    stale.write_bytes(b"old")
    assert render(run_dir).read_text(encoding="utf-8") == html
    assert not stale.exists()


def test_partial_run_folder_renders(tmp_path):
    run_dir = build_run(tmp_path, with_maps=False)
    for name in (artifacts.DISCOVERY, artifacts.SELECTION):
        (run_dir / name).unlink()
    html = render(run_dir).read_text(encoding="utf-8")
    page = _Page(html)
    assert {F1, F2} <= page.ids()
    assert "no attribution maps" in html and "discovery.parquet is missing" in html
    assert not list((run_dir / "assets").glob("*montage*"))


def test_render_does_not_import_tensorflow(tmp_path):
    run_dir = build_run(tmp_path)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from audit.report.render import render\n"
        f"render(Path({str(run_dir)!r}))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
    assert (run_dir / "index.html").is_file()


def test_montage_is_capped(tmp_path, monkeypatch):
    import audit.report.render as render_module

    monkeypatch.setattr(render_module, "MAX_MONTAGE", 2)
    run_dir = build_run(tmp_path)
    html = render(run_dir).read_text(encoding="utf-8")
    assert _png_size(run_dir / f"assets/{F1}-montage.png") == plots.montage_shape(2) == (2 * 128 + plots.GAP, 128)
    assert "the first 2 of the 3 members" in html


def test_peak_box_and_normalise():
    cam = np.zeros((30, 30), np.float32)
    cam[0, 29] = 5.0  # peak in a corner: the box is shifted inside the map
    assert plots.peak_box(cam) == (0, 20, 10, 30)
    cam = np.zeros((30, 30), np.float32)
    cam[15, 15] = 1.0
    assert plots.peak_box(cam) == (10, 10, 20, 20)
    assert plots.peak_box(np.zeros((30, 30), np.float32)) == (10, 10, 20, 20)  # flat: centred
    assert not plots.normalise(np.full((4, 4), 3.0)).any()
    signed = plots.normalise(np.array([[-2.0, 0.0], [2.0, np.nan]]))
    assert signed.min() == 0.0 and signed.max() == 1.0


# ---------------------------------------------------------------- model internals section

def _internals_run(root: Path, missing: str | None = None) -> Path:
    """The synthetic run plus an ``internals/`` folder as the internals stage writes it."""
    from audit.internals import grids

    run_dir = build_run(root)
    folder = run_dir / "internals"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pictures = {"class-0.png": grids.tile(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), 128),
                "class-1.png": grids.tile(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), 128),
                "conv5-channel-7-filter.png": grids.tile(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), 128),
                "conv5-channel-7-patches.png": grids.square_grid([rng.integers(0, 255, (9, 9, 3), dtype=np.uint8)] * 9),
                f"{F1}-row-1-activations.png": grids.activation_grid(
                    rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), [[rng.uniform(0, 1, (8, 8))] * 3] * 2)}
    for name, picture in pictures.items():
        if name != missing:
            (folder / name).write_bytes(grids.png(picture))
    index = {"key": "k", "enabled": True, "layer": "conv5", "layers": ["conv1", "conv5"], "scanned_images": 15,
             "classes": {"0": {"name": "pool", "image": "class-0.png", "logit_start": -1.0, "logit_end": 9.5,
                               "probability": 0.99},
                         "1": {"name": "bathroom", "image": "class-1.png", "logit_start": -2.0, "logit_end": 12.0,
                               "probability": 1.0}},
             "channels": {"7": {"layer": "conv5", "filter": "conv5-channel-7-filter.png", "mean_start": 0.1,
                                "mean_end": 3.2, "patches": "conv5-channel-7-patches.png", "patch_rows": [0, 1, 2]}},
             "findings": [{"id": F1, "rank": 1, "true_label": "pool", "predicted_label": "bathroom",
                           "n_members_used": 3, "classes": [0, 1], "channels": [{"channel": 7, "score": 0.5}],
                           "activations": [{"row": 1, "path": ROWS[1][0], "predicted": "bathroom",
                                            "image": f"{F1}-row-1-activations.png",
                                            "layers": [{"layer": "conv1", "channels": [3], "attribution": [0.2]},
                                                       {"layer": "conv5", "channels": [7], "attribution": [0.5]}]}]}]}
    artifacts.write_json(folder / "index.json", index)
    return run_dir


def _internals_images(html: str) -> list[str]:
    start = html.index('<h2 id="internals">')
    return re.findall(r'<img[^>]* src="([^"]+)"', html[start:html.index('<h2 id="confusion">', start)])


def test_internals_section_is_linked_from_its_finding(tmp_path):
    run_dir = _internals_run(tmp_path)
    html = render(run_dir).read_text(encoding="utf-8")
    page = _Page(html)
    assert f"internals-{F1}" in page.ids() and f"internals-{F2}" not in page.ids()
    finding = html[html.index(f'<section class="finding" id="{F1}"'):html.index(f'<section class="finding" id="{F2}"')]
    assert f'href="#internals-{F1}"' in finding
    assert f'href="#internals-{F2}"' not in html
    srcs = _internals_images(html)
    assert len(srcs) == 5                                    # 2 classes, filter + patches, 1 activation grid
    for src in srcs:
        assert _png_size(run_dir / src)[0] > 0
    assert "bathroom" in html[html.index('<h2 id="internals">'):] and "score 0.5000" in html


def test_internals_section_absent_without_internals(rendered):
    _, _, html, page = rendered
    assert "internals" not in page.ids() and 'href="#internals' not in html


def test_internals_missing_picture_is_a_note_not_a_broken_image(tmp_path):
    run_dir = _internals_run(tmp_path, missing="conv5-channel-7-patches.png")
    html = render(run_dir).read_text(encoding="utf-8")
    assert len(_internals_images(html)) == 4
    assert "internals/conv5-channel-7-patches.png" in html


def _chromium() -> str | None:
    import shutil

    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


CHECK_IMAGES = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.querySelectorAll("#internals ~ section.internals img"));
  const out = document.createElement("pre"); out.id = "image-check";
  out.textContent = JSON.stringify(imgs.map(i => [i.getAttribute("src"), i.complete, i.naturalWidth]));
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on this machine")
def test_internals_images_load_in_a_browser(tmp_path):
    import json

    run_dir = _internals_run(tmp_path)
    html = render(run_dir).read_text(encoding="utf-8")
    probe = run_dir / "probe.html"                           # beside index.html: the same relative srcs
    probe.write_text(html.replace("</body>", CHECK_IMAGES + "</body>"), encoding="utf-8")
    done = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="image-check">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-500:]
    images = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert len(images) == 5
    assert all(complete and width > 0 for _, complete, width in images), images
