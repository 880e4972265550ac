"""Image decoding: from a file, a URL or a record to the model's input size.

Images are decoded with Pillow: EXIF orientation applied as viewers do, any
mode (grey, palette, RGBA, CMYK, 16-bit) converted to 8-bit RGB, then resized
to the model's input size with bilinear filtering (aspect ratio not kept). A
JPEG much larger than that size is decoded with Pillow's draft mode (the DCT
scaled by 1/2, 1/4 or 1/8 while decoding, to no less than the input size) before
the exact resize: several times faster on photos, and the same maps
(``benchmarks/decode.py`` measures both).

Where the bytes come from is ``read_source``'s business: a local file, a URL
read through fsspec (credentials from the environment, as fsspec and s3fs read
them), or a record ``file#index`` of a TFRecord or Parquet file.
"""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageOps

from audit.data.records import PARQUET_SUFFIXES, parquet_image, split_ref, tfrecord_image
from audit.urls import is_url

def read_source(source: str | Path) -> bytes | Path:
    """The image bytes of ``source`` when a URL or a record ``file#index``, or the local file's ``Path``.

    Raises ``FileNotFoundError``, ``PermissionError`` (a denied object) or another
    ``OSError``/``ValueError`` with the location in its message.
    """
    text = str(source)
    if is_url(text):
        import fsspec

        try:
            with fsspec.open(text, "rb") as fh:
                return fh.read()
        except (FileNotFoundError, PermissionError) as exc:
            raise type(exc)(f"{text}: {exc.strerror or exc}") from None
    ref = split_ref(text)
    if ref is not None:
        file, index = ref
        if Path(file).suffix.lower() in PARQUET_SUFFIXES:
            return parquet_image(file, index)
        return tfrecord_image(file, index)
    return Path(source)


