"""Scale benchmark: the whole audit on synthetic 64x64 data sets of growing size.

For each size ``n`` (``--sizes``, default 2000, 8000, 32000) the demo model audits a
synthetic hotel data set of ``n`` images (``audit.demo.render_image``) with
``audit run --model --data --classes --out`` in a subprocess, into a fresh run folder
(nothing is resumed), default settings. Measured per audit:

* wall and CPU time of the audit process, and its peak memory (``ru_maxrss``). The audit
  is started through a small launcher process: a child spawned straight from this
  process (vfork + exec) would inherit this process's memory high-water mark into its
  ``ru_maxrss``, which then reports the benchmark's peak (the floors hold decoded
  images), not the audit's;
* per stage: wall time (``run.json["timings"]``; ``startup`` is the time before the
  predict stage, ``exit`` the time after render, from the time stamps of the run's log
  lines ``[predict] start``, ``[select] start``, ...), CPU time and peak RSS, from sampling the audit
  process every ``--poll`` seconds (``/proc/<pid>/stat`` and ``status``; a stage in which
  the kernel's high-water mark ``VmHWM`` rose gets that mark, so short spikes count).

The floor, timed in this process right after each audit (so both see the same load from
other jobs), is the model passes the pipeline makes, timed bare, after a warm-up call
(tracing excluded):

* forward: one forward pass per image over all ``n`` images, in batches of
  ``predict.batch_size``, on images already decoded into float32 tensors, through the
  traced function the predict stage calls (``Classifier.logits``);
* attribution: for each configured method (``attribution.methods`` and ``.params``, by
  default Grad-CAM, integrated gradients and occlusion), its floor over that audit's
  selection (``selection.parquet``: selected and contrast images) as
  ``benchmarks/attribution.py`` defines it: Grad-CAM one forward pass per image,
  occlusion one forward pass per patch, IG ``steps`` forward+backward passes to the
  input; bare passes in chunks of ``attribution.batch_size`` inputs;
* floor = forward + attribution. For information, not in the floor: ``decode``, the time of
  ``audit.data.load_images`` over the ``n`` PNGs (one thread, partitions of 512: the
  predict stage's own decoding), and ``features``, the extra forward pass per selected
  image that the attribute stage makes for its attention-pooled features.

End-to-end ratios (per round, audit and floor back to back; best round):

* ``(predict + attribute) / floor``: the two model stages' wall time;
* ``wall / floor``: the whole audit process (start-up, every stage, report, teardown).

Acceptance, largest size ``L`` against the next one ``S`` (with the default sizes 32k
against 8k): ``wall(L) / wall(S) <= 1.1 * L / S`` (4.4 for 4x); ``peak(L) <= 1.2 x
peak(S)``; at ``L`` both end-to-end ratios against ``1.15``. With ``--repeats R`` the
sizes are audited in R interleaved rounds; times are the best of R, memory the largest.

Data sets are generated once into ``--data`` (default ``<out>/scale-data``):
``images/<class>/NNNNNN.png`` and ``manifest-<n>.csv`` (``path,label,cue``; the cue
rates of the demo's audit set). Image ``i`` depends only on ``(seed, i)``, so a smaller
set is the first ``n`` images of a larger one and a larger request renders only the
missing images (in a process pool); ``dataset.json``, written last, records how many exist.

    python benchmarks/scale.py [--sizes 2000,8000,32000] [--out benchmarks/results] [--repeats 1]

Writes ``scale.json`` and ``scale.md`` into ``--out`` and prints the acceptance checks
(PASS/FAIL); run folders and their logs stay in ``<out>/scale-runs/``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

DATA_VERSION = 1
# share of each class's images carrying the rails cue: the demo's audit mix
# (pools 60 of 160, bathrooms 87%, the others 2%), so the biased model errs as in the demo
CUE_RATES = {"pool": 60 / 160, "bathroom": 0.87, "bedroom": 0.02, "kitchen": 0.02}
STAGES = ("predict", "select", "attribute", "trust", "discover", "verify", "internals", "render")
CHUNK = 500  # images per generation task


# --------------------------------------------------------------------------- data sets

def image_spec(seed: int, i: int) -> tuple[str, bool]:
    """(label, cue) of image ``i``: classes in turn, the cue drawn from ``(seed, i)``."""
    from audit.demo import CLASSES

    label = CLASSES[i % len(CLASSES)]
    cue = bool(np.random.default_rng([seed, 8, i]).random() < CUE_RATES[label])
    return label, cue


def image_path(i: int, label: str) -> str:
    return f"images/{label}/{i:06d}.png"


def _render_chunk(job: tuple[str, int, int, int]) -> int:
    """In a pool process: render and save images ``start:stop`` into ``folder``."""
    from PIL import Image

    from audit.demo import render_image

    folder, seed, start, stop = job
    for i in range(start, stop):
        label, cue = image_spec(seed, i)
        img = render_image(label, np.random.default_rng([seed, 7, i]), cue)
        path = Path(folder) / image_path(i, label)
        tmp = path.with_name(path.stem + ".tmp.png")
        Image.fromarray(img).save(tmp)
        tmp.replace(path)
    return stop - start


def prepare_data(folder: Path, sizes: list[int], seed: int, processes: int) -> dict:
    """Make sure ``folder`` holds the first ``max(sizes)`` images; write one manifest per size.

    Returns ``{"generated": k, "seconds": s, "reused": m}``.
    """
    import pandas as pd

    from audit.demo import CLASSES

    need = max(sizes)
    meta_path = folder / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    have = meta.get("count", 0) if (meta.get("version"), meta.get("seed")) == (DATA_VERSION, seed) else 0
    if have and not (folder / image_path(have - 1, image_spec(seed, have - 1)[0])).is_file():
        have = 0
    start = time.perf_counter()
    if have < need:
        meta_path.unlink(missing_ok=True)
        for label in CLASSES:
            (folder / "images" / label).mkdir(parents=True, exist_ok=True)
        jobs = [(str(folder), seed, s, min(s + CHUNK, need)) for s in range(have, need, CHUNK)]
        print(f"scale: rendering images {have}..{need - 1} into {folder} ({processes} processes)", flush=True)
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            done = have
            for k in pool.imap_unordered(_render_chunk, jobs):
                done += k
                if (done - have) % 8000 < CHUNK:
                    print(f"scale:   {done - have}/{need - have} rendered", flush=True)
        meta = {"version": DATA_VERSION, "seed": seed, "count": need, "cue_rates": CUE_RATES}
        tmp = meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        tmp.replace(meta_path)
    seconds = time.perf_counter() - start
    for n in sizes:
        rows = [(image_path(i, label), label, int(cue)) for i in range(n) for label, cue in [image_spec(seed, i)]]
        pd.DataFrame(rows, columns=["path", "label", "cue"]).to_csv(folder / f"manifest-{n}.csv", index=False)
    return {"generated": max(need - have, 0), "reused": min(have, need), "seconds": round(seconds, 1)}


# --------------------------------------------------------------------------- one audit, measured

# Runs the audit as its own child and reports that child's rusage. The audit is not started
# straight from this (large) process: a child spawned by vfork/fork inherits the parent's
# memory high-water mark into its ru_maxrss at exec, which would report this process's peak.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as fh:
    json.dump({"pid": child.pid, "code": os.waitstatus_to_exitcode(status), "wall": wall,
               "maxrss_kib": usage.ru_maxrss, "cpu": usage.ru_utime + usage.ru_stime}, fh)
"""


