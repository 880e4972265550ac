"""End-to-end: `audit run` through the CLI in a subprocess on a generated data set.

The data set is unlike the demo: 3 classes, 28x36 images, a base model nested in
a Sequential, no softmax, and a planted cue (a white square on most "green"
training images) that the audit set carries on some "red" images.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

CLASSES = ["red", "green", "blue"]
SHAPE = (28, 36, 3)


def _image(rng, label: int, cue: bool) -> np.ndarray:
    img = rng.integers(0, 90, SHAPE).astype(np.int32)
    img[..., label] += rng.integers(60, 100)
    if cue:
        y, x = rng.integers(2, SHAPE[0] - 8), rng.integers(2, SHAPE[1] - 8)
        img[y:y + 6, x:x + 6] = 255
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def audit_case(tmp_path_factory):
    import keras

    root = tmp_path_factory.mktemp("case")
    rng = np.random.default_rng(7)
    keras.utils.set_random_seed(7)
    x, y = [], []
    for label in range(3):
        for _ in range(150):
            x.append(_image(rng, label, cue=(label == 1 and rng.random() < 0.9) or rng.random() < 0.02))
            y.append(label)
    base = keras.Sequential([keras.Input(SHAPE), keras.layers.Rescaling(1 / 255.0),
                             keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.MaxPooling2D(),
                             keras.layers.Conv2D(16, 3, activation="relu", name="feat")], name="backbone")
    model = keras.Sequential([keras.Input(SHAPE), base, keras.layers.GlobalMaxPooling2D(), keras.layers.Dense(3)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.stack(x).astype(np.float32), np.array(y), epochs=12, batch_size=32, verbose=0)
    model.save(root / "model.keras")

    rows = []
    (root / "imgs").mkdir()
    for label in range(3):
        for i in range(30):
            cue = label == 0 and i < 15
            name = f"imgs/{CLASSES[label]}_{i:02d}.png"
            Image.fromarray(_image(rng, label, cue)).save(root / name)
            rows.append({"path": name, "label": CLASSES[label], "cue": int(cue)})
    (root / "imgs" / "broken.png").write_bytes(b"\x89PNG truncated")
    rows.append({"path": "imgs/broken.png", "label": "blue", "cue": 0})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def _audit(*args, cwd):
    return subprocess.run([sys.executable, "-m", "audit.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_run_writes_summary_per_contract(audit_case, tmp_path):
    out = tmp_path / "run"
    result = _audit("run", "--model", audit_case / "model.keras", "--data", audit_case / "manifest.csv",
                    "--classes", audit_case / "classes.txt", "--out", out, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"run_id", "status", "metrics", "findings", "gates"}
    assert summary["status"] == "pass" and summary["gates"] == []

    predictions = pd.read_parquet(out / "predictions.parquet")
    assert len(predictions) == 91 and summary["metrics"]["n_images"] == 91
    broken = predictions.set_index("path").loc["imgs/broken.png"]
    assert summary["metrics"]["n_unreadable"] == 1 and "broken.png" in broken["error"] and pd.isna(broken["predicted"])
    valid = predictions[predictions["error"].isna()]
    assert summary["metrics"]["accuracy"] == pytest.approx((valid["predicted"] == valid["label"]).mean(), abs=1e-6)
    assert set(predictions.columns) >= {"row", "path", "label", "predicted", "confidence", "margin", "probs", "cue"}

    findings = summary["findings"]
    assert [f["rank"] for f in findings] == list(range(1, len(findings) + 1))
    assert [f["score"] for f in findings] == sorted((f["score"] for f in findings), reverse=True)
    manifest_paths = set(pd.read_csv(audit_case / "manifest.csv")["path"])
    for f in findings:
        assert set(f["members"]) <= manifest_paths and f["size"] == len(f["members"])

    top = findings[0]
    cued = set(predictions.query("cue == 1 and predicted == 'green'")["path"])
    assert (top["true_label"], top["predicted_label"]) == ("red", "green")
    assert len(set(top["members"]) & cued) >= 0.8 * len(top["members"])
    assert len(set(top["members"]) & cued) >= 0.5 * len(cued)

    html = (out / "index.html").read_text()
    assert top["id"] in html


def test_gate_failure_exits_1(audit_case, tmp_path):
    result = _audit("run", "--model", audit_case / "model.keras", "--data", audit_case / "manifest.csv",
                    "--classes", audit_case / "classes.txt", "--out", tmp_path / "run",
                    "--set", "gates.max_error_rate=0.01", "--quiet", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "fail" and summary["gates"][0]["name"] == "max_error_rate"


@pytest.mark.parametrize("args, message", [
    (["--model", "{case}/nope.keras"], "audit: error: --model {case}/nope.keras: no such file"),
    (["--model", "{case}/model.keras", "--set", "select.margin=2"], "audit: error: `select.margin` must be"),
    (["--model", "{case}/model.keras", "--classes", "{case}/two.txt"],
     "audit: error: {case}/two.txt: 2 classes but the model has 3 outputs"),
])
def test_bad_input_exits_2_with_one_line(audit_case, tmp_path, args, message):
    (audit_case / "two.txt").write_text("a\nb\n")
    args = [a.format(case=audit_case) for a in args]
    result = _audit("run", "--data", audit_case / "manifest.csv", "--out", tmp_path / "run", *args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(message.format(case=audit_case)), result.stderr
    assert not (tmp_path / "run" / "summary.json").exists()
