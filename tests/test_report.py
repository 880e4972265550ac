"""The HTML report and its short forms, rendered from a small synthetic run folder built here
(no model, no TensorFlow). Class ``<script>alert(1)</script>`` and file ``a "b" & c.png`` are
hostile on purpose: they must come out as text, never as markup."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import xml.etree.ElementTree as ET
import sys
import tracemalloc
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw


from audit import artifacts  # noqa: E402
from audit.errors import UsageError  # noqa: E402
from audit.report import plots  # noqa: E402
from audit.report import findings as findings_module  # noqa: E402
from audit.report.loading import Run  # noqa: E402
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



def set_report_config(run_dir: Path, **report) -> None:
    """Change ``report.*`` settings in the run's recorded config (what `audit render` reads)."""
    run = artifacts.read_json(run_dir / artifacts.RUN_JSON)
    run["config"].setdefault("report", {}).update(report)
    artifacts.write_json(run_dir / artifacts.RUN_JSON, run)


class _Page(HTMLParser):
    """Tags with attributes, element ids, and the page's visible text (entities decoded)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.scripts: list[tuple[dict, str]] = []
        self._in_script: dict | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "script":
            self._in_script = a

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = None

    def handle_data(self, data):
        if self._in_script is not None:
            self.scripts.append((self._in_script, data))
        else:
            self.text.append(data)

    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.tags if "id" in a}

    def find(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.tags if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def gallery_data(self) -> dict:
        return json.loads(next(d for a, d in self.scripts if a.get("id") == "gallery-data"))

    def gallery(self) -> list[dict]:
        """The gallery's items as the page's script reads them: names for indexes, ``thumb`` the src of the
        item's sprite sheet (``cell``: its [x, y, w, h] there), ``view`` and ``error`` by row."""
        data = self.gallery_data()
        items = []
        for a in data["items"]:
            f = dict(zip(data["fields"], a))
            name = (lambda i: None if i is None else data["classes"][i])
            items.append({"row": f["row"], "path": f["path"], "label": name(f["label"]),
                          "predicted": name(f["predicted"]), "confidence": f["confidence"], "margin": f["margin"],
                          "reason": data["reasons"][f["reason"]], "pair": f"{name(f['true'])}\u2192{name(f['other'])}",
                          "pair_anchor": data["pair_anchors"].get(f"{f['true']},{f['other']}"),
                          "finding": None if f["finding"] is None else data["findings"][f["finding"]][0],
                          "finding_anchor": None if f["finding"] is None else data["findings"][f["finding"]][1],
                          "top": [[name(c), p] for c, p in zip(f["top"][::2], f["top"][1::2])],
                          "thumb": data["sheets"][f["thumb"][0]] if f["thumb"] else None,
                          "cell": f["thumb"][1:] if f["thumb"] else None,
                          "view": data["views"].get(str(f["row"])), "error": data["errors"].get(str(f["row"]))})
        return items


def _decode(src: str, run_dir: Path | None = None) -> Image.Image:
    """The picture behind an img src: a data URI, or a file relative to the run folder."""
    if src.startswith("data:"):
        head, payload = src.split(",", 1)
        assert head in ("data:image/jpeg;base64", "data:image/png;base64"), head
        im = Image.open(io.BytesIO(base64.b64decode(payload)))
    else:
        im = Image.open(run_dir / src)
    im.load()
    return im


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
    gate_status = [a for t, a in page.tags if a.get("id") == "gate-status"]
    assert gate_status and "fail" in gate_status[0]["class"].split()
    verdict = [a for t, a in page.tags if a.get("id") == "verdict"]
    assert verdict and verdict[0]["data-state"] in ("cue_found", "suspicious")
    metrics = {a["data-metric"] for a in page.find("div") if "data-metric" in a}
    assert {"n_images", "n_unreadable", "accuracy", "n_selected"} <= metrics
    assert "66.7%" in html  # accuracy 10/15
    # the summary comes first: verdict, gates, changes, top findings before any finding section
    assert html.index('id="verdict"') < html.index('id="gate-status"') < html.index('id="gates"') < html.index('id="changes"') \
        < html.index('id="top-findings"') < html.index(f'id="{F1}"')
    assert "No baseline" in html


def test_finding_sections_and_anchors(rendered):
    _, _, html, page = rendered
    sections = {a["id"] for a in page.find("section") if "id" in a}
    assert {F1, F2} <= sections
    assert f'href="#{F1}"' in html and f'href="#{F2}"' in html
    assert html.index(f'<section class="finding" id="{F1}"') < html.index(f'<section class="finding" id="{F2}"')
    ids = page.ids()
    for a in page.find("a"):
        if a.get("href", "").startswith("#"):
            assert a["href"][1:] in ids, a["href"]


def test_single_file_is_self_contained(rendered):
    run_dir, _, html, page = rendered
    assert not (run_dir / "assets").exists()
    srcs = [a["src"] for a in page.find("img")]
    assert len(srcs) > 10 and all(s.startswith(("data:image/jpeg;base64,", "data:image/png;base64,")) for s in srcs)
    for forbidden in ("http://", "https://", "//fonts", "<link", "@import", "url(", "localStorage",
                      "sessionStorage", "fetch(", "XMLHttpRequest", "<iframe", "file://"):
        assert forbidden not in html, forbidden
    csp = page.find("meta", http_equiv="Content-Security-Policy")
    assert csp and "img-src data:;" in csp[0]["content"] and "default-src 'none'" in csp[0]["content"]
    # every gallery thumbnail and image-view picture is a data URI too
    for item in page.gallery():
        assert item["thumb"].startswith("data:image/jpeg;base64,")
        if item["view"]:
            assert item["view"]["src"].startswith("data:image/jpeg;base64,")


