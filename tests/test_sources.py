"""Data where teams keep it: object storage (a real S3-compatible server, moto, on 127.0.0.1, read
through s3fs), TFRecord shards, Parquet files of image bytes, large JPEGs. Each version of the
planted-cue case must give the findings of the same images on disk."""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.data import load_images, load_manifest, read_image, resize
from audit.data.records import parse_example, tfrecord_manifest
from audit.errors import UsageError
from tests.conftest import CLASSES, audit_command


def _run(*args, cwd, env=None):
    return subprocess.run(audit_command("run", *args, "--quiet"), cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=env)


def _findings(out, rename=lambda p: p) -> list[tuple]:
    summary = json.loads((out / "summary.json").read_text())
    return [(f["true_label"], f["predicted_label"], f["size"], round(f["score"], 6),
             sorted(rename(m) for m in f["members"])) for f in summary["findings"]]


@pytest.fixture(scope="module")
def on_disk(audit_case, tmp_path_factory):
    """The planted-cue case audited from its CSV manifest on disk: the reference findings."""
    out = tmp_path_factory.mktemp("disk") / "run"
    result = _run("--model", audit_case / "model.keras", "--data", audit_case / "manifest.csv",
                  "--classes", audit_case / "classes.txt", "--out", out, cwd=out.parent)
    assert result.returncode == 0, result.stderr
    findings = _findings(out)
    assert findings and findings[0][:2] == ("red", "green")
    return out, findings


def _example(image: bytes, label: int | None = None, text: str | None = None) -> bytes:
    import tensorflow as tf

    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
    if label is not None:
        feature["image/class/label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
    if text is not None:
        feature["image/class/text"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_tfrecord_examples_parsed_without_tensorflow(tmp_path):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(tmp_path / "a.tfrecord")) as writer:
        writer.write(_example(b"\x01\x02", label=7))
        writer.write(_example(b"\x03", text="pool"))
        writer.write(_example(b"\x04", label=-3))
    assert parse_example(_example(b"xyz", label=300, text="kitchen")) == {
        "image/encoded": [b"xyz"], "image/class/label": [300], "image/class/text": [b"kitchen"]}
    frame = tfrecord_manifest([tmp_path / "a.tfrecord"], tmp_path)
    assert frame["path"].tolist() == ["a.tfrecord#0", "a.tfrecord#1", "a.tfrecord#2"]
    assert frame["label"].tolist() == [7, "pool", -3]
    png = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(png, "PNG")
    with tf.io.TFRecordWriter(str(tmp_path / "d.tfrecord")) as writer:
        writer.write(_example(png.getvalue(), text="pool"))
        writer.write(tf.train.Example(features=tf.train.Features(feature={"image/class/text": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[b"pool"]))})).SerializeToString())
    images, errors = load_images(tmp_path, ["d.tfrecord#0", "d.tfrecord#1", "d.tfrecord#5"], (2, 2))
    assert errors[0] is None and (images[0] == 200).all()
    assert errors[1] == f"ValueError: {tmp_path}/d.tfrecord#1: the record has no image/encoded bytes"
    assert errors[2] == f"IndexError: {tmp_path}/d.tfrecord has 2 records, not #5"
    with tf.io.TFRecordWriter(str(tmp_path / "b.tfrecord")) as writer:
        writer.write(tf.train.Example().SerializeToString())
    with pytest.raises(UsageError, match=r"b.tfrecord#0: the record has neither image/class/text nor"):
        load_manifest(tmp_path / "b.tfrecord")
    (tmp_path / "c.tfrecord").write_bytes(b"\x05\x00")
    with pytest.raises(UsageError, match=r"--data .*c.tfrecord: not a readable TFRecord file"):
        load_manifest(tmp_path / "c.tfrecord")
    with pytest.raises(UsageError, match=r"--data .*\*.tfrec: no file matches"):
        load_manifest(tmp_path / "*.tfrec")


