import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.data import load_classes, load_images, load_manifest, read_image
from audit.errors import UsageError


def _png(path, color, size=(10, 12), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_folder_manifest_and_class_order(tmp_path):
    _png(tmp_path / "b" / "1.png", (0, 0, 255))
    _png(tmp_path / "a" / "x" / "2.png", (255, 0, 0))
    frame, root = load_manifest(tmp_path)
    assert frame[["path", "label"]].values.tolist() == [["a/x/2.png", "a"], ["b/1.png", "b"]]
    assert load_classes(None, frame, tmp_path) == ["a", "b"]


def test_csv_manifest_keeps_metadata_and_checks_columns(tmp_path):
    _png(tmp_path / "img" / "1.png", (1, 2, 3))
    (tmp_path / "m.csv").write_text("path,label,cue\nimg/1.png,pool,1\n")
    frame, root = load_manifest(tmp_path / "m.csv")
    assert root == tmp_path and frame["cue"].tolist() == [1]
    (tmp_path / "bad.csv").write_text("file,label\nimg/1.png,pool\n")
    with pytest.raises(UsageError, match=r"bad.csv: manifest lacks column\(s\) path"):
        load_manifest(tmp_path / "bad.csv")


def test_decode_modes_and_errors(tmp_path):
    _png(tmp_path / "gray.png", 128, mode="L")
    _png(tmp_path / "rgba.png", (255, 0, 0, 0), mode="RGBA")
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "deep.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert read_image(tmp_path / "gray.png")[0, 0].tolist() == [128, 128, 128]
    assert read_image(tmp_path / "rgba.png")[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert read_image(tmp_path / "deep.png")[0, 0].tolist() == [255, 255, 255]  # 16-bit scaled
    images, errors = load_images(tmp_path, ["gray.png", "bad.png", "missing.png"], (6, 8))
    assert images.shape == (3, 6, 8, 3) and images.dtype == np.float32
    assert errors[0] is None and "UnidentifiedImageError" in errors[1] and "missing.png" in errors[2]


def test_oversized_image_refused_before_decoding(tmp_path):
    _png(tmp_path / "big.png", (0, 0, 0), size=(300, 200))
    images, errors = load_images(tmp_path, ["big.png"], (4, 4), max_pixels=50_000)
    assert "300x200 pixels exceed data.max_pixels=50000" in errors[0]
    assert read_image(tmp_path / "big.png", max_pixels=60_000).shape == (200, 300, 3)