def test_montage_shows_the_cue(rendered):
    """The first tile is cut around the map peak: it holds the silver rails, the pool around them is blue."""
    _, _, _, page = rendered
    src = page.find("img", alt=f"cue montage of {F1}")[0]["src"]
    im = _decode(src)
    assert im.size == plots.montage_shape(len(RAILS)) == (3 * 128 + 2 * plots.GAP, 128)
    tile = np.asarray(im.convert("RGB"))[:, :128].astype(int)
    grey = (np.abs(tile[..., 0] - tile[..., 2]) < 30) & (tile[..., 0] > 150)
    assert grey.mean() > 0.1  # rails
    whole = np.asarray(_image("pool", True, 0)).astype(int)
    assert ((np.abs(whole[..., 0] - whole[..., 2]) < 30) & (whole[..., 0] > 150)).mean() < grey.mean() / 2
    assert _decode(page.find("img", alt=f"cue montage of {F2}")[0]["src"]).size == (128, 128)


def test_exemplars_show_one_overlay_per_method(rendered):
    _, _, html, page = rendered
    for r in (0, 1, 13):
        strip = page.find("img", alt=f"image, gradcam of {ROWS[r][0]}")
        assert len(strip) == 1, r
        # one panel per picture (the model's square aspect, at most the original's longer side), 2 px apart
        assert _decode(strip[0]["src"]).size == (2 * 64 + plots.GAP, 64)
    panels = re.findall(r'<figcaption class="panels">(.*?)</figcaption>', html)
    assert panels and all(p == "<span>image</span><span>gradcam</span>" for p in panels)
    assert "image, gradcam of pool/p2.png" not in html  # a member, not an exemplar
    # the overlay panel is coloured by the map: redder (jet) at its peak than far from it
    im = np.asarray(_decode(page.find("img", alt=f"image, gradcam of {ROWS[0][0]}")[0]["src"]).convert("RGB")).astype(int)
    redness = im[..., 0] - im[..., 2]
    x0 = 64 + plots.GAP
    assert redness[PEAK[0] * 2, x0 + PEAK[1] * 2] > redness[60, x0 + 4] + 80


def test_confusion_matrix_links_to_pair_sections(rendered):
    _, _, html, page = rendered
    cells = {(a["data-true"], a["data-pred"]): int(a["data-count"]) for a in page.find("td") if "data-count" in a}
    for t in CLASSES:
        for p in CLASSES:
            assert cells[(t, p)] == EXPECTED_CONFUSION.get((t, p), 0), (t, p)
    sections = {a["id"]: a for a in page.find("section", **{"class": "pair-section"})}
    assert set(sections) == {"pair-pool--bathroom", "pair-bathroom--script-alert-1-script",
                             "pair-script-alert-1-script--pool"}
    assert sections["pair-script-alert-1-script--pool"]["data-true"] == EVIL
    links = {a["href"] for a in page.find("a", **{"class": "cell"})}
    assert links == {"#" + k for k in sections}   # diagonal and empty cells have no link
    pair = re.search(r'<section class="pair-section" id="pair-pool--bathroom".*?</section>', html, re.S).group(0)
    assert f'href="#{F1}"' in pair and "3 of 8" in pair and "37.5%" in pair
    assert pair.count("data-open-row=") == 3      # its three errors, most confident first
    rows = re.findall(r'data-open-row="(\d+)"', pair)
    assert rows == ["0", "1", "2"]
    finding = re.search(rf'<section class="finding" id="{F1}".*?</section>', html, re.S).group(0)
    assert 'href="#pair-pool--bathroom"' in finding  # and back from the finding


def test_escaping(rendered):
    run_dir, _, html, page = rendered
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert QUOTED not in html
    assert html.lower().count("<script") == 2  # the page's own script and the gallery's JSON, nothing else
    text = "".join(page.text)
    assert EVIL in text and QUOTED in text  # shown as text once decoded
    assert any(a.get("title") == f"evil/{QUOTED}" for a in page.find("img"))  # attribute values decode back
    raw_json = next(d for a, d in page.scripts if a.get("id") == "gallery-data")
    assert "\\u003cscript\\u003e" in raw_json and "<" not in raw_json and "&" not in raw_json
    items = {it["row"]: it for it in page.gallery()}
    assert items[13]["path"] == f"evil/{QUOTED}" and items[13]["label"] == EVIL
    assert items[12]["predicted"] == EVIL


