"""Model internals: batched filter visualization speed, activation gain, reachability, grain, determinism.

Everything runs with the default ``internals`` settings (128 steps) unless ``--steps`` says otherwise.

1. Batching: all channels of a layer optimised as one batch, against the same ascent run for one
   channel at a time (``batch_size`` 1: the same code, one channel per model call), after a
   warm-up of each (tracing is a one-off). Runs alternate (batched, one at a time, ...) ``--repeats``
   times; the ratios are of the medians, wall and CPU time. Models: a random-weight CNN (96x96x3
   -> conv 16 -> pool -> conv 32 -> pool -> conv 64 ``conv64``, ReLU -> global average pooling ->
   Dense 10) and the demo CNN's ``last_conv``. The floor: the model's own forward and backward
   pass to the layer (no ascent around it), per image at a batch of 64 and of 1. Its ratio bounds
   what batching can save on the model's compute; the rest of a batch-1 step is fixed cost per call.
2. Gain: for every channel of ``conv64``, of the demo CNN's ``last_conv`` (ReLU) and of its target
   layer ``batch_normalization``: the layer's spatially averaged output on the starting noise and
   on the optimised image. A channel is *dead* when it is never above zero on any of the demo's
   audit images (nothing can be shown for it); the 10x target is counted over the others. A ratio
   needs a positive start: channels starting at or below zero are counted as raised when they end
   above zero.
3. Reachability: the same channels by an unregularised reference ascent from the same starting
   noise (no jitter, no blur, one octave, 1024 steps, learning rate 0.1, the last half polished).
   A live channel is *reachable* when the reference meets the target; its pictures are pixel-scale
   patterns locked to the pooling grid, so the target is counted both over all live channels and
   over the reachable ones.
4. Grain: the share of the pictures' spectral power (mean removed) above 0.25 cycles per pixel,
   median over live channels: high-frequency noise the regularisers are there to keep out. The
   demo's ``last_conv`` also runs without the final polish (``internals.polish`` 0) for comparison.
5. Determinism: the same call twice with the same seed gives identical images.

    python benchmarks/internals.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

TARGET_SPEEDUP = 10.0
TARGET_GAIN = 10.0
REFERENCE = dict(steps=1024, learning_rate=0.1, jitter=0, blur_every=0, octaves=1, polish=0.5)


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


def floor_ms(classifier, layer, batch: int, reps: int) -> float:
    """Milliseconds per image of the model's forward and backward pass to ``layer`` (a channel's
    mean, its gradient to the input), at ``batch`` images per call; the median of ``reps`` calls."""
    import tensorflow as tf

    from audit.internals._layers import capturing
    from audit.internals.filters import _channel_means

    n_channels = int(layer.output.shape[-1])

    def grad(images, targets):
        with tf.GradientTape() as tape:
            tape.watch(images)
            captured: dict = {}
            with capturing([layer], captured):
                classifier.forward(images)
            value = tf.reduce_sum(_channel_means(captured[layer.name], targets, n_channels))
        return tape.gradient(value, images)

    fn = classifier.function(("bench.floor", layer.name), grad, classifier.image_spec(), tf.TensorSpec((None,), tf.int32))
    images = np.random.default_rng(0).uniform(0, 255, (batch, *classifier.input_shape)).astype(np.float32)
    targets = np.arange(batch, dtype=np.int32) % n_channels
    fn(images, targets)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(images, targets)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / batch


def speed(settings, model, layer_name: str, label: str, repeats: int) -> dict:
    from audit.internals import input_range, visualize_filters
    from audit.model_io import Classifier

    clf = Classifier(model, layer_name)
    layer = model.get_layer(layer_name)
    low, high = input_range("none", 3)
    channels = np.arange(int(layer.output.shape[-1]))
    batched = dataclasses.replace(settings, batch_size=64)
    single = dataclasses.replace(settings, batch_size=1)
    visualize_filters(clf, layer, channels[:2], low, high, dataclasses.replace(batched, steps=8))   # trace
    visualize_filters(clf, layer, channels[:1], low, high, dataclasses.replace(single, steps=8))
    runs = {"batched": [], "one_at_a_time": []}
    for _ in range(repeats):
        for name, s in (("batched", batched), ("one_at_a_time", single)):
            wall, cpu, _ = timed(lambda: visualize_filters(clf, layer, channels, low, high, s))
            runs[name].append((wall, cpu))
    wall_b, cpu_b = np.median(runs["batched"], axis=0)
    wall_s, cpu_s = np.median(runs["one_at_a_time"], axis=0)
    per_step = settings.steps * len(channels)
    floor_64, floor_1 = floor_ms(clf, layer, 64, 20), floor_ms(clf, layer, 1, 200)
    return {"model": label, "layer": layer_name, "channels": len(channels), "steps": settings.steps,
            "repeats": repeats, "batched_s": _r(wall_b), "one_at_a_time_s": _r(wall_s),
            "batched_runs_s": [_r(w) for w, _ in runs["batched"]],
            "one_at_a_time_runs_s": [_r(w) for w, _ in runs["one_at_a_time"]],
            "speedup_wall": _r(wall_s / wall_b), "speedup_cpu": _r(cpu_s / cpu_b),
            "ms_per_image_step_batched": _r(1000 * wall_b / per_step, 3),
            "ms_per_image_step_one_at_a_time": _r(1000 * wall_s / per_step, 3),
            "floor_ms_per_image_batch_64": _r(floor_64, 3), "floor_ms_per_image_batch_1": _r(floor_1, 3),
            "floor_ratio": _r(floor_1 / floor_64)}


def grain(images: np.ndarray) -> np.ndarray:
    """Per image ``[N, H, W, C]``: share of the spectral power (mean removed) above 0.25 cycles per pixel."""
    x = images - images.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(images.shape[1]), np.fft.fftfreq(images.shape[2]), indexing="ij")
    high = (np.hypot(fy, fx) > 0.25)[None, :, :, None]
    return (power * high).sum(axis=(1, 2, 3)) / np.maximum(power.sum(axis=(1, 2, 3)), 1e-12)


def met_mask(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    positive = start > 0
    ratio = np.where(positive, end / np.where(positive, start, 1.0), 0.0)
    return (positive & (ratio >= TARGET_GAIN)) | (~positive & (end > 0))


def gain_stats(out: dict, dead: np.ndarray, reference: dict | None = None) -> dict:
    start, end = out["start"], out["end"]
    live = ~dead
    positive = live & (start > 0)
    ratio = np.where(positive, end / np.where(positive, start, 1.0), np.nan)
    from_zero = live & (start <= 0)
    met = live & met_mask(start, end)
    stats = {"channels": int(len(start)), "dead": int(dead.sum()), "live": int(live.sum()),
             "live_start_positive": int(positive.sum()),
             "ratio_min": _r(np.nanmin(ratio)) if positive.any() else None,
             "ratio_median": _r(np.nanmedian(ratio)) if positive.any() else None,
             "raised_from_zero_or_below": int((from_zero & (end > 0)).sum()), "start_at_or_below_zero": int(from_zero.sum()),
             "met_10x": int(met.sum()), "not_met": [int(c) for c in np.flatnonzero(live & ~met)],
             "not_met_ratios": {int(c): _r(ratio[c]) for c in np.flatnonzero(positive & ~met)},
             "end_above_start": int((end[live] > start[live]).sum()),
             "grain_median": _r(np.median(grain(out["images"])[live]), 3) if live.any() else None}
    if reference is not None:
        reachable = live & (met_mask(start, reference["end"]) | met)
        ref_ratio = np.where(positive, reference["end"] / np.where(positive, start, 1.0), np.nan)
        stats.update({"reachable": int(reachable.sum()), "met_10x_of_reachable": int((met & reachable).sum()),
                      "not_reachable": {int(c): _r(ref_ratio[c]) if positive[c] else "not raised"
                                        for c in np.flatnonzero(live & ~reachable)},
                      "reachable_not_met": {int(c): {"ratio": _r(ratio[c]), "reference": _r(ref_ratio[c])}
                                            if positive[c] else "not raised" for c in np.flatnonzero(reachable & ~met)},
                      "reference_ratio_median": _r(np.nanmedian(ref_ratio)) if positive.any() else None,
                      "reference_grain_median": _r(np.median(grain(reference["images"])[live]), 3)})
    return stats


def _r(x, digits: int = 2) -> float:
    return round(float(x), digits)


def gains(settings, demo_model_path: Path, audit_manifest: Path) -> list[dict]:
    from audit.data import load_images, load_manifest
    from audit.internals import input_range, resolve_layers, visualize_filters
    from audit.internals.patches import max_activations_function
    from audit.model_io import Classifier, cached_classifier

    reference = dataclasses.replace(settings, **REFERENCE)
    low, high = input_range("none", 3)
    clf = cached_classifier(demo_model_path)
    frame, root = load_manifest(audit_manifest)
    images, _ = load_images(root, frame["path"].tolist(), clf.input_size)
    rows, dead_relu = [], None
    cases = [("demo CNN 64x64", clf, "last_conv", settings, "defaults"),
             ("demo CNN 64x64", clf, "last_conv", dataclasses.replace(settings, polish=0.0), "no polish"),
             ("demo CNN 64x64", clf, "batch_normalization", settings, "defaults")]
    bench = bench_model()
    cases.append(("random CNN 96x96", Classifier(bench, "conv64"), "conv64", settings, "defaults"))
    for label, c, name, s, how in cases:
        (layer,) = resolve_layers(c.model, [name], 1)
        channels = np.arange(int(layer.output.shape[-1]))
        if label.startswith("demo") and name == "last_conv" and dead_relu is None:
            fn = max_activations_function(c, layer)
            peak = np.concatenate([fn(images[i:i + 64])[0].numpy() for i in range(0, len(images), 64)]).max(axis=0)
            dead_relu = peak <= 0
        # a BatchNormalization channel is dead when the ReLU channel before it never fires
        dead = dead_relu if label.startswith("demo") else np.zeros(len(channels), bool)
        t = time.perf_counter()
        a = visualize_filters(c, layer, channels, low, high, s)
        seconds = time.perf_counter() - t
        b = visualize_filters(c, layer, channels, low, high, s)
        ref = visualize_filters(c, layer, channels, low, high, reference) if how == "defaults" else None
        rows.append({"model": label, "layer": name, "settings": how, "steps": s.steps, "seconds": _r(seconds),
                     "deterministic": bool(np.array_equal(a["images"], b["images"])),
                     "gain": gain_stats(a, dead, ref), "dead_channels": [int(i) for i in np.flatnonzero(dead)],
                     "start": [round(float(v), 4) for v in a["start"]], "end": [round(float(v), 4) for v in a["end"]],
                     "reference_end": [round(float(v), 4) for v in ref["end"]] if ref is not None else None})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--steps", type=int, default=None, help="ascent steps (default: internals.steps)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs of each way")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from audit import demo
    from audit.config import resolve
    from audit.internals import Ascent
    from audit.model_io import load_model

    settings = Ascent.from_config(resolve(None, [], {}))
    if args.steps:
        settings = dataclasses.replace(settings, steps=args.steps)
    assets = demo.prepare(Path("reports/.cache/demo"), log=lambda m: None)
    result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
              "settings": dataclasses.asdict(settings), "reference": REFERENCE,
              "speed": [speed(settings, bench_model(), "conv64", "random CNN 96x96", args.repeats),
                        speed(settings, load_model(assets.model_path), "last_conv", "demo CNN 64x64", args.repeats)],
              "gain": gains(settings, assets.model_path, assets.manifest)}
    s = result["speed"][0]
    result["targets"] = {"speedup": TARGET_SPEEDUP, "speedup_met": s["speedup_wall"] >= TARGET_SPEEDUP,
                         "gain": TARGET_GAIN}
    (out / "internals.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Model internals", "",
             f"Filter visualization, {settings.steps} steps, one batch against one channel at a time (the same "
             f"ascent at batch 1); medians of {args.repeats} alternating runs. Target {TARGET_SPEEDUP}x on "
             f"`conv64`: {'met' if result['targets']['speedup_met'] else 'NOT met'}.", "",
             "| model | layer | channels | one batch s | one at a time s | speedup wall | speedup CPU | "
             "ms per image-step, batch / one | floor ms per image, batch 64 / 1 | floor ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in result["speed"]:
        lines.append(f"| {s['model']} | {s['layer']} | {s['channels']} | {s['batched_s']} | {s['one_at_a_time_s']} | "
                     f"**{s['speedup_wall']}x** | {s['speedup_cpu']}x | {s['ms_per_image_step_batched']} / "
                     f"{s['ms_per_image_step_one_at_a_time']} | {s['floor_ms_per_image_batch_64']} / "
                     f"{s['floor_ms_per_image_batch_1']} | {s['floor_ratio']}x |")
    lines += ["", "The floor is the model's own forward and backward pass to the layer: batching cannot save more "
              "than its ratio on the model's compute; the rest of a one-channel step is fixed cost per call.", "",
              f"Gain: channel mean on the optimised image / on the starting noise, target {TARGET_GAIN}x. "
              "Reachable: met by the defaults or by the unregularised reference ascent (ref; its pictures are "
              "pixel noise, grain in brackets). Grain: share of the pictures' power above 0.25 cycles per pixel.",
              "",
              "| model | layer | settings | channels | dead | live met 10x | reachable | met of reachable | ratio min | "
              "ratio median | grain | reference median (grain) | not met: ratio (reference) | deterministic |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in result["gain"]:
        g = d["gain"]
        if "reachable" in g:
            misses = {**{c: f"{v['ratio']} (ref {v['reference']})" if isinstance(v, dict) else f"{v} (ref raised)"
                         for c, v in g["reachable_not_met"].items()},
                      **{c: f"{g['not_met_ratios'].get(c, 'not raised')} (ref {v}: not reachable)"
                         for c, v in g["not_reachable"].items()}}
            reach = (g["reachable"], f"{g['met_10x_of_reachable']}/{g['reachable']}",
                     f"{g['reference_ratio_median']} ({g['reference_grain_median']})")
        else:
            misses = {c: v for c, v in g["not_met_ratios"].items()}
            reach = ("—", "—", "—")
        missing = "; ".join(f"{c}: {v}" for c, v in sorted(misses.items())) or "—"
        lines.append(f"| {d['model']} | {d['layer']} | {d['settings']} | {g['channels']} | {g['dead']} | "
                     f"{g['met_10x']}/{g['live']} | {reach[0]} | {reach[1]} | {g['ratio_min']} | {g['ratio_median']} | "
                     f"{g['grain_median']} | {reach[2]} | {missing} | {d['deterministic']} |")
    (out / "internals.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
