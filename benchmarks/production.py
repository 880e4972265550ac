"""A night's audit of 224-px production architectures with the default settings, against its floor.

Models: MobileNetV2 (alpha 1.0), EfficientNetB0 and ResNet50 from ``keras.applications``
at 224x224, 10 classes, ``weights=None`` (nothing downloaded). Each is made to behave
like a trained model on the data: its batch-norm statistics are calibrated on a batch
of the images (one training-mode pass with momentum 0), and its head is fitted (logistic
regression on the pooled features to 10 k-means clusters of them); the labels are the
model's own predictions with 15% moved to each image's runner-up class, so about 85% of
the labels agree with the predictions and the errors concentrate on confusable pairs.

Data: ``--images`` JPEGs (quality 90, 1-2 megapixels) made from scikit-image's sample
photos, each a random crop, rescaled, flipped and colour-jittered (cached in ``--work``).

Per model, in its own process (so that its peak memory is its own), the benchmark runs
``audit.pipeline.run`` with the default settings (only ``data.preprocess`` says what the
architecture takes) and reports:

* wall time per stage (the run's ``run.json``) and images/s of predict and of each
  attribution method (the attribute stage's wall time shared out by the seconds each
  method took in its tasks);
* the model passes of every stage, counted by the traced functions themselves
  (``audit.model_io.passes``): forward passes, passes with a backward pass to the target
  layer (Grad-CAM, the fused predict pass) and with a backward pass to the input;
* the floor: those passes timed bare in the same process just before and after the run (the
  faster of the two; the same traced model, decoded inputs already on the device, the
  default batch sizes): a
  forward pass per forward or target-layer pass (the short backward pass to the target
  layer is not in the floor), a forward and backward pass to the input per input pass;
  wall/floor per stage and for the run (target <= 1.3), predict's against its bare
  forward passes (target <= 1.3, decoding included);
* decode time (every image decoded and resized once, one thread) and peak memory (the
  process's maximum resident set);
* the cost per data-set image in forward-pass equivalents: forward and target-layer
  passes count 1, a forward and backward pass to the input counts 3;
* on MobileNetV2: the fused predict pass (logits + Grad-CAM + pooled features,
  ``Classifier.logits_and_cam``) against logits alone, bare and as the predict stage
  (``benchmarks/predict.py``'s measurement; target <= 1.15).

Writes ``production.json`` and ``production.md`` into ``--out`` and prints them. GPU
figures are not measured here.

    python benchmarks/production.py --out benchmarks/results [--images 2000 | --images 100,30,16]
        [--models mobilenetv2,efficientnetb0,resnet50] [--work DIR [--reuse]]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

MODELS = {"mobilenetv2": ("MobileNetV2", "tf"), "efficientnetb0": ("EfficientNetB0", "none"),
          "resnet50": ("ResNet50", "caffe")}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
          "camera", "moon", "coins", "grass", "gravel", "brick")
N_CLASSES = 10
AGREEMENT = 0.85
MAX_WALL_OVER_FLOOR = 1.3
MAX_PREDICT_OVER_FORWARD = 1.3
MAX_FUSED_OVER_PREDICT = 1.15
INPUT_PASS_COST = 3


# --------------------------------------------------------------------------- data

def photos(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` JPEGs of 1-2 megapixels in ``folder`` (reused when already there): file names."""
    import skimage.data
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i:05d}.jpg" for i in range(n)]
    if all((folder / name).exists() for name in names):
        return names
    sources = []
    for name in PHOTOS:
        pixels = np.asarray(getattr(skimage.data, name)())
        if pixels.dtype != np.uint8:
            pixels = (255 * (pixels - pixels.min()) / max(np.ptp(pixels), 1e-9)).astype(np.uint8)
        sources.append(Image.fromarray(pixels).convert("RGB"))
    rng = np.random.default_rng(seed)
    for i, name in enumerate(names):
        if (folder / name).exists():
            continue
        src = sources[int(rng.integers(len(sources)))]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.4, 0.9)), int(h * rng.uniform(0.4, 0.9))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        megapixels = rng.uniform(1.0, 2.0) * 1e6
        aspect = rng.choice([4 / 3, 3 / 2, 3 / 4, 1.0])
        width = int(np.sqrt(megapixels * aspect))
        image = src.crop((x0, y0, x0 + cw, y0 + ch)).resize((width, int(megapixels / width)), Image.BICUBIC)
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        gain = rng.uniform(0.7, 1.3, 3)
        pixels = np.asarray(image, np.float32) * gain + rng.uniform(-20, 20)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name, quality=90)
    return names