def test_gallery_items_and_image_views(rendered):
    _, _, _, page = rendered
    items = page.gallery()
    # misclassified and low-confidence rows, never contrast; finding members first (by rank)
    assert sorted(it["row"] for it in items) == [0, 1, 2, 5, 12, 13]
    assert [it["row"] for it in items][:4] == [0, 1, 2, 13]
    by_row = {it["row"]: it for it in items}
    assert by_row[0]["finding"] == F1 and by_row[13]["finding"] == F2 and by_row[5]["finding"] is None
    assert by_row[5]["reason"] == "low_confidence" and by_row[0]["reason"] == "misclassified"
    assert by_row[0]["pair"] == "pool\u2192bathroom" and by_row[0]["pair_anchor"] == "pair-pool--bathroom"
    assert by_row[0]["top"][0] == ["bathroom", 0.81] and len(by_row[0]["top"]) == 3
    assert by_row[0]["view"]["panels"] == ["image", "gradcam"]
    assert by_row[5]["view"]["panels"] == ["image", "gradcam"] == by_row[12]["view"]["panels"]
    assert _decode(by_row[0]["view"]["src"]).size == (2 * 64 + plots.GAP, 64)
    assert by_row[0]["confidence"] == pytest.approx(0.81)


def test_calibration_ece(rendered):
    _, _, html, page = rendered
    readable = [(conf, label == pred) for _, label, pred, conf, _ in ROWS if pred is not None]
    bins = np.linspace(0, 1, 16)
    ece = 0.0
    for lo, hi in zip(bins[:-1], bins[1:]):
        inside = [(c, ok) for c, ok in readable if (lo <= c < hi) or (hi == 1.0 and c == 1.0)]
        if inside:
            ece += len(inside) / len(readable) * abs(np.mean([ok for _, ok in inside]) - np.mean([c for c, _ in inside]))
    shown = float(page.find("strong", **{"data-ece": next(a["data-ece"] for a in page.find("strong") if "data-ece" in a)})[0]["data-ece"])
    assert shown == pytest.approx(ece, abs=1e-4)
    assert page.find("img", alt="reliability diagram") and page.find("img", alt="confidence histogram, correct vs. wrong")


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


def test_summary_markdown(rendered):
    run_dir = rendered[0]
    md = (run_dir / "summary.md").read_text(encoding="utf-8")
    assert md.startswith("## cnn-audit run-test-001: **FAIL**")
    assert "1 of 2 gate(s) failed: accuracy." in md
    assert "| accuracy | 0.667 | 0.900 | **FAIL** |" in md
    assert "| max\\_finding\\_size | 3 | 10 | pass |" in md
    assert f"| 1 | {F1} | pool → bathroom | 3 | 2.500 |" in md
    assert f"| 2 | {F2} | &lt;script&gt;alert(1)&lt;/script&gt; → pool |" in md
    assert "<script" not in md
    assert "No baseline" in md


def test_junit_xml(rendered):
    run_dir = rendered[0]
    root = ET.parse(run_dir / "junit.xml").getroot()
    suite = root.find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {"verdict", "accuracy", "max_finding_size"}   # the verdict: never an empty suite
    assert cases["verdict"].find("failure") is None and "pool called bathroom" in cases["verdict"].findtext("system-out")
    assert cases["accuracy"].find("failure") is not None
    assert "0.667" in cases["accuracy"].find("failure").get("message")
    assert cases["max_finding_size"].find("failure") is None


def test_junit_and_markdown_escape_hostile_gate_names(tmp_path):
    run_dir = build_run(tmp_path)
    summary = artifacts.read_json(run_dir / artifacts.SUMMARY)
    summary["gates"].append({"name": f'{EVIL} "q" & |pipe|\x01', "passed": False, "value": 1, "threshold": 0})
    artifacts.write_json(run_dir / artifacts.SUMMARY, summary)
    render(run_dir)
    root = ET.parse(run_dir / "junit.xml").getroot()
    names = [c.get("name") for c in root.iter("testcase")]
    assert f'{EVIL} "q" & |pipe|' in names     # escaped in the file, decoded back by the parser
    assert "<script>" not in (run_dir / "junit.xml").read_text(encoding="utf-8")
    md = (run_dir / "summary.md").read_text(encoding="utf-8")
    assert "| &lt;script&gt;alert(1)&lt;/script&gt; \"q\" &amp; \\|pipe\\| | 1 | 0 | **FAIL** |" in md


def test_changes_since_baseline(tmp_path):
    run_dir = build_run(tmp_path)
    summary = artifacts.read_json(run_dir / artifacts.SUMMARY)
    summary["baseline"] = {"run_id": "night-41", "run_dir": "reports/night-41"}
    summary["findings"][0].update(status="new", triage=None)
    summary["findings"][1].update(status="persisting", triage="acknowledged")
    summary["resolved"] = [{"id": "F-gone0001", "true_label": "bathroom", "predicted_label": "pool", "size": 4,
                            "score": 0.7}]
    summary["pairs"] = [
        {"true_label": "pool", "predicted_label": "bathroom", "n_true": 8, "n_confused": 3, "error_rate": 0.375,
         "baseline_error_rate": 0.125},
        {"true_label": EVIL, "predicted_label": "pool", "n_true": 3, "n_confused": 1, "error_rate": 1 / 3,
         "baseline_error_rate": None},
        {"true_label": "bathroom", "predicted_label": EVIL, "n_true": 4, "n_confused": 1, "error_rate": 0.25,
         "baseline_error_rate": 0.25},
    ]
    artifacts.write_json(run_dir / artifacts.SUMMARY, summary)
    html = render(run_dir).read_text(encoding="utf-8")
    page = _Page(html)
    changes = re.search(r'<h2 id="changes">.*?<h2 id="top-findings">', html, re.S).group(0)
    assert 'data-baseline="night-41"' in changes
    assert "<strong>1</strong> new, 1 persisting, 1 resolved" in changes
    assert f'href="#{F1}"' in changes and "F-gone0001" in changes
    assert "+25.0 pt" in changes and "new pair" in changes   # unchanged pairs are not listed
    assert changes.count("<tr>") == 3  # heading + the two changed pairs
    assert "1 acknowledged" in changes
    pair = re.search(r'<section class="pair-section" id="pair-pool--bathroom".*?</section>', html, re.S).group(0)
    assert "12.5%" in pair and "+25.0 pt" in pair
    assert page.find("span", **{"class": "badge status-new"}) and page.find("span", **{"class": "badge triage-acknowledged"})
    md = (run_dir / "summary.md").read_text(encoding="utf-8")
    assert "Baseline night\\-41" not in md and "Baseline night-41: 1 new finding(s), 1 persisting, 1 resolved." in md
    assert f"- new: {F1} pool → bathroom (3 images)" in md
    assert "- resolved: F-gone0001 bathroom → pool" in md
    assert "- error rate pool → bathroom: 12.5% → 37.5%" in md


