"""The bad-input matrix: every case gives a clear message naming the file or key,
the right exit code, and loses no completed work."""
from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.data import read_image
from tests.conftest import CLASSES, SHAPE, audit_command


def _jpeg_bytes(image: np.ndarray | Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _bad_files(folder: Path) -> dict[str, bytes | None]:
    """name -> file content (None: listed in the manifest but missing)."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    palette = Image.new("P", (30, 30))
    palette.putpalette([i % 256 for i in range(768)])
    return {
        "zero.png": b"",
        "truncated.jpg": _jpeg_bytes(noise)[:600],
        "truncated.png": _png_bytes(Image.fromarray(noise))[:300],
        "text.png": b"this is a text file with an image extension\n",
        "gray.png": _png_bytes(Image.new("L", (30, 30), 90)),
        "rgba.png": _png_bytes(Image.new("RGBA", (30, 30), (10, 200, 10, 128))),
        "deep.png": _png_bytes(Image.fromarray(np.full((30, 30), 40000, np.uint16))),
        "cmyk.jpg": _jpeg_bytes(Image.new("CMYK", (30, 30), (200, 0, 200, 0))),
        "palette.png": _png_bytes(palette),
        "rotated.jpg": _jpeg_bytes(noise[:20, :40], exif=exif.tobytes()),
        "huge.png": _png_bytes(Image.new("1", (9500, 9500))),
        "other_size.png": _png_bytes(Image.fromarray(rng.integers(0, 255, (300, 90, 3), dtype=np.uint8))),
        "missing.png": None,
    }


UNREADABLE = {"zero.png", "truncated.jpg", "truncated.png", "text.png", "huge.png", "missing.png"}


def test_bad_images_are_recorded_and_the_run_completes(audit_case, tmp_path):
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    rows = []
    for name, content in _bad_files(data).items():
        if content is not None:
            (data / "imgs" / name).write_bytes(content)
        rows.append({"path": f"imgs/{name}", "label": "red"})
    good = pd.read_csv(audit_case / "manifest.csv").head(30)
    for path in good["path"]:
        shutil.copy(audit_case / path, data / "imgs" / Path(path).name)
    rows += [{"path": f"imgs/{Path(p).name}", "label": lab} for p, lab in zip(good["path"], good["label"])]
    rows.append(rows[-1])  # an exact duplicate row
    pd.DataFrame(rows).to_csv(data / "manifest.csv", index=False)

    out = tmp_path / "run"
    result = subprocess.run(audit_command("run", "--model", audit_case / "model.keras", "--data",
                                          data / "manifest.csv", "--classes", audit_case / "classes.txt",
                                          "--out", out), capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr   # the run completes; the unreadable share fails its gate
    assert "1 duplicate row(s) ignored" in result.stdout
    predictions = pd.read_parquet(out / "predictions.parquet").set_index("path")
    assert len(predictions) == len(rows) - 1
    for name in _bad_files(data):
        error = predictions.loc[f"imgs/{name}", "error"]
        if name in UNREADABLE:
            assert isinstance(error, str) and error, name
            assert pd.isna(predictions.loc[f"imgs/{name}", "predicted"])
        else:
            assert pd.isna(error), (name, error)
            assert predictions.loc[f"imgs/{name}", "predicted"] in CLASSES
    assert "exceed data.max_pixels" in predictions.loc["imgs/huge.png", "error"]
    assert "No such file" in predictions.loc["imgs/missing.png", "error"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["n_unreadable"] == len(UNREADABLE)
    assert summary["metrics"]["n_images"] == len(rows) - 1
    gate = {g["name"]: g for g in summary["gates"]}["max_unreadable_rate"]
    assert not gate["passed"] and gate["value"] == pytest.approx(len(UNREADABLE) / (len(rows) - 1), abs=1e-6)
    unreadable = {c["check"]: c for c in summary["soundness"]}["unreadable"]
    assert not unreadable["ok"] and f"{len(UNREADABLE)} of {len(rows) - 1} images" in unreadable["message"]


def test_decoding_follows_viewers(tmp_path):
    files = _bad_files(tmp_path)
    for name in ("rotated.jpg", "cmyk.jpg", "palette.png", "deep.png", "gray.png"):
        (tmp_path / name).write_bytes(files[name])
    assert read_image(tmp_path / "rotated.jpg").shape == (40, 20, 3)   # EXIF orientation applied
    assert read_image(tmp_path / "deep.png")[0, 0, 0] == round(40000 / 65535 * 255 - 0.5)
    for name in ("cmyk.jpg", "palette.png", "gray.png"):
        image = read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (30, 30, 3), name


def _model_file(tmp_path: Path, kind: str) -> Path:
    import keras

    inputs = keras.Input(SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    if kind == "nan":
        outputs = keras.layers.Dense(3)(keras.layers.Rescaling(float("nan"))(x))
    else:
        outputs = [keras.layers.Dense(3, name="labels")(x), keras.layers.Dense(2, name="boxes")(x)]   # named: layer counters depend on what ran before
    path = tmp_path / f"{kind}.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def _argv(case: Path, tmp_path: Path, *args) -> list[str]:
    """``audit run`` arguments on ``case``; ``args`` (flag, value pairs) override or add."""
    base = {"--model": case / "model.keras", "--data": case / "manifest.csv", "--classes": case / "classes.txt",
            "--out": tmp_path / "run"}
    extra = dict(zip(args[::2], args[1::2]))
    return ["run", *(str(x) for key, value in {**base, **extra}.items() for x in (key, value) if value is not None)]


def _run(case: Path, tmp_path: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(audit_command(*_argv(case, tmp_path, *args)), capture_output=True, text=True, timeout=600)


def _run_in_process(case: Path, tmp_path: Path, capsys, *args) -> subprocess.CompletedProcess:
    """``_run`` through ``audit.cli.main`` in this process: the same arguments, exit code and
    output, without a fresh interpreter importing TensorFlow (about 4 s) for every case.
    The subprocess path itself is covered by ``_run``'s users and tests/test_cli.py."""
    from audit import cli

    argv = _argv(case, tmp_path, *args)
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["audit", *argv], code, out, err)