def production_model(arch: str, preprocess: str, root: Path, names: list[str], seed: int = 0):
    """The ``keras.applications`` model, batch norm calibrated and head fitted; ``(model, labels [N] int)``."""
    import keras
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression

    from audit.data import load_images
    from audit.data import preprocess as prep

    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, arch)(weights=None, input_shape=(224, 224, 3), classes=N_CLASSES)
    calibration, _ = load_images(root, names[:64], (224, 224))
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0   # the moving statistics become those of this batch
    model(prep(calibration, preprocess), training=True)
    for layer in norms:
        layer.momentum = 0.99
    head = model.get_layer("predictions")
    features_of = keras.Model(model.inputs, head.input)
    features = []
    for start in range(0, len(names), 64):
        batch, _ = load_images(root, names[start:start + 64], (224, 224))
        features.append(np.asarray(features_of(prep(batch, preprocess), training=False)))
    features = np.concatenate(features)
    scale = features.std() or 1.0
    clusters = KMeans(N_CLASSES, n_init=4, random_state=seed).fit_predict(features / scale)
    fit = LogisticRegression(C=0.05, max_iter=300).fit(features / scale, clusters)
    kernel = np.zeros((features.shape[1], N_CLASSES), np.float32)
    bias = np.zeros(N_CLASSES, np.float32)
    kernel[:, fit.classes_] = fit.coef_.T / scale
    bias[fit.classes_] = fit.intercept_
    bias[np.setdiff1d(np.arange(N_CLASSES), fit.classes_)] = -1e3
    head.set_weights([kernel, bias])
    logits = features @ kernel + bias
    order = np.argsort(-logits, axis=1)
    labels = order[:, 0].copy()
    rng = np.random.default_rng(seed)
    moved = rng.random(len(labels)) < 1 - AGREEMENT
    labels[moved] = order[moved, 1]
    return model, labels


# --------------------------------------------------------------------------- one model, in its own process

def floors(clf, images: np.ndarray, predict_batch: int, attribution_batch: int, repeats: int) -> dict:
    """Bare seconds per model input: forward (at ``predict_batch`` and at ``attribution_batch``) and
    forward + backward to the input (``attribution_batch``), the best of ``repeats`` passes over ``images``
    after a warm-up call."""
    import tensorflow as tf

    spec_t = tf.TensorSpec((None,), tf.int32)

    def forward(x, t):
        return tf.gather(clf.forward(x)[0], t, batch_dims=1)

    def gradient(x, t):
        with tf.GradientTape() as tape:
            tape.watch(x)
            score = tf.gather(clf.forward(x)[0], t, batch_dims=1)
        return tape.gradient(score, x)

    fns = {"forward": clf.function(("benchmark-floor", "forward"), forward, clf.image_spec(), spec_t),
           "input": clf.function(("benchmark-floor", "input"), gradient, clf.image_spec(), spec_t)}
    targets = np.zeros(len(images), np.int32)
    out = {}
    for name, kind, batch in (("forward_predict", "forward", predict_batch),
                              ("forward", "forward", attribution_batch), ("input", "input", attribution_batch)):
        chunks = [(tf.constant(images[s:s + batch]), tf.constant(targets[s:s + batch]))
                  for s in range(0, len(images), batch)]
        fns[kind](*chunks[0]).numpy()   # warm-up
        best = np.inf
        for _ in range(repeats):
            start = time.perf_counter()
            for x, t in chunks:
                fns[kind](x, t).numpy()
            best = min(best, time.perf_counter() - start)
        out[name] = best / len(images)
    return out


def delta(after: dict, before: dict) -> dict:
    """``passes()`` after minus before: ``{kind: {key: inputs}}`` without zeros."""
    return {kind: {k: v - before.get(kind, {}).get(k, 0) for k, v in keys.items()
                   if v - before.get(kind, {}).get(k, 0)} for kind, keys in after.items()}