def test_folder_layout_writes_assets(tmp_path):
    run_dir = build_run(tmp_path)
    set_report_config(run_dir, layout="folder")
    html = render(run_dir).read_text(encoding="utf-8")
    page = _Page(html)
    srcs = [a["src"] for a in page.find("img")] + [it["thumb"] for it in page.gallery()] \
        + [it["view"]["src"] for it in page.gallery()]
    assert srcs and all(s.startswith("assets/") for s in srcs)
    for s in srcs:
        assert _decode(s, run_dir).size[0] > 0
    names = [p.name for p in (run_dir / "assets").iterdir()]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in names), names
    assert "data:image" not in html
    # a stale file of an earlier render is pruned; the single layout removes the folder
    (run_dir / "assets" / "row-999-gradcam.jpg").write_bytes(b"old")
    assert render(run_dir, layout="folder").read_text(encoding="utf-8") == html
    assert not (run_dir / "assets" / "row-999-gradcam.jpg").exists()
    render(run_dir, layout="single")
    assert not (run_dir / "assets").exists()


def test_folder_render_killed_mid_picture_leaves_no_half_written_picture(tmp_path):
    """A render killed in the middle of writing a picture (SIGXFSZ: the kernel cuts the write at the file-size
    limit, then kills the process) leaves the previous assets/ whole and as the manifest records it, and the
    next render cleans up. A picture written straight under its final name would be half-written here."""
    from audit import integrity

    run_dir = build_run(tmp_path)
    html = render(run_dir, layout="folder").read_text(encoding="utf-8")
    before = {p.name: p.read_bytes() for p in (run_dir / "assets").iterdir()}
    limit = max(len(b) for b in before.values()) // 2   # the largest picture is cut in half
    code = (
        "import resource, signal\n"
        "from audit.report.render import render\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"   # Python ignores it: then the write only fails
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        f"render({str(run_dir)!r}, layout='folder')\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr
    assert {p.name: p.read_bytes() for p in (run_dir / "assets").iterdir()} == before
    manifest = integrity.read_manifest(run_dir)
    for name in before:
        integrity.verify(run_dir / "assets" / name, manifest[f"assets/{name}"])
    assert (run_dir / "index.html").read_text(encoding="utf-8") == html
    staged = [p for p in run_dir.iterdir() if p.name.startswith(".assets.")]
    assert staged and any(f.stat().st_size == limit for d in staged for f in d.iterdir())   # cut mid-picture

    assert render(run_dir, layout="folder").read_text(encoding="utf-8") == html
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".assets.")]
    manifest = integrity.read_manifest(run_dir)
    files = sorted((run_dir / "assets").iterdir())
    assert [f.name for f in files] == sorted(before)
    for f in files:
        integrity.verify(f, manifest[f"assets/{f.name}"])


def test_template_overrides_replace_one_section(tmp_path):
    """A folder of overrides (report.templates) replaces the templates it holds, the rest stays shipped."""
    run_dir = build_run(tmp_path / "run")
    shipped = render(run_dir).read_text(encoding="utf-8")
    overrides = tmp_path / "brand"
    (overrides / "sections").mkdir(parents=True)
    (overrides / "sections" / "run.html.j2").write_text("<p>Acme audit metadata: {{ run_id }}</p>\n")
    (overrides / "style.css.j2").write_text("body { font-family: AcmeSans; }\n")
    html = render(run_dir, templates=overrides).read_text(encoding="utf-8")
    assert "Acme audit metadata: run-test-001" in html and "AcmeSans" in html
    assert "font-family: AcmeSans" not in shipped
    page, before = _Page(html), _Page(shipped)
    assert page.ids() == before.ids()                   # every section still there, same anchors
    assert len(page.find("img")) == len(before.find("img"))
    set_report_config(run_dir, templates=str(overrides))   # as recorded by `audit run --set report.templates=...`
    assert "Acme audit metadata" in render(run_dir).read_text(encoding="utf-8")
    with pytest.raises(UsageError, match="`report.templates` .*nowhere: no such folder"):
        render(run_dir, templates=tmp_path / "nowhere")