class Sampler(threading.Thread):
    """Samples the audit process every ``interval`` seconds: (time, RSS, high-water mark, CPU seconds).

    RSS and the kernel's high-water mark (``VmHWM``, the peak RSS so far, which also sees
    spikes between samples) come from ``/proc/<pid>/status``, CPU time (user + system) from
    ``/proc/<pid>/stat``; the RSS of any children of the audit (none with the default
    threaded scheduler) is added, via psutil.
    """

    def __init__(self, launcher_pid: int, interval: float):
        super().__init__(daemon=True)
        self.launcher_pid = launcher_pid
        self.interval = interval
        self.samples: list[tuple[float, int, int, float]] = []
        self.stop = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def read(self, process) -> tuple[int, int, float] | None:
        import psutil

        values = {}
        try:
            with open(f"/proc/{process.pid}/status") as fh:
                for line in fh:
                    if line.startswith(("VmRSS:", "VmHWM:")):
                        key, value = line.split(":")
                        values[key] = int(value.split()[0]) * 1024
            with open(f"/proc/{process.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            children = process.children(recursive=True)
        except (OSError, psutil.Error):
            return None
        if len(values) < 2:  # a zombie: no memory lines
            return None
        rss = values["VmRSS"]
        for child in children:
            try:
                rss += child.memory_info().rss
            except psutil.Error:
                pass
        cpu = (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime
        return rss, values["VmHWM"], cpu

    def run(self) -> None:
        import psutil

        try:
            launcher = psutil.Process(self.launcher_pid)
            while not self.stop.is_set():
                children = launcher.children()
                if children:
                    process = children[0]
                    break
                time.sleep(0.002)
            else:
                return
        except psutil.Error:
            return
        while not self.stop.is_set():
            value = self.read(process)
            if value is None:
                break
            self.samples.append((time.perf_counter(), *value))
            self.stop.wait(self.interval)


def windows_of(samples: list[tuple[float, int, int, float]], marks: list[tuple[str, float]], final_hwm: int,
               final_cpu: float) -> dict[str, dict[str, float | None]]:
    """Wall seconds, CPU seconds and peak memory (MB) of each window between consecutive ``marks``.

    ``rss``: the largest RSS sample in the window. ``peak``: the high-water mark reached in the
    window when it rose there (the process's peak so far was then set inside the window, short
    spikes included), else the largest sample. ``cpu``: CPU time between the samples around the
    window. Boundaries are exact to one sampling interval.
    """
    out = {}
    for (name, t0), (_, t1) in zip(marks, marks[1:]):
        inside = [s[1] for s in samples if t0 <= s[0] < t1]
        before = [s for s in samples if s[0] < t0]
        after = [s for s in samples if s[0] >= t1]
        hwm_start, cpu_start = (before[-1][2], before[-1][3]) if before else (0, 0.0)
        hwm_end, cpu_end = (after[0][2], after[0][3]) if after else (final_hwm, final_cpu)
        rss = max(inside) if inside else None
        peak = hwm_end if hwm_end > hwm_start else rss
        out[name] = {"seconds": round(t1 - t0, 3), "cpu": round(cpu_end - cpu_start, 2),
                     "rss_mb": None if rss is None else round(rss / 2**20, 1),
                     "peak_mb": None if peak is None else round(peak / 2**20, 1)}
    return out


def audit_once(exe: list[str], model: Path, manifest: Path, classes: Path, run_dir: Path,
               poll: float, sets: tuple[str, ...] = ()) -> dict:
    """Run one audit in a fresh run folder (``sets``: ``--set key=value`` strings); its wall and CPU
    time, peak RSS, and per-stage figures."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    usage_file = run_dir.parent / f"{run_dir.name}.usage.json"
    usage_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", LAUNCHER, str(usage_file), *exe, "run", "--model", str(model),
           "--data", str(manifest), "--classes", str(classes), "--out", str(run_dir),
           *[arg for s in sets for arg in ("--set", s)]]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1)
    sampler = Sampler(proc.pid, poll)
    sampler.start()
    lines: list[tuple[float, str]] = []
    for line in proc.stdout:
        lines.append((time.perf_counter(), line.rstrip("\n")))
    proc.wait()
    end = time.perf_counter()
    sampler.stop.set()
    sampler.join()
    log = "\n".join(text for _, text in lines)
    (run_dir.parent / f"{run_dir.name}.log").write_text(log + "\n")
    try:
        usage = json.loads(usage_file.read_text())
    except (OSError, ValueError):
        raise RuntimeError(f"the audit launcher failed ({proc.returncode}):\n{log[-3000:]}") from None
    if usage["code"] not in (0, 1):  # 1: a gate failed, a normal outcome
        raise RuntimeError(f"audit exited with {usage['code']}:\n{log[-3000:]}")

    # stage windows from the log: "[stage] start" opens a stage, the next one (or "[render] done") closes it
    marks = [("startup", start)]
    for t, text in lines:
        found = re.search(r"\[(\w+)\] (start|done)\b", text)
        if found and found.group(1) in STAGES and found.group(2) == "start":
            marks.append((found.group(1), t))
        elif found and found.group(1) == "render" and found.group(2) == "done":
            marks.append(("exit", t))
    marks.append(("end", end))
    windows = windows_of(sampler.samples, marks, usage["maxrss_kib"] * 1024, usage["cpu"])
    record = json.loads((run_dir / "run.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    stage_seconds = {name: w["seconds"] for name, w in windows.items()}
    stage_seconds.update(record["timings"])  # the pipeline's own stage timers where it has them
    return {"wall": round(usage["wall"], 3), "cpu": round(usage["cpu"], 2),
            "peak_mb": round(usage["maxrss_kib"] / 1024, 1),  # Linux: KiB
            "stage_seconds": stage_seconds,
            "stage_cpu": {name: w["cpu"] for name, w in windows.items()},
            "stage_peak_mb": {name: w["peak_mb"] for name, w in windows.items()},
            "samples": len(sampler.samples),
            "n_selected": summary["metrics"]["n_selected"], "accuracy": summary["metrics"]["accuracy"],
            "findings": len(summary["findings"]), "keys": record.get("keys"), "config": record["config"]}


# --------------------------------------------------------------------------- floor

def clocked(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


class Floor:
    """Bare model passes with the pipeline's own classifier, traced functions and explainer."""

    def __init__(self, model_path: Path):
        from audit.model_io import cached_classifier

        self.clf = cached_classifier(model_path)
        self.logits = self.clf.function("logits", lambda x: self.clf.forward(x)[0], self.clf.image_spec())

    def decode(self, root: Path, paths: list[str], partition: int = 512) -> tuple[tuple[float, float], np.ndarray]:
        """((wall, CPU) seconds, uint8 images): ``load_images`` over ``paths`` in partitions, one thread."""
        from audit.data import load_images

        out = np.empty((len(paths), *self.clf.input_shape), np.uint8)
        wall = cpu = 0.0
        for s in range(0, len(paths), partition):
            box = {}
            w, c = clocked(lambda: box.update(r=load_images(root, paths[s:s + partition], self.clf.input_size)))
            wall, cpu = wall + w, cpu + c
            images, errors = box["r"]
            if any(errors):
                raise RuntimeError(f"unreadable benchmark image: {next(e for e in errors if e)}")
            out[s:s + len(images)] = images
        return (wall, cpu), out

    def forward(self, images: np.ndarray, batch: int, segment: int = 4096) -> tuple[float, float]:
        """(wall, CPU) seconds of the forward passes over ``images`` (uint8) in batches of ``batch``.

        Float32 tensors are built per segment of ``segment`` images (bounded memory), untimed.
        """
        import tensorflow as tf

        self.logits(tf.constant(images[:batch].astype(np.float32))).numpy()  # warm-up (tracing)
        wall = cpu = 0.0
        for s in range(0, len(images), segment):
            part = images[s:s + segment].astype(np.float32)
            chunks = [tf.constant(part[b:b + batch]) for b in range(0, len(part), batch)]
            w, c = clocked(lambda: [self.logits(x).numpy() for x in chunks])
            wall, cpu = wall + w, cpu + c
        return wall, cpu

    def attribution(self, config: dict, images: np.ndarray, targets: np.ndarray) -> dict[str, tuple[float, float]]:
        """(wall, CPU) seconds of each configured method's floor (``attribution.floor_passes``) over
        ``images``: its bare model passes, in chunks of ``attribution.batch_size`` inputs. One
        chunk is built once and passed repeatedly: the passes' count is what costs, not their content."""
        import tensorflow as tf

        from attribution import Floors, floor_passes
        from audit.stages.attribute import explainers
        from audit.config import resolve

        settings = config.attribution
        built = explainers(resolve(sets=[f"attribution.{k}={json.dumps(settings[k])}"
                                         for k in ("methods", "params", "batch_size")]))
        floors, batch = Floors(self.clf, settings["batch_size"]), settings["batch_size"]
        x = tf.constant(images[np.arange(batch) % len(images)].astype(np.float32))
        t = tf.constant(targets[np.arange(batch) % len(images)])
        out = {}
        for method, explainer in built.items():
            kind, per_image, _ = floor_passes(method, explainer, self.clf.input_size)
            fn = floors.forward if kind == "forward" else floors.gradient
            fn(x, t).numpy()  # warm-up (tracing)
            total = len(images) * per_image
            rest = total % batch
            tail = (x[:rest], t[:rest]) if rest else None
            out[method] = clocked(lambda: ([fn(x, t).numpy() for _ in range(total // batch)],
                                           tail and fn(*tail).numpy()))
        return out

    def features(self, images: np.ndarray, batch: int) -> tuple[float, float]:
        """(wall, CPU) seconds of the attribute stage's extra forward pass (logits and activations)."""
        x = images.astype(np.float32)
        self.clf.logits_and_activations(x[:batch])  # warm-up (tracing)
        return clocked(lambda: [self.clf.logits_and_activations(x[s:s + batch]) for s in range(0, len(x), batch)])


def floor_once(floor: Floor, images: np.ndarray, decode: tuple[float, float], run_dir: Path,
               classes: list[str], config: dict) -> dict:
    import pandas as pd

    selection = pd.read_parquet(run_dir / "selection.parquet", columns=["row", "pair_label"])
    rows = selection["row"].to_numpy(np.int64)
    targets = selection["pair_label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int32)
    forward = floor.forward(images, config.predict["batch_size"])
    batch = config.attribution["batch_size"]
    methods = floor.attribution(config, images[rows], targets) if len(rows) else {}
    attribution = (sum(w for w, _ in methods.values()), sum(c for _, c in methods.values()))
    features = floor.features(images[rows], batch) if len(rows) else (0.0, 0.0)
    out = {"selection_images": int(len(rows)),
           "methods": {m: {"wall": round(w, 3), "cpu": round(c, 3)} for m, (w, c) in methods.items()}}
    for name, (wall, cpu) in (("decode", decode), ("forward", forward), ("attribution", attribution),
                              ("features", features)):
        out[name], out[f"{name}_cpu"] = round(wall, 3), round(cpu, 3)
    out["floor"] = round(forward[0] + attribution[0], 3)
    out["floor_cpu"] = round(forward[1] + attribution[1], 3)
    return out


# --------------------------------------------------------------------------- report

def best(values) -> float | None:
    values = [v for v in values if v is not None]
    return min(values) if values else None


def summarise(n: int, audits: list[dict], floors: list[dict]) -> dict:
    """One size: times are the best over the repeats, memory the largest."""
    names = list(audits[0]["stage_seconds"])
    stages = {s: best(a["stage_seconds"].get(s) for a in audits) for s in names}
    stage_cpu = {s: best(a["stage_cpu"].get(s) for a in audits) for s in audits[0]["stage_cpu"]}
    stage_peaks = {s: max((a["stage_peak_mb"].get(s) or 0) for a in audits) or None
                   for s in audits[0]["stage_peak_mb"]}
    floor = {k: best(f[k] for f in floors) for k in floors[0] if k not in ("selection_images", "methods")}
    floor["selection_images"] = floors[0]["selection_images"]
    floor["methods"] = {m: min((f["methods"][m] for f in floors), key=lambda v: v["wall"])
                        for m in floors[0]["methods"]}
    wall = best(a["wall"] for a in audits)
    model_stages = best(a["stage_seconds"]["predict"] + a["stage_seconds"]["attribute"] for a in audits)
    model_cpu = best(a["stage_cpu"]["predict"] + a["stage_cpu"]["attribute"] for a in audits)
    # ratios within one round (audit and its floor measured back to back), best round
    model_ratio = best((a["stage_seconds"]["predict"] + a["stage_seconds"]["attribute"]) / f["floor"]
                       for a, f in zip(audits, floors))
    wall_ratio = best(a["wall"] / f["floor"] for a, f in zip(audits, floors))
    return {
        "n": n, "repeats": len(audits), "wall": wall, "cpu": best(a["cpu"] for a in audits),
        "peak_mb": max(a["peak_mb"] for a in audits), "stage_seconds": stages, "stage_cpu": stage_cpu,
        "stage_peak_mb": stage_peaks,
        "n_selected": audits[0]["n_selected"], "accuracy": audits[0]["accuracy"],
        "findings": [a["findings"] for a in audits], "floor": floor,
        "model_stages": round(model_stages, 3), "model_stages_cpu": round(model_cpu, 2),
        "ratio_model_stages_to_floor": round(model_ratio, 3),
        "ratio_wall_to_floor": round(wall_ratio, 3),
        "cpu_ratio_model_stages_to_floor": round(model_cpu / floor["floor_cpu"], 3),
        "ratio_predict_to_forward": round(best(a["stage_seconds"]["predict"] / f["forward"]
                                               for a, f in zip(audits, floors)), 3),
        "ratio_predict_to_decode_plus_forward": round(best(a["stage_seconds"]["predict"] / (f["decode"] + f["forward"])
                                                           for a, f in zip(audits, floors)), 3),
        "ratio_attribute_to_floor": (round(best(a["stage_seconds"]["attribute"] / f["attribution"]
                                                for a, f in zip(audits, floors)), 3)
                                     if floor["attribution"] else None),
        "images_per_s": round(n / wall, 1),
        "runs": audits, "floors": floors,
    }


def acceptance(rows: list[dict]) -> list[dict]:
    """The issue's targets: the largest size against the next one, end-to-end at the largest."""
    if not rows:
        return []
    by_n = sorted(rows, key=lambda r: r["n"])
    large = by_n[-1]
    checks = []
    if len(by_n) >= 2:
        small = by_n[-2]
        limit = round(1.1 * large["n"] / small["n"], 3)
        value = large["wall"] / small["wall"]
        checks.append({"name": f"time({large['n']}) / time({small['n']}), whole audit wall",
                       "value": round(value, 3), "threshold": limit, "passed": value <= limit})
        value = large["stage_seconds"]["predict"] / small["stage_seconds"]["predict"]
        checks.append({"name": f"(info) predict({large['n']}) / predict({small['n']})",
                       "value": round(value, 3), "threshold": limit, "passed": value <= limit})
        value = large["peak_mb"] / small["peak_mb"]
        checks.append({"name": f"peak memory({large['n']}) / peak memory({small['n']}), audit max RSS",
                       "value": round(value, 3), "threshold": 1.2, "passed": value <= 1.2})
    for key, text in (("ratio_model_stages_to_floor", "(predict + attribute stages) / floor"),
                      ("ratio_wall_to_floor", "whole audit wall / floor")):
        checks.append({"name": f"end-to-end at {large['n']}: {text}", "value": large[key], "threshold": 1.15,
                       "passed": large[key] <= 1.15})
    return checks


def fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(result: dict) -> str:
    rows = result["rows"]
    m = result["meta"]
    cols = ["startup", *STAGES, "exit"]
    lines = ["# Scale benchmark", "",
             f"Demo CNN (64x64x3 -> 4) on synthetic hotel images; {m['cpus']} CPUs shared with other jobs, "
             f"TensorFlow {m['tensorflow']}, Python {m['python']}; {m['repeats']} round(s), sizes interleaved "
             f"(times: best of, memory: largest of); load average {m['load_before']} before, {m['load_after']} "
             f"after. Default pipeline settings: predict batch {m['predict_batch']}, partition "
             f"{m['partition_size']}, {m['dask_workers']} Dask threads, attribution batch {m['attribution_batch']}.",
             "", "## Wall time per stage (seconds)", "",
             "| n | selected | findings | wall | CPU | " + " | ".join(cols) + " | images/s |",
             "|---|---|---|---|---|" + "---|" * len(cols) + "---|"]
    for r in rows:
        s = r["stage_seconds"]
        lines.append(f"| {r['n']} | {r['n_selected']} | {'/'.join(map(str, r['findings']))} | {fmt(r['wall'])} | "
                     f"{fmt(r['cpu'])} | " + " | ".join(fmt(s.get(k)) for k in cols) + f" | {r['images_per_s']} |")
    lines += ["", "## CPU time per stage (seconds, sampled)", "",
              "| n | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['n']} | " + " | ".join(fmt(r["stage_cpu"].get(k)) for k in cols) + " |")
    lines += ["", "## Peak memory (MB RSS)", "",
              "| n | peak (max RSS) | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        p = r["stage_peak_mb"]
        lines.append(f"| {r['n']} | {fmt(r['peak_mb'], 1)} | " + " | ".join(fmt(p.get(k), 1) for k in cols) + " |")
    lines += ["", "## Floor (bare model passes, same run) and end-to-end ratios", "",
              "| n | forward floor | attribution floor (images; per method) | floor | decode (info) | features pass (info) "
              "| predict + attribute | **(predict + attribute) / floor** | **wall / floor** | CPU: (predict + attribute) "
              "/ floor | predict / forward | predict / (decode + forward) | attribute / attribution floor |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r["floor"]
        per_method = ", ".join(f"{m} {fmt(v['wall'])}" for m, v in f["methods"].items())
        lines.append(f"| {r['n']} | {fmt(f['forward'])} | {fmt(f['attribution'])} ({f['selection_images']}; {per_method}) | "
                     f"{fmt(f['floor'])} | {fmt(f['decode'])} | {fmt(f['features'])} | {fmt(r['model_stages'])} | "
                     f"{fmt(r['ratio_model_stages_to_floor'])} | {fmt(r['ratio_wall_to_floor'])} | "
                     f"{fmt(r['cpu_ratio_model_stages_to_floor'])} | {fmt(r['ratio_predict_to_forward'])} | "
                     f"{fmt(r['ratio_predict_to_decode_plus_forward'])} | {fmt(r['ratio_attribute_to_floor'])} |")
    lines += ["", "## Acceptance", "", "| check | value | threshold | result |", "|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['value']} | {c['threshold']} | {'PASS' if c['passed'] else 'FAIL'} |"
              for c in result["acceptance"]]
    lines += ["", "Floor = forward (one pass per image, batches of predict.batch_size, on decoded float32 tensors) "
              "+ each configured attribution method's floor over the selected and contrast images (Grad-CAM: 1 "
              "forward; IG: steps x forward+backward; occlusion: 1 forward per patch; attribution.batch_size "
              "inputs per pass), timed in the benchmark "
              "process right after each audit, after a warm-up call (tracing excluded). Decode = "
              "`audit.data.load_images` over the PNGs, one thread; features = the attribute stage's extra "
              "forward pass per selected image; both for information, not in the floor. Ratios to the floor "
              "are taken per round (audit and floor back to back), best round. 'startup' is before the predict "
              "stage, 'exit' after render. Per-stage CPU and memory come from sampling the audit process every "
              f"{m['poll']} s (memory: the kernel's high-water mark where it rose in that stage); 'peak (max RSS)' "
              "is the audit process's ru_maxrss."]
    lines += [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,8000,32000", help="comma-separated data set sizes")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--repeats", type=int, default=1, help="rounds: audits (and floors) per size")
    parser.add_argument("--data", default=None, help="data set cache (default <out>/scale-data)")
    parser.add_argument("--cache", default="reports/.cache/demo", help="demo cache (model, classes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="image rendering processes")
    parser.add_argument("--poll", type=float, default=0.05, help="sampling interval of the audit process, seconds")
    args = parser.parse_args()
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error("--sizes must list positive ints")
    if not sizes or min(sizes) <= 0 or args.repeats < 1:
        parser.error("--sizes must list positive ints and --repeats must be >= 1")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else out / "scale-data"
    generation = prepare_data(data, sizes, args.seed, args.processes)
    print(f"scale: data sets ready in {data} ({generation})", flush=True)

    import pandas as pd

    from audit.cli import import_tensorflow_quietly

    tf = import_tensorflow_quietly()
    from audit import demo
    from audit.config import defaults

    assets = demo.prepare(Path(args.cache), log=lambda msg: print(msg, flush=True))
    classes = [line.strip() for line in Path(assets.classes).read_text().splitlines() if line.strip()]
    script = Path(sys.executable).parent / "audit"
    exe = [str(script)] if script.exists() else [sys.executable, "-c",
                                                 "import sys; from audit.cli import main; sys.exit(main())"]
    floor = Floor(assets.model_path)
    load_before = os.getloadavg()
    audits: dict[int, list[dict]] = {n: [] for n in sizes}
    floors: dict[int, list[dict]] = {n: [] for n in sizes}
    for r in range(args.repeats):
        for n in sizes:
            manifest = data / f"manifest-{n}.csv"
            decode, images = floor.decode(data, pd.read_csv(manifest)["path"].tolist())
            a = audit_once(exe, assets.model_path, manifest, assets.classes, out / "scale-runs" / f"n{n}-r{r}",
                           args.poll)
            print(f"scale: round {r + 1}/{args.repeats} n={n}: wall {a['wall']:.1f} s, CPU {a['cpu']:.1f} s, "
                  f"peak {a['peak_mb']:.0f} MB, stages {a['stage_seconds']}", flush=True)
            f = floor_once(floor, images, decode, out / "scale-runs" / f"n{n}-r{r}", classes, a.pop("config"))
            print(f"scale: round {r + 1}/{args.repeats} n={n}: floor {f}", flush=True)
            audits[n].append(a)
            floors[n].append(f)
            del images
    rows = [summarise(n, audits[n], floors[n]) for n in sizes]
    notes = []
    changed = [n for n in sizes if len({json.dumps(a["keys"], sort_keys=True) for a in audits[n]}) > 1]
    if changed:  # the stage keys hash the package source: it was edited between rounds
        notes.append(f"the audit package's source changed during the benchmark (stage keys differ between "
                     f"rounds for n = {', '.join(map(str, changed))}): rounds ran different code")

    result = {
        "meta": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "tensorflow": tf.__version__, "sizes": sizes, "repeats": args.repeats, "seed": args.seed,
                 "predict_batch": defaults()["predict"]["batch_size"],
                 "partition_size": defaults()["predict"]["partition_size"],
                 "attribution_batch": defaults()["attribution"]["batch_size"],
                 "dask_workers": defaults()["dask"]["workers"], "poll": args.poll,
                 "load_before": [round(v, 2) for v in load_before],
                 "load_after": [round(v, 2) for v in os.getloadavg()],
                 "data": str(data), "generation": generation, "cue_rates": CUE_RATES},
        "rows": rows, "notes": notes,
    }
    result["acceptance"] = acceptance(rows)
    (out / "scale.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = markdown(result)
    (out / "scale.md").write_text(text)
    print(text)
    for c in result["acceptance"]:
        print(f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['value']} (threshold {c['threshold']})")


if __name__ == "__main__":
    main()
