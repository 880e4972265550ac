"""The Python API (``audit.run``, ``audit.load``, ``Audit``) against the CLI, on the planted-cue
case of conftest: in-memory arrays and an in-memory model must give the CLI's findings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import audit
from audit.errors import UsageError
from tests.conftest import CLASSES, audit_command

ROOT = Path(__file__).resolve().parents[1]
# trust and internals do not shape the findings' IDs, pairs or members: left out to keep the runs short
LEAN = {"trust": {"enabled": False}, "internals__enabled": False}


def _arrays(case: Path) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(case / "manifest.csv")
    frame = frame[frame["path"] != "imgs/broken.png"]
    images = np.stack([np.asarray(Image.open(case / p).convert("RGB")) for p in frame["path"]])
    return images, frame["label"].to_numpy()


@pytest.fixture(scope="module")
def runs(audit_case, tmp_path_factory):
    """The same images audited by the CLI (PNGs written here) and by ``audit.run`` (arrays, model object)."""
    import keras

    root = tmp_path_factory.mktemp("api")
    images, labels = _arrays(audit_case)
    (root / "disk").mkdir()
    paths = []
    for i, image in enumerate(images):
        paths.append(f"img-{i}.png")
        Image.fromarray(image).save(root / "disk" / paths[-1])
    pd.DataFrame({"path": paths, "label": labels}).to_csv(root / "disk" / "manifest.csv", index=False)
    cli = subprocess.run(audit_command("run", "--model", audit_case / "model.keras", "--data",
                                       root / "disk" / "manifest.csv", "--classes", audit_case / "classes.txt",
                                       "--out", root / "cli", "--set", "trust.enabled=false",
                                       "--set", "internals.enabled=false", "--quiet"),
                         cwd=root, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert cli.returncode == 0, cli.stderr
    model = keras.saving.load_model(audit_case / "model.keras")
    api = audit.run(model, (images, labels), classes=CLASSES, out=root / "api", quiet=True, **LEAN)
    return {"root": root, "cli": root / "cli", "api": api, "model": model, "images": images, "labels": labels}


def _findings(run_dir: Path) -> list[tuple]:
    """(id, true, predicted, size, member rows) of each finding: rows, since the paths differ."""
    summary = json.loads((run_dir / "summary.json").read_text())
    pred = pd.read_parquet(run_dir / "predictions.parquet")
    row = dict(zip(pred["path"], pred["row"]))
    return [(f["id"], f["true_label"], f["predicted_label"], f["size"], sorted(row[p] for p in f["members"]))
            for f in summary["findings"]]


def test_run_on_arrays_gives_the_findings_of_the_cli(runs):
    api = runs["api"]
    found = _findings(api.run_dir)
    assert found and found == _findings(runs["cli"])
    assert found[0][1:3] == ("red", "green")
    assert list(api.findings["id"]) == [f[0] for f in found]
    assert list(api.findings["size"]) == [f[3] for f in found]
    assert len(api.predictions) == len(runs["images"]) == api.summary["metrics"]["n_images"]
    assert api.report_path.is_file() and api.summary["status"] == "pass"
    cli = json.loads((runs["cli"] / "summary.json").read_text())
    assert api.summary["metrics"] == cli["metrics"]


def test_a_repeated_run_resumes_and_a_dataset_is_the_same_input(runs, capsys):
    import tensorflow as tf

    api = runs["api"]
    model_file = api.run_dir / "input" / "model.keras"
    before = model_file.stat().st_mtime_ns
    labels = np.array([CLASSES.index(v) for v in runs["labels"]])
    dataset = tf.data.Dataset.from_tensor_slices((runs["images"], labels)).batch(16)
    again = audit.run(runs["model"], dataset, classes=CLASSES, out=api.run_dir, **LEAN)
    assert "is complete for these inputs and settings" in capsys.readouterr().out
    assert model_file.stat().st_mtime_ns == before          # the same model is not written again
    assert again.summary["findings"] == api.summary["findings"]


def test_load_needs_no_tensorflow_and_shows_the_summary_inline(runs):
    code = ("import sys, audit; a = audit.load(sys.argv[1]); html = a._repr_html_(); "
            "print(len(a.findings), len(a.predictions), 'tensorflow' in sys.modules, 'keras' in sys.modules); "
            "print(html)")
    result = subprocess.run([sys.executable, "-c", code, str(runs["api"].run_dir)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    head, html = result.stdout.split("\n", 1)
    assert head == f"{len(runs['api'].findings)} {len(runs['images'])} False False"
    assert 'class="cnn-audit"' in html and 'data-metric="accuracy"' in html
    for fid in runs["api"].findings["id"][:3]:
        assert fid in html
    assert 'alt="cue montage of' in html and 'src="data:image/' in html
    assert not any(s in html for s in ('src="http', "src='http", "<link", "<script", "url(http", "@import"))


def test_explain_equals_the_explainer_contract(runs):
    api = runs["api"]
    row = int(api.predictions["row"].iloc[3])
    cam = api.explain(row, method="integrated_gradients", target="blue")
    x = runs["images"][3:4].astype(np.float32)
    expected = audit.explain(runs["model"], x, np.array([CLASSES.index("blue")]), method="integrated_gradients")[0]
    assert cam.shape == x.shape[1:3] and cam.dtype == np.float32
    np.testing.assert_allclose(cam, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
    path = api.predictions["path"].iloc[3]
    predicted = api.predictions["predicted"].iloc[3]
    np.testing.assert_allclose(api.explain(path, method="gradcam"), api.explain(row, method="gradcam", target=predicted))
    with pytest.raises(UsageError, match="row 9999: not in this run's predictions"):
        api.explain(9999)


@pytest.mark.parametrize("settings, data, message", [
    ({"select__margn": 0.1}, None, "audit.run: unknown key `select.margn` (did you mean `select.margin`?)"),
    ({"select": {"margin": 3}}, None, "`select.margin` must be"),
    ({}, "ints", "data: integer labels need classes="),
    ({}, "unit", "data: images look scaled to 0..1"),
    ({}, "shape", "data: 2 images but labels of shape [3]"),
])
def test_bad_input_raises_one_line(audit_case, tmp_path, settings, data, message):
    images = np.zeros((2, 28, 36, 3), np.uint8)
    given = {None: (images, np.array(["red", "blue"])), "ints": (images, np.array([0, 1])),
             "unit": (images.astype(np.float32) + 0.5, np.array(["red", "blue"])),
             "shape": (images, np.array(["red", "blue", "green"]))}[data]
    with pytest.raises(UsageError) as info:
        audit.run(audit_case / "model.keras", given, out=tmp_path / "run", quiet=True, **settings)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run" / "summary.json").exists()