def read_image(source: str | Path | bytes, max_pixels: int | None = None,
               size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image to uint8 RGB ``[H, W, 3]``.

    Parameters
    ----------
    source : a local path, a URL, a record ``file#index`` (``read_source``) or encoded bytes.
    max_pixels : more pixels than this (read from the header, before decoding) is a ``ValueError``.
    size : the (height, width) the image will be resized to: a JPEG is then decoded in
        draft mode, its DCT scaled by the smallest of 1/8, 1/4, 1/2 that keeps both
        sides at least ``max(height, width)`` (none when the image is not twice that).
        ``None``: the image decoded at its own size.

    Raises ``OSError``/``ValueError`` with a readable message when the source is
    not a decodable image.
    """
    data = source if isinstance(source, bytes) else read_source(source)
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
        if max_pixels is not None and im.width * im.height > max_pixels:
            raise ValueError(f"{im.width}x{im.height} pixels exceed data.max_pixels={max_pixels}")
        if size is not None and im.format == "JPEG":
            side = max(size)   # either orientation: EXIF may swap width and height
            im.draft(im.mode, (side, side))
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


def load_images(root: str | Path, paths: list[str], size: tuple[int, int],
                max_pixels: int | None = None, channels: int = 3) -> tuple[np.ndarray, list[str | None]]:
    """Decode and resize a batch of images for the model.

    Parameters
    ----------
    root : folder (or URL prefix) the manifest paths are relative to.
    paths : manifest path strings (files, URLs or records ``file#index``).
    size : (height, width) of the model input.
    max_pixels : larger images are recorded as errors without being decoded.
    channels : 3 (RGB) or 1 (grey, ITU-R 601 luma, for single-channel models).

    Returns
    -------
    (images, errors): ``images`` float32 ``[N, H, W, channels]`` in 0..255 (zeros where
    unreadable); ``errors[i]`` is ``None`` or a one-line reason (a missing or denied
    object, an unreadable record or image).
    """
    from audit.data.manifest import resolve

    h, w = size
    out = np.zeros((len(paths), h, w, channels), np.float32)
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            image = resize(read_image(resolve(root, path), max_pixels, size), size)
            out[i] = grey(image)[..., None] if channels == 1 else image
            errors.append(None)
        except Exception as exc:  # any read or decode failure is recorded, never fatal
            errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
    return out, errors


FIRST_BATCH = 8   # images decoded before the model starts on a partition


def prefetched(root: str | Path, paths: list[str], size: tuple[int, int], batch: int, max_pixels: int | None = None,
               channels: int = 3, prepare: Callable[[np.ndarray], np.ndarray] | None = None
               ) -> Iterator[tuple[slice, np.ndarray, list[str | None]]]:
    """``load_images`` batch by batch, the next batch decoded (and prepared) in a reader thread while the caller
    runs the model on this one (Pillow and numpy release the GIL while they work).

    Parameters
    ----------
    root, paths, size, max_pixels, channels
        As in ``load_images``.
    batch : int
        Images per batch (the first is at most ``FIRST_BATCH``, the last may be smaller).
    prepare : callable, optional
        Applied to each batch's images in the reader thread, e.g. ``preprocess`` to the model's input
        range: off the model's thread (on 2 CPU cores it took 15% of MobileNetV2's forward pass there).

    Yields
    ------
    (slice, images, errors)
        The batch's positions in ``paths``, float32 ``[n, H, W, channels]`` (0..255, or ``prepare``'s
        output) and its errors (``load_images``'s).
    """
    # a short first batch: the model starts after FIRST_BATCH decodes, not a whole batch's (decoding a whole
    # first batch kept MobileNetV2 idle 0.8-3.4 s a partition on 2 loaded cores; a new batch shape's
    # first call costs 0.1-0.6 s)
    bounds = [0, *range(min(batch, FIRST_BATCH), len(paths), batch), len(paths)] if paths else []
    spans = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def load(part):
        images, errors = load_images(root, part, size, max_pixels, channels)
        return (images if prepare is None else prepare(images)), errors

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-reader") as reader:
        def read(span):
            return reader.submit(load, paths[span[0]:span[1]])

        pending = read(spans[0]) if spans else None
        for k, (start, stop) in enumerate(spans):
            images, errors = pending.result()
            if k + 1 < len(spans):
                pending = read(spans[k + 1])
            yield slice(start, stop), images, errors


def grey(image: np.ndarray) -> np.ndarray:
    """Luma ``[H, W]`` uint8 of ``image``, uint8 RGB ``[H, W, 3]`` (Pillow's ITU-R 601-2 conversion)."""
    return np.asarray(Image.fromarray(image).convert("L"))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``image`` (uint8 RGB ``[h, w, 3]``) to ``size`` = (height, width) in pixels."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)   # RGB, of 0..1 values
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)  # BGR, of 0..255 values


def preprocess(images: np.ndarray, mode: str) -> np.ndarray:
    """Map ``images``, float32 RGB (or grey) 0..255 ``[N, H, W, C]``, to what the model takes by ``mode``
    (``data.preprocess``).

    ``none``: unchanged (models with their own Rescaling layer); ``unit``: 0..1;
    ``symmetric`` and ``tf``: -1..1; ``imagenet`` and ``torch``: (x/255 - mean) / std per
    channel; ``caffe``: channels reversed to BGR, minus the ImageNet BGR means (0..255
    units). The last three are the conventions of ``keras.applications``'
    ``preprocess_input``. Single-channel images use the channel averages of the means
    and standard deviations.
    """
    grey = images.shape[-1] == 1
    if mode == "none":
        return images
    if mode == "unit":
        return images / 255.0
    if mode in ("symmetric", "tf"):
        return images / 127.5 - 1.0
    if mode in ("imagenet", "torch"):
        mean, std = (IMAGENET_MEAN.mean(keepdims=True), IMAGENET_STD.mean(keepdims=True)) if grey else \
            (IMAGENET_MEAN, IMAGENET_STD)
        return (images / 255.0 - mean) / std
    if mode == "caffe":
        return images - CAFFE_MEAN_BGR.mean(keepdims=True) if grey else images[..., ::-1] - CAFFE_MEAN_BGR
    raise ValueError(f"unknown preprocess mode {mode!r}")
