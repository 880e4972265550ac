"""Model internals: batched filter visualization speed, activation gain and determinism.

1. Batching: all 64 channels of a 64-channel layer optimised as one batch, against
   the same ascent run for one channel at a time (64 calls with a batch of 1), same
   steps and settings, after one warm-up call each (tracing is a one-off). Model: a
   random-weight CNN (96x96x3 -> conv 16 -> pool -> conv 32 -> pool -> conv 64
   ``conv64``, ReLU -> global average pooling -> Dense 10). Wall and CPU ratios, and
   milliseconds per image and step; the same on the demo CNN's ``last_conv``.
2. Gain: for every channel of the demo CNN's ``last_conv`` (ReLU) and of its target
   layer ``batch_normalization``, and of ``conv64``: the layer's spatially averaged
   output on the starting noise and on the optimised image, with the default
   ``internals`` settings. A channel is *dead* when it is never above zero on any of
   the demo's audit images (nothing can be shown for it); the 10x target is counted
   over the others. A ratio needs a positive start: channels starting at or below
   zero are counted as raised when they end above zero.
3. Determinism: the same call twice with the same seed gives identical images.

    python benchmarks/internals.py --out benchmarks/results
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

TARGET_SPEEDUP = 10.0
TARGET_GAIN = 10.0


def bench_model():
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((96, 96, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv64")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x))


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def speed(steps: int, model=None, layer_name: str = "conv64", label: str = "bench CNN 96x96") -> dict:
    from audit.internals import Ascent, input_range, visualize_filters
    from audit.model_io import Classifier

    model = bench_model() if model is None else model
    clf = Classifier(model, layer_name)
    layer = model.get_layer(layer_name)
    low, high = input_range("none", 3)
    channels = np.arange(int(layer.output.shape[-1]))
    batched = Ascent(steps=steps, batch_size=64)
    single = Ascent(steps=steps, batch_size=1)
    visualize_filters(clf, layer, channels[:2], low, high, Ascent(steps=2, batch_size=64))   # warm-up (trace)
    wall_b, cpu_b, out_b = timed(lambda: visualize_filters(clf, layer, channels, low, high, batched))
    wall_s, cpu_s, out_s = timed(lambda: visualize_filters(clf, layer, channels, low, high, single))
    return {"model": f"{label}, layer {layer_name} ({len(channels)} channels)", "steps": steps,
            "ms_per_image_step_batched": round(1000 * wall_b / (steps * len(channels)), 2),
            "ms_per_image_step_one_at_a_time": round(1000 * wall_s / (steps * len(channels)), 2),
            "batched_s": round(wall_b, 3), "one_at_a_time_s": round(wall_s, 3),
            "speedup_wall": round(wall_s / wall_b, 2), "speedup_cpu": round(cpu_s / cpu_b, 2),
            "gain": gain_stats(out_b, None)}


def gain_stats(out: dict, dead: np.ndarray | None) -> dict:
    start, end = out["start"], out["end"]
    dead = np.zeros(len(start), bool) if dead is None else dead
    live = ~dead
    positive = live & (start > 0)
    ratio = np.where(positive, end / np.where(positive, start, 1.0), np.nan)
    from_zero = live & (start <= 0)
    met = (positive & (ratio >= TARGET_GAIN)) | (from_zero & (end > 0))
    return {"channels": int(len(start)), "dead": int(dead.sum()), "live": int(live.sum()),
            "live_start_positive": int(positive.sum()),
            "ratio_min": _r(np.nanmin(ratio)) if positive.any() else None,
            "ratio_median": _r(np.nanmedian(ratio)) if positive.any() else None,
            "raised_from_zero_or_below": int((from_zero & (end > 0)).sum()), "start_at_or_below_zero": int(from_zero.sum()),
            "met_10x": int(met.sum()), "not_met": [int(c) for c in np.flatnonzero(live & ~met)],
            "not_met_ratios": {int(c): _r(ratio[c]) for c in np.flatnonzero(positive & ~met)},
            "end_above_start": int((end[live] > start[live]).sum())}


def _r(x) -> float:
    return round(float(x), 2)


def demo_gain() -> list[dict]:
    from audit import demo
    from audit.config import resolve
    from audit.data import load_images, load_manifest
    from audit.internals import Ascent, input_range, resolve_layers, visualize_filters
    from audit.internals.patches import max_activations_function
    from audit.model_io import cached_classifier

    assets = demo.prepare(Path("reports/.cache/demo"), log=lambda m: None)
    config = resolve(None, [], {"model.path": str(assets.model_path)})
    clf = cached_classifier(assets.model_path)
    frame, root = load_manifest(assets.manifest)
    images, _ = load_images(root, frame["path"].tolist(), clf.input_size)
    low, high = input_range("none", 3)
    out = []
    for name in ("last_conv", "batch_normalization"):
        (layer,) = resolve_layers(clf.model, [name], 1)
        fn = max_activations_function(clf, layer)
        peak = np.concatenate([fn(images[i:i + 64])[0].numpy() for i in range(0, len(images), 64)]).max(axis=0)
        channels = np.arange(int(layer.output.shape[-1]))
        settings = Ascent.from_config(config)
        t = time.perf_counter()
        a = visualize_filters(clf, layer, channels, low, high, settings)
        seconds = time.perf_counter() - t
        b = visualize_filters(clf, layer, channels, low, high, settings)
        # a BatchNormalization channel is dead when the ReLU channel before it never fires
        dead = peak <= 0 if name == "last_conv" else out[0]["dead_mask"]
        out.append({"model": "demo CNN 64x64", "layer": name, "seconds": round(seconds, 2),
                    "deterministic": bool(np.array_equal(a["images"], b["images"])),
                    "gain": gain_stats(a, dead), "dead_mask": dead,
                    "start": [round(float(v), 4) for v in a["start"]], "end": [round(float(v), 4) for v in a["end"]]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from audit import demo
    from audit.model_io import load_model

    assets = demo.prepare(Path("reports/.cache/demo"), log=lambda m: None)
    result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
              "speed": speed(args.steps),
              "speed_demo": speed(args.steps, load_model(assets.model_path), "last_conv", "demo CNN 64x64"),
              "demo": demo_gain()}
    for d in result["demo"]:
        d["dead_channels"] = [int(c) for c in np.flatnonzero(d.pop("dead_mask"))]
    s = result["speed"]
    result["targets"] = {"speedup": TARGET_SPEEDUP, "speedup_met": s["speedup_wall"] >= TARGET_SPEEDUP,
                         "gain": TARGET_GAIN}
    (out / "internals.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Model internals", "",
             f"Filter visualization, 64 channels of `conv64` ({s['steps']} steps): one batch {s['batched_s']} s, "
             f"one channel at a time {s['one_at_a_time_s']} s: **{s['speedup_wall']}x** faster (CPU time "
             f"{s['speedup_cpu']}x; target {TARGET_SPEEDUP}x: {'met' if result['targets']['speedup_met'] else 'NOT met'}); "
             f"{s['ms_per_image_step_batched']} vs {s['ms_per_image_step_one_at_a_time']} ms per image and step.",
             "", f"Same on the demo CNN's `last_conv` (48 channels): one batch {result['speed_demo']['batched_s']} s, "
             f"one at a time {result['speed_demo']['one_at_a_time_s']} s: **{result['speed_demo']['speedup_wall']}x** "
             f"(CPU time {result['speed_demo']['speedup_cpu']}x).",
             "", "| model | layer | channels | dead | live met 10x | ratio min | ratio median | not met (ratio) | deterministic |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = [dict(model=s["model"], layer="conv64", gain=s["gain"], deterministic="—")] + result["demo"]
    for d in rows:
        g = d["gain"]
        lines.append(f"| {d['model']} | {d['layer']} | {g['channels']} | {g['dead']} | {g['met_10x']}/{g['live']} | "
                     f"{g['ratio_min']} | {g['ratio_median']} | {g['not_met_ratios'] or '—'} | {d['deterministic']} |")
    (out / "internals.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
