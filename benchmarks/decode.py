"""Decoding large photos: Pillow's draft mode against full decoding, in time and in maps.

For 2000x1500 JPEGs (smooth colour waves with mild noise and a few sharp-edged
shapes, quality 90, made here with a fixed seed) and model input sizes 64 and
224, measures:

* time: ``audit.data.read_image`` then ``resize`` to the input size, with the
  input size given (draft mode: the DCT scaled by 1/8, 1/4 or 1/2 while decoding)
  and without it (full decode, then the same resize), median of ``--repeats``
  alternating passes over the images, one thread; the ratio full / draft is the
  speed-up (expected: several times);
* maps: Grad-CAM of a small convolutional classifier (random weights, seeded,
  built here: no pretrained weights) on the two decodes of each image, and the
  Pearson r between the two maps per image (acceptance: the minimum >= 0.99), and
  the mean absolute pixel difference of the two resized decodes (0..255 units).

Writes ``decode.json`` and ``decode.md`` into ``--out`` and prints the figures.

    python benchmarks/decode.py --out benchmarks/results [--images 8] [--repeats 3]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from audit.data import read_image, resize  # noqa: E402

WIDTH, HEIGHT = 2000, 1500
SIZES = (64, 224)
MIN_PEARSON = 0.99


def photo(seed: int) -> bytes:
    """A 2000x1500 JPEG (quality 90): colour waves, noise and sharp shapes, as a photo has both."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH] / WIDTH
    waves = [127 + 90 * np.sin(2 * np.pi * (a * x + b * y) + c) for a, b, c in rng.uniform(0.5, 4, (3, 3))]
    pixels = np.clip(np.stack(waves, -1) + rng.normal(0, 6, (HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, WIDTH - 400)), int(rng.integers(0, HEIGHT - 300))
        box = (x0, y0, x0 + int(rng.integers(80, 400)), y0 + int(rng.integers(60, 300)))
        draw.rectangle(box, fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def model(size: int):
    """A small seeded conv classifier with random weights (Grad-CAM at its last conv layer)."""
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    for filters in (16, 32, 32):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="last_conv")(x)
    outputs = layers.Dense(4)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def decode(data: list[bytes], size: int, draft: bool) -> tuple[float, np.ndarray]:
    """(seconds, images ``[N, size, size, 3]`` uint8) of decoding and resizing every photo."""
    start = time.perf_counter()
    out = [resize(read_image(d, size=(size, size) if draft else None), (size, size)) for d in data]
    return time.perf_counter() - start, np.stack(out)


def measure(data: list[bytes], size: int, repeats: int) -> dict:
    from audit.explainers import explain

    times = {"draft": [], "full": []}
    images = {}
    for _ in range(repeats):   # alternating, so that a busy moment of the machine hits both
        for kind in ("draft", "full"):
            seconds, images[kind] = decode(data, size, kind == "draft")
            times[kind].append(seconds)
    net = model(size)
    targets = net(images["full"].astype(np.float32)).numpy().argmax(axis=1)
    maps = {k: explain(net, v.astype(np.float32), targets, method="gradcam") for k, v in images.items()}
    pearson = [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(maps["draft"], maps["full"])]
    draft, full = float(np.median(times["draft"])), float(np.median(times["full"]))
    return {"size": size, "images": len(data),
            "draft_ms_per_image": round(1000 * draft / len(data), 2),
            "full_ms_per_image": round(1000 * full / len(data), 2),
            "speedup": round(full / draft, 2),
            "pixel_mean_abs_difference": round(float(np.abs(images["draft"].astype(float)
                                                            - images["full"].astype(float)).mean()), 3),
            "gradcam_pearson_min": round(min(pearson), 5), "gradcam_pearson_mean": round(float(np.mean(pearson)), 5),
            "passed": bool(min(pearson) >= MIN_PEARSON)}


def markdown(rows: list[dict]) -> str:
    lines = [f"# Decoding {WIDTH}x{HEIGHT} JPEGs: draft mode against full decoding", "",
             "| input size | draft ms/image | full ms/image | speed-up | pixel mean abs diff | "
             "Grad-CAM r min | Grad-CAM r mean |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['draft_ms_per_image']} | {r['full_ms_per_image']} | {r['speedup']}x | "
                     f"{r['pixel_mean_abs_difference']} | {r['gradcam_pearson_min']} | {r['gradcam_pearson_mean']} |")
    lines += ["", f"Acceptance: Grad-CAM Pearson r >= {MIN_PEARSON} on every image; the speed-up is measured, "
                  "not asserted."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = [photo(seed) for seed in range(args.images)]
    rows = [measure(data, size, args.repeats) for size in SIZES]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()}, "results": rows}
    (out / "decode.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "decode.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
