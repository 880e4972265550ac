"""Attribution speed: images/s of each registered method and its ratio to its floor.

The floor of a method is the model passes it cannot avoid, timed bare in the same
run on the same inputs: Grad-CAM needs one forward pass per image. Models:
MobileNetV2 (``weights=None``, 224x224, 10 classes) and the demo CNN.
Writes ``attribution.json`` and ``attribution.md`` into ``--out``.

    python benchmarks/attribution.py --out benchmarks/results [--images 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

FLOOR_PASSES = {"gradcam": "1 forward"}


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: tracing is a one-off cost, not a per-image one
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def models(cache: Path):
    import keras

    from audit import demo

    keras.utils.set_random_seed(0)
    yield "mobilenetv2-224", keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=10)
    assets = demo.prepare(cache, log=lambda _m: None)
    yield "demo-cnn", keras.models.load_model(assets.model_path, compile=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default="reports/.cache/demo")
    args = parser.parse_args()

    from audit.explainers import available, get
    from audit.model_io import Classifier

    rows = []
    for name, model in models(Path(args.cache)):
        clf = Classifier(model)
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 255, (args.images, *clf.input_shape)).astype(np.float32)
        targets = rng.integers(0, clf.n_classes, args.images).astype(np.int32)
        batch = args.batch_size

        def floor():
            for i in range(0, len(images), batch):
                clf.logits(images[i:i + batch])

        floor_s = best_time(floor, args.repeats)
        for method in available():
            explainer = get(method)(batch_size=batch)
            seconds = best_time(lambda: explainer.explain(clf, images, targets), args.repeats)
            rows.append({"model": name, "method": method, "images": args.images, "batch_size": batch,
                         "seconds": round(seconds, 4), "images_per_s": round(args.images / seconds, 2),
                         "floor": FLOOR_PASSES.get(method, "?"), "floor_seconds": round(floor_s, 4),
                         "ratio_to_floor": round(seconds / floor_s, 3)})
            print(f"{name:16s} {method:22s} {rows[-1]['images_per_s']:8.1f} img/s  "
                  f"ratio to floor {rows[-1]['ratio_to_floor']:.2f}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    (out / "attribution.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["| model | method | images/s | floor | ratio to floor |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['method']} | {r['images_per_s']} | {r['floor']} | {r['ratio_to_floor']} |"
              for r in rows]
    (out / "attribution.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
