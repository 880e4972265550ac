"""Report benchmark: render and open reports of 5,000 selected of 6,000 images and of 10,000 of 100,000.

Builds (once, into ``--work``) two finished run folders that look like large nightly
audits: a baseline of ``--baseline-images`` selected images (default 5,000) in a data
set of 1,000 more, and a large run of ``--images`` selected (default 10,000) in a data
set of ``--rows`` images (default 100,000). Selected: 80% misclassified, 20% low
confidence, 10 classes, 96x128 PNG originals (correctly classified images share 1,000
files through hard links: the report never draws them), maps of three methods
(gradcam, integrated_gradients, occlusion) at the model input (``--input-size``,
default 32x32; 224 is a typical production size) for every selected image, 10
findings of 100 members with verification results, a discovery embedding and a
14-night ``history.parquet``. No model and no TensorFlow: rendering reads only
artifacts.

Then, per run and layout (``--layouts``, default single and folder), times
``audit.report.render.render`` in a fresh child process, best of ``--repeats`` (wall
time, and the CPU time of the same render: on a shared machine the wall time grows
with the load average, which is recorded too, as are the render's blocking waits:
voluntary context switches, one per fsync or other wait on the disk), and records the
child's peak resident memory (``VmHWM``) before the first render (Python with the
report's imports) and after the last one. The single-file report is then opened in headless Debian Chromium
(playwright), ``--browser-repeats`` times in a fresh context: the median navigation
timing (``performance.getEntriesByType('navigation')[0]``: ``domInteractive``,
``domContentLoadedEventEnd`` = the gallery script has run, ``loadEventEnd`` = every
embedded picture loaded), then a check that the gallery drew its first page with
decoded thumbnails, pages on, and opens the image view on a click (screenshots into
``--shots``).

Acceptance: each render <= 30 s of CPU (user + system time of the rendering process);
the single file <= 10 MB (``report.max_bytes``) and loaded within 3 s in Chromium
(``loadEventEnd``) for both runs; the large run's peak render memory (single layout)
<= 1.2x the baseline's, measured in the same run.

Why CPU seconds and not wall seconds: the benchmark runs on 2 cores shared with other
jobs (load averages of 4 to 16 were recorded), so a render's wall time is its CPU time
stretched by how many others want the cores, which is not a property of our code (the
same 10,000-image single render took 8.9 s wall at load 4 and 33.9 s at load 15.7, for
8.1 and 8.4 s of CPU). CPU time also counts the kernel's work for our writes and
flushes. What it does not count is time asleep waiting for the disk, which is what
made the old folder layout slow (an fsync of every picture and of its folder: 10,000
pictures, 20,000 flushes); the blocking-waits column shows that cost without depending
on the load. The limit still fails the old folder layout on CPU alone (36.6-37.8 s
for 5,000 images, 52.5-66.1 s for 10,000, in two runs at load 4-5).

    python benchmarks/report.py [--images 10000] [--rows 100000] [--baseline-images 5000]
        [--input-size 32] [--layouts single,folder] [--out benchmarks/results] [--repeats 1]

Writes ``report.json`` and ``report.md`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit import artifacts  # noqa: E402
from audit.report.render import render, report_size  # noqa: E402

CLASSES = [f"class_{i}" for i in range(10)]
METHODS = ["gradcam", "integrated_gradients", "occlusion"]
ORIGINAL = (96, 128)
LIMIT_CPU_S = 30.0      # s of CPU (user + system), one render
MAX_BYTES = 10_000_000  # the single-file report's budget (report.max_bytes default)
TTI_S = 3.0             # s, navigation start to the load event in headless Chromium
MEMORY_RATIO = 1.2      # peak render memory, large run / baseline run


def build(work: Path, n_selected: int, n_rows: int | None = None, input_size: int = 32, seed: int = 0,
          n_classes: int = len(CLASSES), n_findings: int = 10) -> Path:
    """The synthetic run folder (reused when ``work/built.json`` records the same sizes).

    ``n_rows`` images in the data set (default ``n_selected + 1000``), the first ``n_selected``
    of them selected. Every selected image has a PNG file of its own; the correctly classified
    ones, which the report never draws, share 1,000 files through hard links (so 100,000 rows
    build in seconds). ``n_classes`` (<= 10) and ``n_findings`` (of 100 members each) make smaller runs
    for the browser test.
    """
    n_rows = n_selected + 1000 if n_rows is None else n_rows
    if n_rows <= n_selected:
        raise ValueError(f"the data set ({n_rows} rows) must be larger than the selection ({n_selected})")
    run_dir, data_root = work / "run", work / "data"
    stamp = work / "built.json"
    built = {"n_selected": n_selected, "n_rows": n_rows, "input_size": input_size, "n_classes": n_classes,
             "n_findings": n_findings}
    classes = CLASSES[:n_classes]
    if stamp.is_file() and json.loads(stamp.read_text()) == built:
        return run_dir
    shutil.rmtree(work, ignore_errors=True)
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    n = n_rows
    k = len(classes)
    label_idx = rng.integers(0, k, n)
    n_mis = int(0.8 * n_selected)
    predicted_idx = label_idx.copy()
    predicted_idx[:n_mis] = (label_idx[:n_mis] + rng.integers(1, k, n_mis)) % k
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), predicted_idx] += 3.0
    logits[n_mis:n_selected, (label_idx[n_mis:n_selected] + 1) % k] += 2.9   # low confidence: close runner-up
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    top2 = np.sort(probs, 1)[:, -2:]
    paths = []
    (data_root / "images").mkdir(parents=True)
    base = np.linspace(40, 220, ORIGINAL[1], dtype=np.float32)[None, :, None]
    n_files = min(n, n_selected + 1000)
    for i in range(n):
        path = f"images/{i:06d}.png"
        paths.append(path)
        if i >= n_files:   # a correctly classified image: a hard link to one of the 1,000 files
            os.link(data_root / paths[n_selected + (i - n_selected) % 1000], data_root / path)
            continue
        arr = np.clip(base + rng.normal(0, 25, (ORIGINAL[0], 1, 3)) + 20 * label_idx[i] % 60, 0, 255).astype(np.uint8)
        arr = np.broadcast_to(arr, (*ORIGINAL, 3)).copy()
        y, x = rng.integers(0, ORIGINAL[0] - 20), rng.integers(0, ORIGINAL[1] - 20)
        arr[y:y + 20, x:x + 4] = 210
        Image.fromarray(arr).save(data_root / path, compress_level=1)
    pred = pd.DataFrame({
        "row": np.arange(n), "path": paths, "label": [classes[j] for j in label_idx], "label_idx": label_idx,
        "predicted_idx": predicted_idx, "predicted": [classes[j] for j in predicted_idx],
        "confidence": top2[:, 1], "margin": top2[:, 1] - top2[:, 0],
        "runner_up": [classes[j] for j in np.argsort(probs, 1)[:, -2]], "probs": list(probs.round(5)),
        "error": [None] * n, "site": rng.choice(["north", "south", "east"], n), "camera": rng.integers(0, 4, n),
    })
    artifacts.write_table(run_dir / artifacts.PREDICTIONS, pred)
    sel = pred.iloc[:n_selected].copy()
    sel["reason"] = ["misclassified"] * n_mis + ["low_confidence"] * (n_selected - n_mis)
    sel["true_label"] = sel["label"]
    sel["pair_label"] = np.where(sel["reason"] == "misclassified", sel["predicted"], sel["runner_up"])
    sel["pair"] = sel["true_label"] + " -> " + sel["pair_label"]
    artifacts.write_table(run_dir / artifacts.SELECTION, sel.reset_index(drop=True))
    side = input_size
    yy, xx = np.mgrid[0:side, 0:side]
    width = 20.0 * (side / 32) ** 2   # the same blob relative to the map at every size
    for method in METHODS:
        for chunk, start in enumerate(range(0, n_selected, 1000)):
            rows = np.arange(start, min(start + 1000, n_selected))
            cy, cx = rng.integers(0, side, (len(rows), 1, 1)), rng.integers(0, side, (len(rows), 1, 1))
            maps = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / width)
            maps += rng.normal(0, 0.05, (len(rows), side, side))
            artifacts.write_map_chunk(run_dir, method, chunk, rows, maps.astype(np.float32))
    findings, disc_rows = [], []
    for f in range(n_findings):
        members = np.arange(f * 100, f * 100 + 100)   # misclassified rows
        t, p = classes[label_idx[members[0]]], classes[predicted_idx[members[0]]]
        fid = f"F-{f:08x}"
        findings.append({"id": fid, "rank": f + 1, "true_label": t, "predicted_label": p, "size": 100,
                         "score": round(1.0 / (f + 1), 4), "members": [paths[r] for r in members],
                         "rows": members.tolist(), "n_errors": 100, "coherence": 0.5,
                         "exemplars": [paths[r] for r in members[:6]],
                         "eigenvalues": np.linspace(0, 1, 16).round(4).tolist(), "eigengap_k": 2,
                         "verification": {"verified": True, "members_tested": 8, "mean_area": 0.12,
                                          "occlusion": {"n": 8, "flipped": 7, "rate": 0.875, "random_flipped": 1,
                                                        "random_rate": 0.125, "lift": 0.75, "se": 0.1}}})
        disc_rows += [{"row": int(r), "path": paths[r], "cluster": f, "finding_id": fid, "is_contrast": False,
                       "x": float(rng.normal(f, 0.3)), "y": float(rng.normal(0, 0.3))} for r in members]
    artifacts.write_table(run_dir / artifacts.DISCOVERY, pd.DataFrame(disc_rows))
    accuracy = float((label_idx == predicted_idx).mean())
    artifacts.write_json(run_dir / artifacts.SUMMARY, {
        "run_id": "bench", "status": "fail",
        "metrics": {"n_images": n, "n_unreadable": 0, "accuracy": accuracy, "n_selected": n_selected},
        "findings": findings,
        "gates": [{"name": "max_error_rate", "passed": False, "value": 1 - accuracy, "threshold": 0.1}]})
    artifacts.write_json(run_dir / artifacts.RUN_JSON, {
        "run_id": "bench", "created": "2025-01-15T03:00:00+00:00", "config": {"report": {}},
        "versions": {"python": platform.python_version()},
        "model": {"path": "model.keras", "input_size": [side, side]},
        "data": {"path": str(data_root / "manifest.csv"), "root": str(data_root), "n_rows": n},
        "classes": classes, "timings": {"predict": 1.0}})
    history = []
    for night in range(14):
        for a in range(3):
            history.append({"run_id": f"night-{night:02d}", "created": f"2025-01-{night + 1:02d}T03:00:00+00:00",
                            "true_label": classes[a % k], "predicted_label": classes[(a + 1) % k], "n_true": 500,
                            "n_confused": 10 + night * a, "error_rate": (10 + night * a) / 500,
                            "n_findings": a % 2, "top_score": 0.5, "accuracy": 0.8, "status": "fail"})
    pd.DataFrame(history).to_parquet(work / "history.parquet", index=False)
    stamp.write_text(json.dumps(built))
    return run_dir


def _peak_mb() -> float:
    """This process's peak resident memory so far, in MB: ``VmHWM`` of ``/proc/self/status``.

    Not ``ru_maxrss``: Linux carries it across ``exec``, so a spawned child would start
    at the resident size of the parent it was forked from (here: the run just built).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (the benchmark measures memory on Linux only)")