def prepared(name: str, n: int, work: Path, reuse: bool = False) -> tuple[Path, Path, Path, list[str]]:
    """The audit's inputs for model ``name`` on ``n`` photos in ``work``: built (photos made when missing),
    or with ``reuse`` taken as they are when the model and a manifest of ``n`` rows are there.

    Returns ``(model.keras, manifest CSV, classes.txt, photo file names)``; the photos are in
    ``work / "photos"``, the model and classes in ``work / name``.
    """
    import pandas as pd

    arch, preprocess = MODELS[name]
    data, folder = work / "photos", work / name
    model_path, manifest, classes_path = folder / "model.keras", data / f"manifest-{name}.csv", folder / "classes.txt"
    t0 = time.perf_counter()
    names = photos(data, n)
    if reuse and model_path.exists() and manifest.exists() and len(pd.read_csv(manifest)) == n:
        return model_path, manifest, classes_path, names
    made = time.perf_counter() - t0
    model, labels = production_model(arch, preprocess, data, names)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(model_path)
    classes = [f"c{i}" for i in range(N_CLASSES)]
    classes_path.write_text("\n".join(classes) + "\n")
    pd.DataFrame({"path": names, "label": [classes[i] for i in labels]}).to_csv(manifest, index=False)
    print(f"[{name}] {n} photos ({made:.0f} s), model built and calibrated ({time.perf_counter() - t0:.0f} s "
          f"in all)", flush=True)
    return model_path, manifest, classes_path, names