@pytest.mark.slow
def test_tfrecord_shards_give_the_findings_of_the_files(audit_case, on_disk, tmp_path):
    import tensorflow as tf

    manifest = pd.read_csv(audit_case / "manifest.csv")
    shards = tmp_path / "shards"
    shards.mkdir()
    names = {}
    for s, part in enumerate(np.array_split(np.arange(len(manifest)), 2)):
        with tf.io.TFRecordWriter(str(shards / f"case-{s}.tfrecord")) as writer:
            for i, row in enumerate(part):
                path, label = manifest.at[row, "path"], manifest.at[row, "label"]
                writer.write(_example((audit_case / path).read_bytes(), label=CLASSES.index(label)))
                names[f"case-{s}.tfrecord#{i}"] = path
    out = tmp_path / "run"
    result = _run("--model", audit_case / "model.keras", "--data", shards / "*.tfrecord",
                  "--classes", audit_case / "classes.txt", "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _findings(out, names.get) == on_disk[1]
    predictions = pd.read_parquet(out / "predictions.parquet")
    broken = predictions[predictions["error"].notna()]
    assert broken["path"].map(names).tolist() == ["imgs/broken.png"]
    assert "cannot identify image file" in broken["error"].iloc[0]


@pytest.mark.slow
def test_parquet_of_image_bytes_gives_the_findings_of_the_files(audit_case, on_disk, tmp_path):
    """The Hugging Face datasets export layout: image struct {bytes, path}, ClassLabel ints named in
    the file's metadata, other columns kept as metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = pd.read_csv(audit_case / "manifest.csv")
    image = pa.array([{"bytes": (audit_case / p).read_bytes(), "path": p} for p in manifest["path"]],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({"image": image, "label": pa.array([CLASSES.index(x) for x in manifest["label"]], pa.int64()),
                      "cue": pa.array(manifest["cue"].tolist())})
    hf = {"info": {"features": {"image": {"_type": "Image"},
                                "label": {"names": CLASSES, "_type": "ClassLabel"}}}}
    table = table.replace_schema_metadata({"huggingface": json.dumps(hf)})
    pq.write_table(table, tmp_path / "train.parquet")
    out = tmp_path / "run"
    result = _run("--model", audit_case / "model.keras", "--data", tmp_path / "train.parquet",
                  "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = {f"train.parquet#{i}": p for i, p in enumerate(manifest["path"])}
    assert _findings(out, names.get) == on_disk[1]
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert predictions["cue"].tolist() == manifest["cue"].tolist()   # metadata kept


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(audit_case):
    """A moto S3 server on 127.0.0.1 holding the planted-cue case under s3://case/, with an IAM
    user allowed everything but reading one object; authentication on once the data is in."""
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    from moto import settings
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    setup = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                 aws_secret_access_key="setup")
    client = boto3.client("s3", **setup)
    client.create_bucket(Bucket="case")
    manifest = pd.read_csv(audit_case / "manifest.csv")
    for path in manifest["path"]:
        client.upload_file(str(audit_case / path), "case", f"data/{path}")
    client.put_object(Bucket="case", Key="data/imgs/denied.png", Body=(audit_case / manifest["path"][0]).read_bytes())
    extra = pd.DataFrame([{"path": "imgs/missing.png", "label": "blue", "cue": 0},
                          {"path": "imgs/denied.png", "label": "red", "cue": 0}])
    client.put_object(Bucket="case", Key="data/manifest.csv",
                      Body=pd.concat([manifest, extra]).to_csv(index=False).encode())
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName="auditor")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::case/data/imgs/denied.png"}]}
    iam.put_user_policy(UserName="auditor", PolicyName="read", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="auditor")["AccessKey"]
    saved = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0   # from here on every request is signed and authorized
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "FSSPEC_S3_ENDPOINT_URL": endpoint}
    yield env
    settings.INITIAL_NO_AUTH_ACTION_COUNT = saved
    server.stop()


@pytest.mark.slow
def test_s3_manifest_gives_the_findings_of_the_files(audit_case, on_disk, s3, tmp_path):
    out = tmp_path / "run"
    result = _run("--model", audit_case / "model.keras", "--data", "s3://case/data/manifest.csv",
                  "--classes", audit_case / "classes.txt", "--out", out, cwd=tmp_path, env=s3)
    assert result.returncode == 0, result.stderr
    assert _findings(out) == on_disk[1]
    predictions = pd.read_parquet(out / "predictions.parquet").set_index("path")
    assert predictions["error"].notna().sum() == 3
    assert predictions.at["imgs/missing.png", "error"].startswith("FileNotFoundError: s3://case/data/imgs/missing.png")
    assert predictions.at["imgs/denied.png", "error"].startswith("PermissionError: s3://case/data/imgs/denied.png")
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["root"] == "s3://case/data"


def test_s3_errors_recorded_per_image(s3, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
                 "FSSPEC_S3_ENDPOINT_URL"):
        monkeypatch.setenv(name, s3[name])
    import fsspec

    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = s3["FSSPEC_S3_ENDPOINT_URL"]
    try:
        images, errors = load_images("s3://case/data", ["imgs/red_00.png", "imgs/missing.png", "imgs/denied.png"],
                                     (8, 8))
    finally:
        fsspec.config.conf["s3"].pop("endpoint_url", None)
    assert errors[0] is None and images[0].any()
    assert errors[1].startswith("FileNotFoundError: s3://case/data/imgs/missing.png")
    assert errors[2].startswith("PermissionError: s3://case/data/imgs/denied.png")


def _photo(width: int = 2000, height: int = 1500, seed: int = 0) -> bytes:
    """A smooth JPEG photo stand-in: low-frequency colour waves plus mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [127 + 100 * np.sin(2 * np.pi * (f1 * x + f2 * y) + p)
                for f1, f2, p in rng.uniform(0.5, 3, (3, 3))]
    image = np.clip(np.stack(channels, -1) + rng.normal(0, 4, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_large_jpegs_decoded_in_draft_mode(tmp_path):
    data = _photo()
    (tmp_path / "photo.jpg").write_bytes(data)
    drafted = read_image(tmp_path / "photo.jpg", size=(64, 64))
    assert drafted.shape == (188, 250, 3)        # the DCT scaled by 1/8: still >= 64 on each side
    assert read_image(data, size=(224, 224)).shape == (375, 500, 3)   # 1/4 keeps >= 224
    full = read_image(tmp_path / "photo.jpg")
    assert full.shape == (1500, 2000, 3)
    difference = np.abs(resize(drafted, (64, 64)).astype(float) - resize(full, (64, 64)).astype(float))
    assert difference.mean() < 2.0
    images, errors = load_images(tmp_path, ["photo.jpg"], (64, 64))
    assert errors == [None] and np.array_equal(images[0], resize(drafted, (64, 64)))


def test_urls_are_never_made_relative(tmp_path):
    from audit.config import resolve
    from audit.data import resolve as locate

    (tmp_path / "p.yaml").write_text("data:\n  path: s3://bucket/audit/manifest.csv\n  classes: classes.txt\n")
    config = resolve(tmp_path / "p.yaml")
    assert config.data.path == "s3://bucket/audit/manifest.csv"
    assert config.data.classes == str(tmp_path / "classes.txt")
    assert locate("s3://bucket/audit", "imgs/a.png") == "s3://bucket/audit/imgs/a.png"
    assert locate(tmp_path, "https://host/x.png") == "https://host/x.png"
    assert locate(tmp_path, "shards/a.tfrecord#3") == tmp_path / "shards" / "a.tfrecord#3"