def test_image_views_are_capped_in_single_layout(tmp_path):
    run_dir = build_run(tmp_path)
    set_report_config(run_dir, max_image_views=2)
    page = _Page(render(run_dir).read_text(encoding="utf-8"))
    items = page.gallery()
    assert [it["row"] for it in items if it["view"]] == [0, 1]   # by priority: finding members first
    assert all(it["thumb"] for it in items)
    assert "report.max_image_views" in "".join(page.text)
    # the folder layout draws every view
    folder = _Page(render(run_dir, layout="folder").read_text(encoding="utf-8"))
    assert all(it["view"] for it in folder.gallery())


def test_size_budget_warning(tmp_path, capsys):
    run_dir = build_run(tmp_path)
    warnings: list[str] = []
    render(run_dir, warn=warnings.append)
    assert warnings == []
    size = (run_dir / "index.html").stat().st_size
    set_report_config(run_dir, max_bytes=size // 2)
    render(run_dir, warn=warnings.append)
    assert len(warnings) == 1 and "over report.max_bytes" in warnings[0] and "--layout folder" in warnings[0]
    render(run_dir)  # default: one line on stderr
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("audit: warning: report is")


def _history(path: Path) -> None:
    rows = []
    for i, (run_id, rate, n_find, acc) in enumerate([("n1", 0.10, 0, 0.9), ("n2", 0.20, 1, 0.85), ("n3", 0.375, 2, 0.8)]):
        created = f"2025-01-0{i + 1}T03:00:00+00:00"
        rows.append({"run_id": run_id, "created": created, "true_label": "pool", "predicted_label": "bathroom",
                     "n_true": 8, "n_confused": round(rate * 8), "error_rate": rate, "n_findings": n_find,
                     "top_score": 1.0, "accuracy": acc, "status": "fail"})
        if run_id != "n2":  # absent in n2: counted as 0 that night
            rows.append({"run_id": run_id, "created": created, "true_label": EVIL, "predicted_label": "pool",
                         "n_true": 3, "n_confused": 1, "error_rate": 1 / 3, "n_findings": 0,
                         "top_score": None, "accuracy": acc, "status": "fail"})
    pd.DataFrame(rows[::-1]).to_parquet(path, index=False)   # not in time order on disk


def test_trend_from_history(tmp_path):
    run_dir = build_run(tmp_path)
    html = render(run_dir).read_text(encoding="utf-8")
    assert 'id="trend"' not in html                       # no history: no trend section
    _history(run_dir.parent / "history.parquet")
    html = render(run_dir).read_text(encoding="utf-8")
    page = _Page(html)
    assert 'id="trend"' in html and 'href="#trend"' in html
    trend = re.search(r'<section class="part" id="trend">.*?</section>', html, re.S).group(0)
    assert "3 runs" in trend and "<code>n1</code> to <code>n3</code>" in trend
    rows = {a["data-pair"]: a for a in page.find("tr") if "data-pair" in a}
    assert set(rows) == {"pool\u2192bathroom", f"{EVIL}\u2192pool"}
    pool = re.search(r'<tr data-pair="pool→bathroom">(.*?)</tr>', trend, re.S).group(1)
    assert re.findall(r'<td class="n">([^<]*)</td>', pool) == ["37.5%", "20.0%", "+17.5 pt", "37.5%", "2"]
    evil = re.search(r'<tr data-pair="&lt;script&gt;alert\(1\)&lt;/script&gt;→pool">(.*?)</tr>', trend, re.S).group(1)
    assert re.findall(r'<td class="n">([^<]*)</td>', evil)[:3] == ["33.3%", "0.0%", "+33.3 pt"]
    assert page.find("img", alt="error rate per confusion pair over runs")
    assert "latest: 2 findings, accuracy 80.0%" in trend


def test_rerender_is_stable(rendered):
    run_dir, index, html, _ = rendered
    assert render(run_dir).read_text(encoding="utf-8") == html


def test_partial_run_folder_renders(tmp_path):
    run_dir = build_run(tmp_path, with_maps=False)
    for name in (artifacts.DISCOVERY, artifacts.SELECTION):
        (run_dir / name).unlink()
    html = render(run_dir).read_text(encoding="utf-8")
    page = _Page(html)
    assert {F1, F2} <= page.ids()
    assert "no attribution maps" in html and "discovery.parquet is missing" in html
    assert not page.find("img", alt=f"cue montage of {F1}")
    items = page.gallery()   # no selection: every misclassified readable image, without overlays
    assert sorted(it["row"] for it in items) == [0, 1, 2, 12, 13]
    assert all(it["view"]["panels"] == ["image"] for it in items)


def test_render_does_not_import_tensorflow(tmp_path):
    run_dir = build_run(tmp_path)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from audit.cli import main\n"
        f"code = main(['render', {str(run_dir)!r}, '--layout', 'folder'])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not bad, bad\n"
        "print('exit', code)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines() == [str(run_dir / "index.html"), "exit 0"]
    assert (run_dir / "assets").is_dir() and (run_dir / "summary.md").is_file()


def test_render_cli_rejects_a_bad_layout(tmp_path):
    run_dir = build_run(tmp_path)
    res = subprocess.run([sys.executable, "-m", "audit.cli", "render", str(run_dir), "--layout", "zip"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--layout" in res.stderr


def test_maps_are_never_all_in_memory(tmp_path):
    """Peak memory does not grow with the stored maps: loading indexes the chunks and the
    render reads only the maps it draws (here 16,000 more maps, of rows no section shows;
    holding them all took 3x their float32 size at loading)."""
    run_dir = build_run(tmp_path)
    n = 16000
    artifacts.write_map_chunk(run_dir, "gradcam", 2, np.arange(1000, 1000 + n), np.zeros((n, *INPUT), np.float16))
    stored = n * INPUT[0] * INPUT[1] * 4   # 66 MB as float32
    tracemalloc.start()
    try:
        run = Run.load(run_dir)
        _, load_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        html = render(run_dir).read_text(encoding="utf-8")
        _, render_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert load_peak < stored / 10 and render_peak < stored / 4, (load_peak, render_peak, stored)
    assert run.map_hw("gradcam", 1000 + n - 1) == INPUT
    assert _Page(html).find("img", alt=f"cue montage of {F1}")


def test_cam_reads_each_stored_map(tmp_path):
    """Every chunk layout np.load reads gives the map read_maps gives; a row stored twice
    takes the later chunk's map; map_hw needs no read."""
    run_dir = tmp_path / "run"
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(9, 6, 5)).astype(np.float16)
    artifacts.write_map_chunk(run_dir, "m", 0, np.array([4, 2, 0]), maps[:3])
    np.savez_compressed(artifacts.map_chunk_path(run_dir, "m", 1), row=np.array([1, 3, 5]), maps=maps[3:6])
    np.savez(artifacts.map_chunk_path(run_dir, "m", 2), row=np.array([6, 7, 2]),
             maps=np.asfortranarray(maps[6:]))
    run = Run.load(run_dir)
    assert run.methods == ["m"] and sorted(run.maps["m"]) == [0, 1, 2, 3, 4, 5, 6, 7]
    rows, want = artifacts.read_maps(run_dir, "m")
    index = {int(r): i for i, r in enumerate(rows)}   # the later of row 2's maps
    for row in range(8):
        got = run.cam("m", row)
        assert got.dtype == np.float32 and run.map_hw("m", row) == (6, 5)
        np.testing.assert_array_equal(got, want[index[row]])
    np.testing.assert_array_equal(run.cam("m", 2), maps[8].astype(np.float32))
    assert run.cam("m", 8) is None and run.map_hw("m", 8) is None and run.cam("other", 0) is None


def test_broken_map_chunks_are_notes(tmp_path):
    """A chunk that cannot be read costs its method's maps, not the report; one that
    disappears after loading costs its own rows' maps."""
    run_dir = build_run(tmp_path)
    broken = artifacts.map_chunk_path(run_dir, "occlusion", 0)
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a zip file")
    html = render(run_dir).read_text(encoding="utf-8")
    page = _Page(html)
    assert "maps/occlusion: unreadable (" in html
    assert page.find("img", alt=f"cue montage of {F1}")
    assert {tuple(it["view"]["panels"]) for it in page.gallery() if it["view"]} == {("image", "gradcam")}

    broken.unlink()
    run = Run.load(run_dir)
    assert run.methods == ["gradcam"] and not run.notes
    first = artifacts.map_chunk_path(run_dir, "gradcam", 0)
    rows = np.load(first)["row"].tolist()
    first.unlink()
    assert run.cam("gradcam", rows[0]) is None and run.cam("gradcam", rows[1]) is None
    assert run.notes == [f"maps/gradcam/{first.name}: unreadable (FileNotFoundError: "
                         f"[Errno 2] No such file or directory: '{first}')"]
    assert run.cam("gradcam", 0) is not None   # row 0 is in the other chunk
    assert 0 not in rows


def test_montage_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(findings_module, "MAX_MONTAGE", 2)
    run_dir = build_run(tmp_path)
    html = render(run_dir).read_text(encoding="utf-8")
    src = _Page(html).find("img", alt=f"cue montage of {F1}")[0]["src"]
    assert _decode(src).size == plots.montage_shape(2) == (2 * 128 + plots.GAP, 128)
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


def test_reliability_by_hand():
    cal = plots.reliability(np.array([0.95, 0.95, 0.55, 0.55]), np.array([True, False, True, True]), bins=10)
    # bin 0.9-1.0: acc 0.5 vs conf 0.95 (gap 0.45); bin 0.5-0.6: acc 1.0 vs conf 0.55 (gap 0.45)
    assert cal["ece"] == pytest.approx(0.45)
    assert cal["count"].tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 0, 2]


@pytest.mark.parametrize("setting, message", [
    ("report.layout=zip", "`report.layout` must be single or folder (got 'zip')"),
    ("report.max_bytes=0", "`report.max_bytes` must be a positive int (bytes) (got 0)"),
    ("report.max_image_views=-1", "`report.max_image_views` must be a non-negative int (got -1)"),
])
def test_report_settings_are_validated(setting, message):
    from audit.config import resolve
    from audit.errors import UsageError

    with pytest.raises(UsageError) as err:
        resolve(None, [setting])
    assert str(err.value) == message


def _trust_summary() -> dict:
    """summary.json's trust figures for two methods, one failing sanity (as audit.stages.trust writes them)."""
    def method(final, logit, deletion, insertion, passed):
        return {"faithfulness": {"deletion_auc": deletion, "insertion_auc": insertion,
                                 "deletion_margin": 0.5 - deletion, "insertion_margin": insertion - 0.5,
                                 "passed": deletion < 0.5 < insertion,
                                 "curves": {"deletion": [0.9, deletion, 0.1], "insertion": [0.1, insertion, 0.9]}},
                "sanity": {"cascading": [{"step": 1, "top_layer": "dense", "layers": ["dense"], "spearman": 0.6,
                                          "ssim": 0.5},
                                         {"step": 2, "top_layer": EVIL, "layers": [EVIL], "spearman": final,
                                          "ssim": final}],
                           "final_spearman": final, "cascading_passed": final < 0.5,
                           "random_logit": {"spearman": logit, "ssim": logit, "passed": logit < 0.8},
                           "passed": passed},
                "badge": {"sanity": passed, "faithful": deletion < 0.5 < insertion,
                          "trusted": passed and deletion < 0.5 < insertion}}

    return {"methods": {"gradcam": method(0.05, 0.2, 0.3, 0.8, True), EVIL: method(0.99, 0.97, 0.45, 0.55, False)},
            "random": {"deletion_auc": 0.5, "insertion_auc": 0.5, "deletion_auc_per_seed": [0.49, 0.51],
                       "insertion_auc_per_seed": [0.5, 0.5], "curves": {"deletion": [0.9, 0.5, 0.1],
                                                                          "insertion": [0.1, 0.5, 0.9]}},
            "agreement": {"mean": 0.42, "pairs": {f"gradcam~{EVIL}": 0.42}, "n_images": 14},
            "completeness_gap": {"n": 14, "mean": 0.01, "mean_abs": 0.02, "median_abs": 0.015, "p90_abs": 0.05,
                                 "median_relative": 0.003, "histogram": {"counts": [2, 10, 2],
                                                                         "edges": [-0.05, -0.01, 0.01, 0.05]}},
            "sample": {"faithfulness": 12, "sanity": 2},
            "settings": {"steps": 2, "random_maps": 2, "grid": 16, "randomization_steps": 5}}


def test_trust_section_badges_and_pictures(tmp_path):
    run_dir = build_run(tmp_path)
    summary = artifacts.read_json(run_dir / artifacts.SUMMARY)
    summary["trust"] = _trust_summary()
    summary["findings"][0]["trust"] = {"agreement": 0.61, "n_images": 3, "lift": 0.75, "agrees": True,
                                       "confirmed": True, "level": "high"}
    summary["findings"][1]["trust"] = {"agreement": 0.1, "n_images": 1, "lift": None, "agrees": False,
                                       "confirmed": None, "level": "low"}
    artifacts.write_json(run_dir / artifacts.SUMMARY, summary)
    html = render(run_dir).read_text(encoding="utf-8")
    page = _Page(html)
    assert "trust" in page.ids()
    rows = {a["data-method"]: a for a in page.find("tr") if "data-method" in a}
    assert rows["gradcam"]["data-trusted"] == "true" and rows[EVIL]["data-sanity"] == "false"
    assert [a["data-untrusted"] for a in page.find("p") if "data-untrusted" in a] == [EVIL]
    findings = {a["data-finding"]: a["data-level"] for a in page.find("tr") if "data-finding" in a}
    assert findings == {F1: "high", F2: "low"}
    assert EVIL not in html                                   # method and layer names are escaped
    pictures = trust_pictures(html, run_dir)
    assert set(pictures) == {"deletion and insertion curves per method and for random maps",
                             "cascading randomization: Spearman and SSIM per step", "agreement between methods",
                             "integrated gradients completeness gap histogram"}
    assert all(width > 100 for width, _ in pictures.values())


def trust_pictures(html: str, run_dir: Path) -> dict[str, tuple[int, int]]:
    """alt text -> (width, height) of every picture of the Trust section (data URI or assets/ file)."""
    import base64
    import io

    start = html.index('id="trust"')
    section = html[start:html.index("</section>", start)]
    out = {}
    for tag, attrs in _Page(section).tags:
        if tag == "img":
            src = attrs["src"]
            data = base64.b64decode(src.split(",", 1)[1]) if src.startswith("data:") else (run_dir / src).read_bytes()
            out[attrs["alt"]] = Image.open(io.BytesIO(data)).size
    return out


def test_no_trust_section_without_trust_figures(rendered):
    _, _, html, page = rendered
    assert "trust" not in page.ids() and "Spearman" not in html


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
    start = html.index('<section class="part" id="internals">')
    end = html.find('<section class="part"', start + 1)
    return re.findall(r'<img[^>]* src="([^"]+)"', html[start:end if end > 0 else len(html)])


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
        assert _decode(src, run_dir).size[0] > 0
    assert "bathroom" in html[html.index('id="internals"'):] and "score 0.5000" in html


def test_internals_entry_follows_a_renamed_finding(tmp_path):
    """Re-gating a complete run against another baseline may rename a finding without
    running internals again: its entry is found by its member rows."""
    run_dir = _internals_run(tmp_path)
    summary = artifacts.read_json(run_dir / artifacts.SUMMARY)
    first = next(f for f in summary["findings"] if f["id"] == F1)
    index = artifacts.read_json(run_dir / "internals" / "index.json")
    index["findings"][0]["members"] = sorted(first["rows"])
    artifacts.write_json(run_dir / "internals" / "index.json", index)
    first["id"] = "F-0a1b2c3d"
    artifacts.write_json(run_dir / artifacts.SUMMARY, summary)
    html = render(run_dir).read_text(encoding="utf-8")
    assert "internals-F-0a1b2c3d" in _Page(html).ids()
    assert 'href="#internals-F-0a1b2c3d"' in html and f"internals-{F1}" not in html
    assert len(_internals_images(html)) == 5


def test_internals_section_absent_without_internals(rendered):
    _, _, html, page = rendered
    assert "internals" not in page.ids() and 'href="#internals' not in html


def test_internals_missing_picture_is_a_note_not_a_broken_image(tmp_path):
    run_dir = _internals_run(tmp_path, missing="conv5-channel-7-patches.png")
    html = render(run_dir).read_text(encoding="utf-8")
    assert len(_internals_images(html)) == 4
    assert "internals/conv5-channel-7-patches.png" in html


def test_cue_verdict_follows_the_trust_judgement(tmp_path):
    run_dir = build_run(tmp_path)
    summary = artifacts.read_json(run_dir / artifacts.SUMMARY)
    tested = {"n": 8, "flipped": 8, "rate": 1.0, "random_flipped": 8, "random_rate": 1.0, "lift": 0.0, "se": 0.0}
    none_run = {"n": 0, "flipped": 0, "rate": None, "random_flipped": 0, "random_rate": None, "lift": None,
                "se": None}
    summary["findings"][0]["verification"] = {"verified": True, "members_tested": 3, "rounds": 1, "mean_area": 0.1,
                                              "occlusion": dict(tested, random_flipped=0, random_rate=0.0, lift=1.0),
                                              "transplant": none_run}
    summary["findings"][0]["trust"] = {"lift": 1.0, "confirmed": True, "agrees": True, "level": "high"}
    summary["findings"][1]["verification"] = {"verified": True, "members_tested": 1, "rounds": 1, "mean_area": 0.1,
                                              "occlusion": tested, "transplant": none_run}
    summary["findings"][1]["trust"] = {"lift": 0.0, "confirmed": False, "agrees": True, "level": "medium"}
    artifacts.write_json(run_dir / artifacts.SUMMARY, summary)
    html = render(run_dir).read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", html)
    assert "cue confirmed: hiding or pasting the top region" in text
    assert "cue not confirmed: the top region changes the prediction no more than a random region" in text
    md = (run_dir / "summary.md").read_text(encoding="utf-8")
    assert "cue confirmed: occlusion 100% vs 0% random" in md
    assert "cue not confirmed: occlusion 100% vs 100% random" in md


def test_verification_bars_say_not_run_instead_of_zero():
    fig = plots.verification_bars([("occlusion", 0.5, 0.25), ("transplant", None, None)])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["50%", "25%", "not run"]


def test_predictions_are_read_lean(tmp_path):
    """100,000 rows must not become 100,000 dicts: text columns arrive as categoricals, ``probs`` as one float32
    block (NaN where an image was unreadable), and a row's record is built when asked for."""
    from audit.report.images import top_k
    from audit.report.loading import read_predictions

    pred = pd.DataFrame({"row": [0, 1, 2], "path": ["a.png", "b.png", "c.png"], "label": ["x", "y", "x"],
                         "predicted": ["y", None, "x"], "confidence": [0.7, None, 0.9],
                         "probs": [[0.3, 0.7], None, [0.9, 0.1]], "error": [None, "unreadable", None]})
    artifacts.write_table(tmp_path / "predictions.parquet", pred)
    frame, probs = read_predictions(tmp_path / "predictions.parquet")
    assert isinstance(frame["label"].dtype, pd.CategoricalDtype) and "probs" not in frame.columns
    assert probs.dtype == np.float32 and probs.shape == (3, 2) and np.isnan(probs[1]).all()
    np.testing.assert_allclose(probs[2], [0.9, 0.1], rtol=1e-6)
    run = Run(dir=tmp_path, predictions=frame)
    run._index_rows(probs)
    assert run.info(0)["label"] == "x" and run.info(1)["predicted"] is None and run.info(7) is None
    assert run.info(2)["confidence"] == 0.9 and type(run.info(2)["row"]) is int
    assert [t["label"] for t in top_k(run, 0)] == ["class 1", "class 0"] and top_k(run, 1) == []
    # lists of different lengths stay a column
    pred["probs"] = [[0.3, 0.7], None, [0.9, 0.05, 0.05]]
    artifacts.write_table(tmp_path / "predictions.parquet", pred)
    frame, probs = read_predictions(tmp_path / "predictions.parquet")
    assert probs is None and list(frame["probs"][2]) == [0.9, 0.05, 0.05]


def test_gallery_list_and_pictures_follow_the_budget(tmp_path):
    """The single file lists at most report.max_bytes / 4 of gallery JSON, by priority, and draws pictures only
    in what the rest of the page leaves: a budget smaller than the fixed sections leaves none (and warns)."""
    run_dir = build_run(tmp_path)
    set_report_config(run_dir, max_bytes=1200)
    warnings: list[str] = []
    page = _Page(render(run_dir, warn=warnings.append).read_text(encoding="utf-8"))
    items = page.gallery()
    assert 1 <= len(items) < 5 and [it["row"] for it in items] == [0, 1, 2, 13][:len(items)]
    assert not any(it["thumb"] or it["view"] for it in items)
    text = " ".join("".join(page.text).split())
    assert f"lists the first {len(items)} of them" in text and "thumbnails of the first 0" in text
    assert len(warnings) == 1 and "over report.max_bytes" in warnings[0]
