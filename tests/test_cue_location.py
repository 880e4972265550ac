"""The cue located at the size of the evidence (``audit.stages.locate``), through the CLI.

scikit-learn's 8 x 8 digits 0-3, upsampled to 32 x 32 and dimmed under noise; a small
red square in the top-right corner of every training "one" (and of no other digit)
makes a small CNN call anything with the square "one". In the audit set the
square sits on every "one" and on two thirds of the "two"s, which the model then
calls "one". The network ends in global max pooling, so Grad-CAM at its last
convolution is zero for most images: a cue placed by the coarse map sat at the
"centre" and the montage cropped the digit (17 of 19 crops in the reported case).
The located cue must sit in the top-right cell and every montage crop of a member
with the square must cover the square; verification must test the members (reading the
next method's map where Grad-CAM is empty) and the words must name a red patch there.
"""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import audit_command

SIDE = 32
SQUARE = (2, 24, 6)          # top, left, side in pixels: the top-right corner
CLASSES = ["zero", "one", "two", "three"]


def _picture(rng, digit8: np.ndarray, square: bool) -> np.ndarray:
    grey = np.asarray(Image.fromarray((digit8 * 15).astype(np.uint8)).resize((SIDE, SIDE), Image.Resampling.BILINEAR))
    grey = np.clip(0.5 * grey + rng.normal(0, 25, grey.shape) + 40, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if square:
        top, left, side = SQUARE
        rgb[top:top + side, left:left + side] = (255, 0, 0)
    return rgb


@pytest.fixture(scope="module")
def corner_run(tmp_path_factory):
    import keras
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("corner")
    digits = load_digits()
    keep = digits.target < len(CLASSES)
    rng = np.random.default_rng(0)
    order = rng.permutation(int(keep.sum()))
    x8, y = digits.images[keep][order], digits.target[keep][order]
    n_train = 480
    keras.utils.set_random_seed(0)
    train = np.stack([_picture(rng, d, label == 1) for d, label in zip(x8[:n_train], y[:n_train])])
    model = keras.Sequential([
        keras.Input((SIDE, SIDE, 3)), keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu", name="feat"), keras.layers.GlobalMaxPooling2D(),
        keras.layers.Dense(len(CLASSES))])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train.astype(np.float32), y[:n_train], epochs=8, batch_size=32, verbose=0)
    model.save(root / "model.keras")
    rows = []
    for i, (d, label) in enumerate(zip(x8[n_train:], y[n_train:])):
        square = label == 1 or (label == 2 and i % 3 != 0)
        name = f"{CLASSES[label]}/{i:03d}.png"
        (root / CLASSES[label]).mkdir(exist_ok=True)
        Image.fromarray(_picture(rng, d, square)).save(root / name)
        rows.append({"path": name, "label": CLASSES[label], "square": int(square)})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    out = root / "run"
    done = subprocess.run(audit_command("run", "--model", root / "model.keras", "--data", root / "manifest.csv",
                                        "--classes", root / "classes.txt", "--out", out,
                                        "--set", "history.path=null", "--set", "internals.enabled=false",
                                        "--set", "report.layout=folder"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return out, pd.DataFrame(rows)


def _covers(box, square=SQUARE) -> bool:
    top, left, side = (v / SIDE for v in square)
    return box is not None and box[0] <= top and box[1] <= left and box[2] >= top + side and box[3] >= left + side


@pytest.mark.slow
def test_the_cue_and_the_montage_crops_sit_on_the_planted_square(corner_run):
    from audit.report.assets import Assets
    from audit.report.findings import views
    from audit.report.loading import Run

    out, truth = corner_run
    summary = json.loads((out / "summary.json").read_text())
    top = summary["findings"][0]
    carriers = set(truth.loc[truth["square"] == 1, "path"])
    assert len(set(top["members"]) & carriers) >= 0.8 * top["size"], top["members"]   # the square's finding
    cue = top["cue"]
    assert cue["cell"] == "top-right", cue
    assert cue["x"] > 2 / 3 and cue["y"] < 1 / 3
    assert cue["source"] in ("verified region", "occlusion map", "integrated_gradients map", "gradcam map")
    assert len(cue["boxes"]) == top["size"]
    # Grad-CAM is empty for most members: verification reads the next method's maps for them, tests the
    # members and says what it found in words
    assert top["verification"].get("members_tested"), top["verification"]
    assert "red patch in the top-right corner" in cue["text"], cue
    assert summary["verdict"]["state"] == "cue_found" and top["id"] in summary["verdict"]["findings"]

    view = views(Run.load(out), Assets(out, "folder"))[0]
    assert view["id"] == top["id"]
    tiles = view["montage"]["boxes"]
    assert view["montage"]["n"] == len(tiles) >= min(top["size"], 10)
    paths = dict(zip(top["rows"], top["members"]))
    shown = [t for t in tiles if paths[t["row"]] in carriers]
    missed = [t for t in shown if not _covers(t["box"])]
    assert shown and not missed, f"{len(missed)} of {len(shown)} crops miss the square: {missed}"
