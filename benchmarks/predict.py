"""Predict stage cost of the fused pass: logits plus Grad-CAM and pooled features, against logits alone.

The predict stage keeps, for every image, its Grad-CAM of the predicted class and
the target layer's attention-pooled and max-pooled features
(``Classifier.logits_and_cam``: the forward pass plus the backward pass from the
predicted logit to the target layer), so that strategies, cue slices and the
attribute stage's features need no other pass over the data. Issue 14 asks that
this cost at most 1.15x predict alone.

Two measurements per model, in the same run:

* ``bare``: the traced model calls alone (``Classifier.logits`` against
  ``Classifier.logits_and_cam``) on inputs already decoded, in rotating order over
  ``--repeats`` rounds (``attribution.interleaved``); the ratio is the median over
  rounds of the fused call's wall time over the logits call's;
* ``stage``: ``audit.stages.predict.predict_partition`` on image files (decoding
  included, as the stage runs) without a chunk number (logits only) and with one
  (fused, cams written), also interleaved.

Models: MobileNetV2 (``weights=None``, 224x224, 10 classes; 128 images written as
JPEGs) and the demo CNN (``audit.demo.prepare``, its 460 audit images).
Writes ``predict.json`` and ``predict.md`` into ``--out``.

    python benchmarks/predict.py --out benchmarks/results [--repeats 5] [--models mobilenetv2,demo]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd

from attribution import demo_model, interleaved, mobilenet, paired

MAX_RATIO = 1.15


def measure(name: str, model, images: np.ndarray, files: pd.DataFrame, root: Path, repeats: int, batch: int) -> dict:
    from audit.config import resolve
    from audit.model_io import Classifier
    from audit.stages.predict import predict_partition

    clf = Classifier(model)
    bare = interleaved({
        "logits": lambda: [clf.logits(images[i:i + batch]) for i in range(0, len(images), batch)],
        "fused": lambda: [clf.logits_and_cam(images[i:i + batch]) for i in range(0, len(images), batch)],
    }, repeats)
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "model.keras"
        model.save(model_path)
        config = resolve(None, [f"predict.batch_size={batch}"], {"model.path": str(model_path), "out": tmp})
        part = files.assign(row=np.arange(len(files)))
        stage = interleaved({
            "logits": lambda: predict_partition(config, root, [str(i) for i in range(10)], part),
            "fused": lambda: predict_partition(config, root, [str(i) for i in range(10)], part, 0),
        }, repeats)
    return {"model": name, "n_images": len(images), "batch": batch,
            "bare": {"ratio": round(paired(bare["fused"], bare["logits"]), 3),
                     "logits_s": round(min(bare["logits"]["wall"]), 3), "fused_s": round(min(bare["fused"]["wall"]), 3)},
            "stage": {"ratio": round(paired(stage["fused"], stage["logits"]), 3),
                      "logits_s": round(min(stage["logits"]["wall"]), 3),
                      "fused_s": round(min(stage["fused"]["wall"]), 3)}}


def _files(images: np.ndarray, folder: Path, suffix: str) -> pd.DataFrame:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, img in enumerate(images):
        path = f"{i:04d}{suffix}"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / path, quality=90)
        rows.append({"path": path, "label": str(i % 10)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "benchmarks" / "results"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="mobilenetv2,demo")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if "mobilenetv2" in args.models:
            model, make = mobilenet()
            images = (make(128) + 1) * 127.5      # MobileNetV2 takes -1..1: a Rescaling layer would; here raw
            files = _files(images, Path(tmp) / "mnv2", ".jpg")
            model_in = model

            import keras
            wrapped = keras.Sequential([keras.Input((224, 224, 3)), keras.layers.Rescaling(1 / 127.5, offset=-1.0),
                                        model_in], name="mobilenetv2_nested")
            rows.append(measure("mobilenetv2-224", wrapped, images.astype(np.float32), files, Path(tmp) / "mnv2",
                                args.repeats, 32))
            print(json.dumps(rows[-1]))
        if "demo" in args.models:
            model, make = demo_model(Path(tmp) / "demo")
            images = make(460)
            files = _files(images, Path(tmp) / "demo-files", ".png")
            rows.append(measure("demo-cnn-64", model, images, files, Path(tmp) / "demo-files", args.repeats, 64))
            print(json.dumps(rows[-1]))
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU (not measured on a GPU)",
              "max_ratio": MAX_RATIO, "rows": rows}
    (out / "predict.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Predict: fused pass (logits + Grad-CAM + pooled features) against logits alone", "",
             f"{result['machine']}; ratio = median over rounds of fused / logits wall time, same run.", "",
             "| model | images | batch | bare ratio | stage ratio (with decoding) | logits s | fused s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['n_images']} | {r['batch']} | {r['bare']['ratio']} | {r['stage']['ratio']} | "
                     f"{r['stage']['logits_s']} | {r['stage']['fused_s']} |")
    lines += ["", f"Target: stage ratio <= {MAX_RATIO} on both models: "
              + ", ".join(f"{r['model']} {'met' if r['stage']['ratio'] <= MAX_RATIO else 'NOT met'}" for r in rows)]
    (out / "predict.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