def _error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert lines, result.stdout
    return lines[-1]


@pytest.mark.parametrize("case", ["label_unknown", "empty", "no_label_column", "classes_count", "corrupt_model",
                                  "multi_output", "lambda_layer", "conflicting_labels", "missing_model",
                                  "method_param_unknown", "method_param_too_big"])
def test_bad_data_set_or_model_exits_2_before_any_work(audit_case, tmp_path, capsys, case):
    manifest = pd.read_csv(audit_case / "manifest.csv")
    manifest["path"] = [str(audit_case / p) for p in manifest["path"]]
    data = tmp_path / "manifest.csv"
    args: list = ["--data", data]
    if case == "label_unknown":
        manifest.loc[3, "label"] = "purple"
        expected = f"{data}: row 3 ({manifest['path'][3]}) has label 'purple', not among the classes"
    elif case == "empty":
        manifest = manifest.iloc[:0]
        expected = f"{data}: the data set has no images"
    elif case == "no_label_column":
        manifest = manifest.drop(columns="label")
        expected = f"{data}: manifest lacks column(s) label"
    elif case == "classes_count":
        (tmp_path / "classes.txt").write_text("red\ngreen\nblue\npurple\n")
        args += ["--classes", tmp_path / "classes.txt"]
        expected = f"{tmp_path / 'classes.txt'}: 4 classes but the model has 3 outputs"
    elif case == "corrupt_model":
        (tmp_path / "bad.keras").write_bytes(b"PK\x03\x04 not really a zip")
        args += ["--model", tmp_path / "bad.keras"]
        expected = f"--model {tmp_path / 'bad.keras'}: cannot load the model"
    elif case == "multi_output":
        args += ["--model", _model_file(tmp_path, "multi")]
        expected = "`model.output`: the model has 2 outputs (labels, boxes); name the classification head"
    elif case == "lambda_layer":
        import keras

        inputs = keras.Input(SHAPE)
        x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
        out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(x)))
        keras.Model(inputs, out).save(tmp_path / "lambda.keras")
        args += ["--model", tmp_path / "lambda.keras"]
        expected = f"--model {tmp_path / 'lambda.keras'}: the model holds a Lambda layer"
    elif case == "conflicting_labels":
        manifest = pd.concat([manifest, manifest.iloc[[0]].assign(label="blue")])
        expected = f"{data}: {manifest['path'].iloc[0]} is listed with different labels"
    elif case == "method_param_unknown":
        args += ["--set", "attribution.params.integrated_gradients.step=8"]
        expected = "`attribution.params.integrated_gradients.step` is not a parameter of integrated_gradients"
    elif case == "method_param_too_big":  # only the model's input size shows the patch is too large
        args += ["--set", "attribution.params.occlusion.patch=40"]
        expected = "`attribution.params.occlusion.patch` must be at most the image size 28x36 (got (40, 40))"
    else:
        args += ["--model", tmp_path / "none.keras"]
        expected = f"--model {tmp_path / 'none.keras'}: no such file"
    manifest.to_csv(data, index=False)
    result = _run_in_process(audit_case, tmp_path, capsys, *args)
    assert result.returncode == 2, result.stderr
    assert _error_line(result).startswith(f"audit: error: {expected}"), _error_line(result)
    assert not (tmp_path / "run").exists()  # stopped before any work


def test_model_that_outputs_nan_is_recorded_per_image(audit_case, tmp_path):
    result = _run(audit_case, tmp_path, "--model", _model_file(tmp_path, "nan"))
    assert result.returncode == 1, result.stderr   # every image unreadable: the default gate fails the run
    predictions = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    assert (predictions["error"].dropna().str.contains("not finite|cannot identify")).all()
    assert predictions["error"].str.contains("not finite").sum() == len(predictions) - 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["verdict"]["state"] == "nothing_found" and not summary["verdict"]["sound"]
    assert "nothing was audited" in result.stdout and "gate failed: max_unreadable_rate" in result.stdout


def test_unwritable_output_folder_exits_2(audit_case, tmp_path):
    if os.geteuid() == 0:  # root writes anywhere it has permission bits against it; sysfs refuses everyone
        out = Path("/sys/cnn-audit-test-run")
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        out = tmp_path / "ro" / "run"
    result = _run(audit_case, tmp_path, "--out", out)
    assert result.returncode == 2, result.stderr
    assert _error_line(result).startswith(f"audit: error: --out {out}: cannot write the run folder")


def test_second_run_into_a_busy_folder_exits_2_without_touching_it(audit_case, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # an audit in progress holds this
        result = _run(audit_case, tmp_path)
    assert result.returncode == 2
    assert _error_line(result).startswith(f"audit: error: --out {run_dir}: another audit is writing")
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