def time_render(run_dir: Path, layout: str, repeats: int) -> dict:
    """Best CPU time of ``repeats`` renders from a clean run folder (no assets/ of an earlier
    render to prune), with the wall time and blocking waits (voluntary context switches) of
    that render, the one-minute load average and the peak resident memory before and after
    rendering. Run it in a fresh process."""
    start_mb = _peak_mb()
    best, cpu, waits, warned = None, None, None, []
    for _ in range(repeats):
        shutil.rmtree(run_dir / "assets", ignore_errors=True)
        warnings: list[str] = []
        t0, c0 = time.perf_counter(), time.process_time()
        w0 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        render(run_dir, layout=layout, warn=warnings.append)
        elapsed, used = time.perf_counter() - t0, time.process_time() - c0
        if cpu is None or used < cpu:
            best, cpu, warned = elapsed, used, warnings
            waits = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - w0
    html = (run_dir / "index.html").read_text(encoding="utf-8")
    folder = run_dir / "assets"
    pictures = html.count("data:image/") + (len(list(folder.iterdir())) if folder.is_dir() else 0)
    return {"layout": layout, "seconds": round(best, 2), "cpu_seconds": round(cpu, 2), "waits": waits,
            "load_average": round(os.getloadavg()[0], 1), "start_mb": round(start_mb, 1),
            "peak_mb": round(_peak_mb(), 1), "bytes": report_size(run_dir), "pictures": pictures,
            "size_warning": warned[0] if warned else None, "pass": cpu <= LIMIT_CPU_S}