def run_one(name: str, n: int, work: Path, reuse: bool = False) -> dict:
    """Build (``reuse``: or reuse, ``prepared``), audit and measure one model; the row of the table."""
    import pandas as pd

    from audit import pipeline
    from audit.config import resolve
    from audit.data import load_images
    from audit.data import preprocess as prep
    from audit.model_io import classifier_for, passes

    arch, preprocess = MODELS[name]
    data, folder = work / "photos", work / name
    t0 = time.perf_counter()
    model_path, manifest, classes_path, names = prepared(name, n, work, reuse)
    setup = time.perf_counter() - t0

    run_dir = folder / "run"
    shutil.rmtree(run_dir, ignore_errors=True)   # a fresh run (an old complete one would be reused)
    config = resolve(None, [f"data.preprocess={preprocess}"],
                     {"model.path": str(model_path), "data.path": str(manifest),
                      "data.classes": str(classes_path), "out": str(run_dir)})
    per_stage: dict[str, dict] = {}
    current = {"stage": None, "at": passes()}

    def log(msg: str) -> None:
        text = msg.strip()
        if text.startswith("[") and text.endswith("]") and " " not in text:
            now = passes()
            if current["stage"] is not None:
                per_stage[current["stage"]] = delta(now, current["at"])
            current.update(stage=text[1:-1], at=now)
        print(f"[{name}] {msg}", flush=True)

    clf = classifier_for(config)
    sample, _ = load_images(data, names[:64], clf.input_size)
    sample = prep(sample, preprocess)
    batches = (config.predict.batch_size, config.attribution.batch_size)
    before = floors(clf, sample, *batches, repeats=1)
    load = os.getloadavg()
    start = time.perf_counter()
    summary = pipeline.run(config, log=log)
    wall = time.perf_counter() - start
    per_stage[current["stage"]] = delta(passes(), current["at"])
    record = json.loads((run_dir / "run.json").read_text())
    timings = record["timings"]

    after = floors(clf, sample, *batches, repeats=1)
    bare = {k: min(before[k], after[k]) for k in before}   # the faster of before and after the run: load drifts
    start = time.perf_counter()
    load_images(data, names, clf.input_size)
    decode = time.perf_counter() - start

    stages = {}
    for stage, seconds in timings.items():
        counted = per_stage.get(stage, {})
        forward = sum(counted.get("forward", {}).values())
        layer = sum(counted.get("layer", {}).values())
        inputs = sum(counted.get("input", {}).values())
        per_input = bare["forward_predict"] if stage == "predict" else bare["forward"]
        floor = (forward + layer) * per_input + inputs * bare["input"]
        stages[stage] = {"seconds": seconds, "floor_s": round(floor, 3),
                         "wall_over_floor": round(seconds / floor, 3) if floor else None,
                         "forward": forward, "layer": layer, "input": inputs,
                         "equivalents_per_image": round((forward + layer + INPUT_PASS_COST * inputs) / n, 2),
                         "passes": counted}
    predictions = pd.read_parquet(run_dir / "predictions.parquet")
    selection = pd.read_parquet(run_dir / "selection.parquet")
    method_seconds: dict[str, float] = {}
    for chunk in (run_dir / "chunks").glob("attribute-*/*.json"):
        for method, s in json.loads(chunk.read_text()).get("seconds", {}).items():
            method_seconds[method] = method_seconds.get(method, 0.0) + s
    share = sum(method_seconds.values()) or 1.0
    attributed = len(selection)
    methods = {m: {"images_per_s": round(attributed / (timings.get("attribute", 0) * s / share), 2) if s else None,
                   "task_seconds": round(s, 2)} for m, s in method_seconds.items()}
    method_floor = _method_floors(per_stage.get("attribute", {}), bare)
    for m, floor in method_floor.items():
        if m in methods:
            methods[m]["floor_s"] = round(floor, 3)
            methods[m]["wall_over_floor"] = round(timings["attribute"] * method_seconds[m] / share / floor, 3)
    floor_total = sum(s["floor_s"] for s in stages.values())
    total = sum(timings.values())
    return {"model": name, "architecture": arch, "images": n, "preprocess": preprocess,
            "load_average_at_start": [round(v, 2) for v in load], "load_average_at_end":
            [round(v, 2) for v in os.getloadavg()],
            "accuracy": summary["metrics"]["accuracy"], "selected": attributed,
            "unreadable": int(predictions["error"].notna().sum()),
            "findings": len(summary["findings"]), "run_wall_s": round(wall, 2), "stages_s": round(total, 2),
            "stages": stages, "methods": methods, "bare_s_per_input": {k: round(v, 5) for k, v in bare.items()},
            "floor_s": round(floor_total, 2), "wall_over_floor": round(total / floor_total, 3),
            "predict_images_per_s": round(n / timings["predict"], 2),
            "predict_over_forward": round(timings["predict"] / (n * bare["forward_predict"]), 3),
            "decode_s": round(decode, 2), "decode_images_per_s": round(n / decode, 2),
            "equivalents_per_image": round(sum(s["equivalents_per_image"] for s in stages.values()), 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "setup_s": round(setup, 1)}


def _method_floors(counted: dict, bare: dict) -> dict[str, float]:
    """Each method's floor (seconds) from the attribute stage's counted passes (its function keys)."""
    out: dict[str, float] = {}
    for kind, keys in counted.items():
        per_input = bare["input"] if kind == "input" else bare["forward"]
        for key, inputs in keys.items():
            method = ("occlusion" if key.startswith("occlusion") else
                      "integrated_gradients" if key in ("integrated_gradients", "logits") else key)
            out[method] = out.get(method, 0.0) + inputs * per_input
    return out


def fused_row(work: Path, n: int, repeats: int) -> dict:
    """``benchmarks/predict.py``'s fused-pass measurement on the MobileNetV2 of this benchmark."""
    import keras
    import pandas as pd
    from predict import measure

    from audit.data import load_images

    data = work / "photos"
    names = sorted(p.name for p in data.glob("*.jpg"))[:n]
    manifest = pd.read_csv(data / "manifest-mobilenetv2.csv").set_index("path").loc[names].reset_index()
    model = keras.models.load_model(work / "mobilenetv2" / "model.keras")
    wrapped = keras.Sequential([keras.Input((224, 224, 3)), keras.layers.Rescaling(1 / 127.5, offset=-1.0), model],
                               name="mobilenetv2_nested")
    images, _ = load_images(data, names, (224, 224))
    files = manifest.assign(label=[str(int(c[1:])) for c in manifest["label"]])
    return measure("mobilenetv2-224", wrapped, images, files, data, repeats, 64)


# --------------------------------------------------------------------------- report

def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = ["# Production architectures: a default audit against its floor", "",
             f"{result['machine']}; JPEGs of 1-2 megapixels (images per model in the table); default settings. "
             f"Load average (1, 5, 15 min) at the start of each model's run in the table.", "",
             "| model | images | selected | wall s | floor s | wall/floor | predict img/s | predict/forward | "
             "decode s | fwd-equiv./image | peak MB | load |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['images']} | {r['selected']} | {r['stages_s']} | {r['floor_s']} | "
                     f"{r['wall_over_floor']} | {r['predict_images_per_s']} | {r['predict_over_forward']} | "
                     f"{r['decode_s']} | {r['equivalents_per_image']} | {r['peak_rss_mb']} | "
                     f"{r['load_average_at_start'][0]} |")
    lines += ["", "Per stage: seconds (floor, wall/floor) [forward / target-layer / input passes]:", ""]
    for r in rows:
        parts = [f"{k} {v['seconds']} s ({v['floor_s']}, {v['wall_over_floor']}) "
                 f"[{v['forward']}/{v['layer']}/{v['input']}]" for k, v in r["stages"].items()]
        lines.append(f"- {r['model']}: " + "; ".join(parts))
    lines += ["", "Per method (attribute stage): images/s (wall/floor):", ""]
    for r in rows:
        lines.append(f"- {r['model']}: " + "; ".join(f"{m} {v['images_per_s']} ({v.get('wall_over_floor')})"
                                                    for m, v in r["methods"].items()))
    fused = result.get("fused")
    if fused:
        lines += ["", f"Fused predict (logits + Grad-CAM + features) over logits alone on MobileNetV2, "
                      f"{fused['n_images']} images: bare {fused['bare']['ratio']}, as the predict stage (decoding "
                      f"included) {fused['stage']['ratio']} (target <= {MAX_FUSED_OVER_PREDICT})"]
    lines += ["", "Targets: " + "; ".join(
        f"{r['model']}: wall/floor {r['wall_over_floor']} "
        f"{'met' if r['wall_over_floor'] <= MAX_WALL_OVER_FLOOR else 'NOT met'}, predict/forward "
        f"{r['predict_over_forward']} {'met' if r['predict_over_forward'] <= MAX_PREDICT_OVER_FORWARD else 'NOT met'}"
        for r in rows), "", "GPU figures are not measured here."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "benchmarks" / "results"))
    parser.add_argument("--images", default="2000",
                        help="images per model: one count, or one per model in --models order (e.g. 100,60,30)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--work", default=None, help="folder for the photos, models and runs (default: a temporary one)")
    parser.add_argument("--fused-images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reuse", action="store_true",
                        help="take a model's row from <work>/<model>/result.json when it has the same image count, "
                             "else its model and manifest when they are there")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        row = run_one(args.one, int(args.images), Path(args.work), args.reuse)
        (Path(args.work) / args.one / "result.json").write_text(json.dumps(row, indent=2) + "\n")
        print("RESULT " + json.dumps(row), flush=True)
        return
    if args.one is None and args.work is None:
        with tempfile.TemporaryDirectory(prefix="production-bench-") as tmp:
            return _all(args, Path(tmp))
    return _all(args, Path(args.work))


