"""Manifests (folder, CSV or parquet) to a DataFrame, class lists, and image decoding.

A manifest has at least ``path`` and ``label``; paths are relative to the
manifest's folder (or absolute). Extra columns are kept as metadata. A folder
with one subfolder per class is read as a manifest whose paths are
``<class>/<file>`` relative to that folder.

Images are decoded with Pillow: EXIF orientation applied as viewers do, any
mode (grey, palette, RGBA, CMYK, 16-bit) converted to 8-bit RGB, then resized
to the model's input size with bilinear filtering (aspect ratio not kept).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from audit.errors import UsageError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
RESERVED_COLUMNS = {"row", "predicted", "confidence", "margin", "runner_up", "probs", "error",
                    "label_idx", "predicted_idx", "reason", "pair", "true_label", "pair_label"}


def load_manifest(data: Path) -> tuple[pd.DataFrame, Path]:
    """Read a data set description.

    Parameters
    ----------
    data : folder with one subfolder per class, or a ``.csv`` / ``.parquet`` manifest.

    Returns
    -------
    (frame, root): ``frame`` has columns ``path`` (as written in the manifest),
    ``label`` (str) and any metadata columns, in manifest order; ``root`` is the
    folder the paths are relative to.
    """
    data = Path(data)
    if not data.exists():
        raise UsageError(f"--data {data}: no such file or folder")
    if data.is_dir():
        frame = _scan_folder(data)
        root = data
    elif data.suffix.lower() == ".csv":
        frame = pd.read_csv(data, dtype={"path": str, "label": str}, keep_default_na=False)
        root = data.parent
    elif data.suffix.lower() in (".parquet", ".pq"):
        frame = pd.read_parquet(data)
        root = data.parent
    else:
        raise UsageError(f"--data {data}: expected a folder, a .csv or a .parquet manifest")
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        raise UsageError(f"{data}: manifest lacks column(s) {', '.join(missing)} (needs at least path,label)")
    clash = sorted(RESERVED_COLUMNS & set(frame.columns))
    if clash:
        raise UsageError(f"{data}: manifest column(s) {', '.join(clash)} are reserved by cnn-audit; rename them")
    if frame.empty:
        raise UsageError(f"{data}: the data set has no images")
    frame = frame.reset_index(drop=True)
    frame["path"] = frame["path"].astype(str)
    frame["label"] = frame["label"].astype(str)
    return frame, root


def _scan_folder(folder: Path) -> pd.DataFrame:
    rows = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(class_dir.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                rows.append({"path": file.relative_to(folder).as_posix(), "label": class_dir.name})
    return pd.DataFrame(rows, columns=["path", "label"])


def load_classes(path: Path | None, frame: pd.DataFrame, data: Path) -> list[str]:
    """Class names in the model's output order.

    From ``path`` (one name per line) when given; otherwise the sorted subfolder
    names of a folder data set (Keras' ``image_dataset_from_directory`` order) or
    the sorted distinct labels of a manifest.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"--classes {path}: no such file")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise UsageError(f"--classes {path}: the file lists no class")
        if len(set(names)) != len(names):
            raise UsageError(f"--classes {path}: class names must be unique")
        return names
    if Path(data).is_dir():
        return sorted(p.name for p in Path(data).iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(frame["label"].unique().tolist())


def resolve(root: Path, path: str) -> Path:
    """The file a manifest path points to."""
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


def read_image(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """Decode one image file to uint8 RGB ``[H, W, 3]`` at its own size.

    Raises ``OSError``/``ValueError`` with a readable message when the file is
    not a decodable image or has more than ``max_pixels`` pixels (checked from
    the header, before decoding).
    """
    with Image.open(path) as im:
        if max_pixels is not None and im.width * im.height > max_pixels:
            raise ValueError(f"{im.width}x{im.height} pixels exceed data.max_pixels={max_pixels}")
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, dtype=np.float64)
            top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
            im = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8))
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, rgba)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_images(root: Path, paths: list[str], size: tuple[int, int],
                max_pixels: int | None = None) -> tuple[np.ndarray, list[str | None]]:
    """Decode and resize a batch of images for the model.

    Parameters
    ----------
    root : folder the manifest paths are relative to.
    paths : manifest path strings.
    size : (height, width) of the model input.
    max_pixels : larger images are recorded as errors without being decoded.

    Returns
    -------
    (images, errors): ``images`` float32 ``[N, H, W, 3]`` in 0..255 (zeros where
    unreadable); ``errors[i]`` is ``None`` or a one-line reason.
    """
    h, w = size
    out = np.zeros((len(paths), h, w, 3), np.float32)
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            out[i] = resize(read_image(resolve(root, path), max_pixels), size)
            errors.append(None)
        except Exception as exc:  # any decode failure is recorded, never fatal
            errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
    return out, errors


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 RGB image to ``size`` = (height, width)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def preprocess(images: np.ndarray, mode: str) -> np.ndarray:
    """Map float32 RGB 0..255 to what the model takes (``data.preprocess``).

    ``none``: unchanged (models with their own Rescaling layer); ``unit``: 0..1;
    ``symmetric``: -1..1; ``imagenet``: (x/255 - mean) / std per channel.
    """
    if mode == "none":
        return images
    if mode == "unit":
        return images / 255.0
    if mode == "symmetric":
        return images / 127.5 - 1.0
    if mode == "imagenet":
        mean = np.array([0.485, 0.456, 0.406], np.float32)
        std = np.array([0.229, 0.224, 0.225], np.float32)
        return (images / 255.0 - mean) / std
    raise ValueError(f"unknown preprocess mode {mode!r}")