def time_render_in_child(run_dir: Path, layout: str, repeats: int) -> dict:
    """``time_render`` in a fresh (spawned) process, so its peak memory is the render's alone."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(time_render, (run_dir, layout, repeats))


# navigation timing of the page (ms from the start of navigation), read after the load event
_TIMING = """() => { const t = performance.getEntriesByType('navigation')[0];
  return {dom_interactive: t.domInteractive, dom_content_loaded: t.domContentLoadedEventEnd,
          load: t.loadEventEnd}; }"""


def open_in_browser(run_dir: Path, repeats: int, shots: Path | None = None) -> dict:
    """Open ``run_dir/index.html`` in headless Debian chromium (playwright), ``repeats`` times, each in a
    fresh browser context (no cache): the median of the navigation timing's ``domInteractive``,
    ``domContentLoadedEventEnd`` (the gallery script has run: the page answers clicks) and
    ``loadEventEnd`` (every embedded picture loaded), in seconds. Then checks that the page works:
    the gallery drew its first page with its thumbnails decoded, the next page draws, a click on a
    tile opens the image view; screenshots into ``shots`` when given."""
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("AUDIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("benchmarks/report.py: Debian chromium is not installed (make install installs it)")
    url = (run_dir / "index.html").as_uri()
    timings = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        for _ in range(repeats):
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="load", timeout=120_000)
            timings.append(page.evaluate(_TIMING))
            if len(timings) < repeats:
                context.close()
        page.evaluate("document.getElementById('gallery').scrollIntoView()")   # the heading and its note on top
        tiles = page.locator("#gallery-grid .tile")
        decoded = page.evaluate("Array.from(document.querySelectorAll('#gallery-grid .tile img'))"
                                ".filter(i => i.complete && i.naturalWidth > 0).length")
        works = {"tiles": tiles.count(), "thumbnails_decoded": decoded}
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "gallery.png"))
        page.click(".pager button[data-page='1']")
        works["page_2"] = page.inner_text("#gallery-info")
        tiles.first.click()
        works["view_opens"] = page.locator("#image-view").is_visible()
        if shots is not None:
            page.screenshot(path=str(shots / "image-view.png"))
        works["errors"] = errors
        browser.close()

    def median(key: str) -> float:
        return round(float(np.median([t[key] for t in timings])) / 1000, 3)

    return {"dom_interactive_s": median("dom_interactive"), "interactive_s": median("dom_content_loaded"),
            "load_s": median("load"), "runs": len(timings), **works}


def measure(run_dir: Path, layouts: list[str], repeats: int, browser_repeats: int, shots: Path | None) -> list[dict]:
    """Render ``run_dir`` in each layout (a fresh child process each, ``time_render``); the single-file
    report is then opened in the browser (``open_in_browser``)."""
    results = []
    for layout in layouts:
        r = time_render_in_child(run_dir, layout, repeats)
        if layout == "single":
            r["browser"] = open_in_browser(run_dir, browser_repeats, shots)
            r["within_budget"] = r["bytes"] <= MAX_BYTES
            r["loads_in_time"] = r["browser"]["load_s"] <= TTI_S and r["browser"]["view_opens"] \
                and r["browser"]["thumbnails_decoded"] > 0 and not r["browser"]["errors"]
            r["pass"] = r["pass"] and r["within_budget"] and r["loads_in_time"]
        results.append(r)
        b = r.get("browser")
        print(f"{layout:>6}: {r['cpu_seconds']:.2f} s CPU ({r['seconds']:.2f} s wall, load {r['load_average']}, "
              f"{r['waits']} blocking waits), "
              f"peak {r['peak_mb']:.0f} MB ({r['start_mb']:.0f} MB before rendering), "
              f"{r['bytes'] / 1e6:.2f} MB, {r['pictures']} pictures"
              f"{' (size warning)' if r['size_warning'] else ''}"
              + (f", browser: interactive {b['interactive_s']:.2f} s, loaded {b['load_s']:.2f} s" if b else "")
              + f": {'PASS' if r['pass'] else 'FAIL'}", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="selected images of the large run")
    parser.add_argument("--rows", type=int, default=100_000, help="images in the large run's data set")
    parser.add_argument("--baseline-images", type=int, default=5000,
                        help="selected images of the comparison run (its data set: 1,000 more)")
    parser.add_argument("--input-size", type=int, default=32, help="model input side = map side, px")
    parser.add_argument("--layouts", default="single,folder", help="comma-separated layouts to render")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--work", default=None, help="where the synthetic runs are built (default <out>/report-run)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--browser-repeats", type=int, default=3)
    parser.add_argument("--shots", default=None, help="folder for browser screenshots (default: none)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out / "report-run"
    layouts = [x for x in args.layouts.split(",") if x]
    configs = [("baseline", args.baseline_images, args.baseline_images + 1000), ("large", args.images, args.rows)]
    runs = []
    for name, n_selected, n_rows in configs:
        t0 = time.perf_counter()
        run_dir = build(work / f"{n_selected}-of-{n_rows}", n_selected, n_rows, args.input_size)
        print(f"{name}: {n_selected} selected of {n_rows} images: {run_dir} "
              f"({time.perf_counter() - t0:.1f} s to build or reuse)", flush=True)
        shots = Path(args.shots) / name if args.shots else None
        maps_mb = n_selected * len(METHODS) * args.input_size ** 2 * 4 / 2 ** 20
        runs.append({"name": name, "n_selected": n_selected, "n_rows": n_rows, "maps_mb": round(maps_mb, 1),
                     "results": measure(run_dir, layouts, args.repeats, args.browser_repeats, shots)})
    peak = {r["name"]: next((x["peak_mb"] for x in r["results"] if x["layout"] == "single"), None) for r in runs}
    ratio = round(peak["large"] / peak["baseline"], 3) if peak["large"] and peak["baseline"] else None
    singles = [x for r in runs for x in r["results"] if x["layout"] == "single"]
    # issue 18's acceptance: the single file within its budget, loaded in time, memory not growing with n
    acceptance = bool(singles) and all(x["within_budget"] and x["loads_in_time"] for x in singles) \
        and ratio is not None and ratio <= MEMORY_RATIO
    render_time = all(x["cpu_seconds"] <= LIMIT_CPU_S for r in runs for x in r["results"])
    passed = acceptance and render_time
    report = {"benchmark": "report", "input_size": args.input_size, "methods": METHODS,
              "limits": {"render_cpu_seconds": LIMIT_CPU_S, "max_bytes": MAX_BYTES, "load_seconds": TTI_S,
                         "peak_memory_ratio": MEMORY_RATIO},
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
              "runs": runs, "peak_memory_ratio": ratio, "acceptance": acceptance, "render_time": render_time,
              "pass": passed}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Report rendering and opening: maps of {len(METHODS)} methods at {args.input_size}x{args.input_size}", "",
             f"Limits: render <= {LIMIT_CPU_S:.0f} s of CPU per layout; single file <= {MAX_BYTES / 1e6:.0f} MB and loaded in "
             f"headless Chromium within {TTI_S:.0f} s (navigation timing, median of {args.browser_repeats}); "
             f"peak render memory of the large run <= {MEMORY_RATIO}x the baseline's.", "",
             "| run | selected | images | layout | CPU s | wall s | load avg | blocking waits | peak MB "
             "| MB before rendering | size (MB) | pictures | DOM interactive s | interactive s | loaded s | pass |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| --- |"]
    for r in runs:
        for x in r["results"]:
            b = x.get("browser") or {}
            cells = [f"{b[k]:.2f}" if k in b else "" for k in ("dom_interactive_s", "interactive_s", "load_s")]
            lines.append(f"| {r['name']} | {r['n_selected']} | {r['n_rows']} | {x['layout']} | {x['cpu_seconds']:.2f} "
                         f"| {x['seconds']:.2f} | {x['load_average']} | {x['waits']} | {x['peak_mb']:.0f} "
                         f"| {x['start_mb']:.0f} "
                         f"| {x['bytes'] / 1e6:.2f} | {x['pictures']} | {' | '.join(cells)} "
                         f"| {'PASS' if x['pass'] else 'FAIL'} |")
    lines += ["", f"Peak render memory (single layout), large / baseline: {ratio} "
                  f"({'PASS' if ratio is not None and ratio <= MEMORY_RATIO else 'FAIL'}, <= {MEMORY_RATIO}).",
              f"Single file within {MAX_BYTES / 1e6:.0f} MB, loaded within {TTI_S:.0f} s and working, memory ratio: "
              f"{'PASS' if acceptance else 'FAIL'}; every render within {LIMIT_CPU_S:.0f} s of CPU: "
              f"{'PASS' if render_time else 'FAIL'} (CPU, not wall: the wall time grows with the load average of "
              "the shared machine; see the benchmark's docstring)."]
    for r in runs:
        b = next((x["browser"] for x in r["results"] if "browser" in x), None)
        if b:
            lines.append(f"{r['name']}: the gallery drew {b['tiles']} tiles ({b['thumbnails_decoded']} thumbnails "
                         f"decoded), the next page reads \"{b['page_2']}\", a click opens the image view: "
                         f"{'yes' if b['view_opens'] else 'NO'}; script errors: {len(b['errors'])}.")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print(f"peak memory ratio {ratio}; size, load time and memory: {'PASS' if acceptance else 'FAIL'}; "
          f"render times: {'PASS' if render_time else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