def _all(args, work: Path) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    models = args.models.split(",")
    counts = [int(c) for c in args.images.split(",")]
    counts = counts * len(models) if len(counts) == 1 else counts
    if len(counts) != len(models):
        raise SystemExit(f"--images: one count or one per model ({len(models)}), got {args.images}")
    photos(work / "photos", max(counts))
    for name, n in zip(models, counts):
        stored = work / name / "result.json"
        if args.reuse and stored.exists() and json.loads(stored.read_text())["images"] == n:
            rows.append(json.loads(stored.read_text()))   # this model's run, measured earlier in --work
            continue
        child = subprocess.Popen([sys.executable, __file__, "--one", name, "--images", str(n), "--work", str(work),
                                  *(["--reuse"] if args.reuse else [])], stdout=subprocess.PIPE, text=True)
        result = None
        for line in child.stdout:   # its log as it goes; its row on the line starting "RESULT "
            if line.startswith("RESULT "):
                result = json.loads(line[7:])
            else:
                print(line, end="", flush=True)
        if child.wait() != 0 or result is None:
            raise SystemExit(f"the {name} run failed (exit {child.returncode})")
        rows.append(result)
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("stages", "methods")}), flush=True)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU (GPU figures not measured)",
              "images": args.images, "rows": rows}
    if "mobilenetv2" in models:
        result["fused"] = fused_row(work, min(args.fused_images, counts[models.index("mobilenetv2")]), args.repeats)
    (out / "production.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "production.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
