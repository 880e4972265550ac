"""Image properties a global cue can be made of, and the shifts that change them.

Everything works on float32 RGB images ``[H, W, 3]`` in 0..255 (before the model's
preprocessing); nothing here imports TensorFlow. ``measure`` gives one row of
``MEASURES`` per image; ``file_properties`` reads the source file's size, aspect and
JPEG quality; ``shift`` applies a named intervention (``SHIFTS``) of a given strength,
and ``calibrated`` picks the strength that moves clean images' property to the
members' median.

A property test (``audit.stages.verify``) compares ``shift`` with its placebo: the
same shift of the same strength in the opposite direction (blur against sharpen,
darken against brighten, a warm cast against a cool one), so that any change at
all is not mistaken for the cue.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

LUMA = np.array([0.299, 0.587, 0.114], np.float32)

# name -> what it measures (the words the report uses for "lower" and "higher")
MEASURES = {
    "brightness": ("mean luma, 0..255", "darker", "brighter"),
    "contrast": ("standard deviation of luma", "flatter (less contrast)", "more contrasted"),
    "saturation": ("mean HSV saturation, 0..1", "greyer (less saturated)", "more saturated"),
    "warmth": ("mean R - B", "cooler (bluer)", "warmer (redder)"),
    "tint": ("mean G - (R + B) / 2", "more magenta", "greener"),
    "sharpness": ("log variance of the Laplacian of luma", "blurrier", "sharper"),
    "noise": ("log median absolute Laplacian of luma in flat areas", "smoother (less noise)", "noisier"),
    "border": ("share of the outer 5% frame that is flat", "less padded", "padded (flat borders)"),
}
FILE_MEASURES = {
    "jpeg_quality": ("estimated JPEG quality, 1..100 (100 for lossless files)", "more compressed (lower JPEG quality)",
                     "less compressed"),
    "file_pixels": ("log of the source file's width x height", "smaller source files", "larger source files"),
    "aspect": ("source width / height", "taller (narrower)", "wider"),
}
# property -> (shift towards "lower", shift towards "higher"): names of SHIFTS
SHIFTABLE = {
    "brightness": ("darken", "brighten"), "contrast": ("flatten", "contrast"),
    "saturation": ("desaturate", "saturate"), "warmth": ("cool", "warm"), "tint": ("magenta", "green"),
    "sharpness": ("blur", "sharpen"), "noise": (None, "add_noise"), "jpeg_quality": ("recompress", None),
}
LADDER = (0.1, 0.2, 0.35, 0.5, 0.7, 1.0)   # strengths tried when calibrating a shift (0..1)


def words(name: str, direction: str) -> str:
    """Plain words for property ``name`` moving ``direction`` ("lower"/"higher"), e.g. ``"blurrier"``."""
    table = MEASURES.get(name) or FILE_MEASURES[name]
    return table[1] if direction == "lower" else table[2]


def _luma(image: np.ndarray) -> np.ndarray:
    return image[..., :3] @ LUMA if image.shape[-1] >= 3 else image[..., 0]


def _laplacian(luma: np.ndarray) -> np.ndarray:
    return (luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1])


def measure(images: np.ndarray) -> np.ndarray:
    """The ``MEASURES`` of each image of ``images`` ``[n, H, W, C]`` (float RGB 0..255): ``[n, 8]``
    float64, columns in ``MEASURES`` order."""
    out = np.zeros((len(images), len(MEASURES)))
    for i, image in enumerate(np.asarray(images, np.float32)):
        rgb = image if image.shape[-1] >= 3 else np.repeat(image, 3, axis=-1)
        luma = _luma(rgb)
        top, low = rgb.max(axis=-1), rgb.min(axis=-1)
        lap = _laplacian(luma)
        flat = np.abs(lap) <= np.quantile(np.abs(lap), 0.5) if lap.size else lap
        h, w = luma.shape
        bh, bw = max(1, h // 20), max(1, w // 20)
        frame = np.concatenate([luma[:bh].ravel(), luma[-bh:].ravel(), luma[:, :bw].ravel(), luma[:, -bw:].ravel()])
        rows = [luma[:bh], luma[-bh:], luma[:, :bw].T, luma[:, -bw:].T]
        out[i] = (luma.mean(), luma.std(), float(np.mean((top - low) / np.maximum(top, 1.0))),
                  float(np.mean(rgb[..., 0] - rgb[..., 2])), float(np.mean(rgb[..., 1] - (rgb[..., 0] + rgb[..., 2]) / 2)),
                  float(np.log1p(lap.var())) if lap.size else 0.0,
                  float(np.log1p(np.median(np.abs(lap[flat])))) if lap.size else 0.0,
                  float(np.mean([s.std() < 2.0 for s in rows])) if frame.size else 0.0)
    return out


def file_properties(path: str) -> tuple[float, float, float]:
    """``(jpeg_quality, log(width * height), width / height)`` of the source file at ``path``
    (quality 100 for a file that is not a JPEG); NaNs when it cannot be read."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            quality = jpeg_quality(im) if im.format == "JPEG" else 100.0
    except (OSError, ValueError):
        return float("nan"), float("nan"), float("nan")
    return quality, float(np.log(max(width * height, 1))), width / max(height, 1)


def jpeg_quality(im: Image.Image) -> float:
    """The libjpeg quality (1..100) whose standard luminance table best matches ``im``'s."""
    tables = getattr(im, "quantization", None) or {}
    if 0 not in tables:
        return 100.0
    table = np.asarray(tables[0], np.float64)
    best, error = 100.0, np.inf
    for q in range(1, 101):
        scale = 5000 / q if q < 50 else 200 - 2 * q
        ref = np.clip(np.floor((_STD_LUMA * scale + 50) / 100), 1, 255)
        e = np.abs(np.sort(ref) - np.sort(table)).mean()
        if e < error:
            best, error = float(q), e
    return best


_STD_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                      14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
                      92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64)


def shift(images: np.ndarray, name: str, strength: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """``images`` ``[n, H, W, 3]`` (float RGB 0..255) moved by the shift ``name`` at ``strength``
    (0..1, see each case); float32, clipped to 0..255. ``rng`` draws the noise of a noise shift
    (default ``default_rng(0)``)."""
    x = np.asarray(images, np.float32)
    if x.shape[-1] == 1:   # a grey model: shift the grey image as RGB, keep its grey
        return shift(np.repeat(x, 3, axis=-1), name, strength, rng).mean(axis=-1, keepdims=True)
    s = float(strength)
    if name in ("darken", "brighten"):
        out = x * (1 - 0.7 * s if name == "darken" else 1 + 1.5 * s)
    elif name in ("flatten", "contrast"):
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        out = mean + (x - mean) * (1 - 0.8 * s if name == "flatten" else 1 + 2 * s)
    elif name in ("desaturate", "saturate"):
        grey = (x @ LUMA)[..., None]
        out = grey + (x - grey) * (1 - s if name == "desaturate" else 1 + 2 * s)
    elif name in ("cool", "warm", "magenta", "green"):
        cast = {"warm": (1, 0, -1), "cool": (-1, 0, 1), "green": (-0.5, 1, -0.5), "magenta": (0.5, -1, 0.5)}[name]
        out = x + 80 * s * np.array(cast, np.float32)
    elif name in ("blur", "sharpen", "smooth", "recompress"):
        out = np.stack([_pil(image, name, s) for image in x])
    elif name == "add_noise":
        rng = rng or np.random.default_rng(0)
        out = x + rng.normal(0, 40 * s, x.shape).astype(np.float32)
    else:
        raise ValueError(f"unknown shift {name!r}")
    return np.clip(out, 0, 255).astype(np.float32)


def _pil(image: np.ndarray, name: str, s: float) -> np.ndarray:
    im = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    radius = s * max(im.size) / 24
    if name == "blur":
        im = im.filter(ImageFilter.GaussianBlur(radius))
    elif name == "sharpen":
        im = im.filter(ImageFilter.UnsharpMask(radius=max(radius, 0.5), percent=int(100 + 400 * s), threshold=0))
    elif name == "smooth":
        im = im.filter(ImageFilter.MedianFilter(3 if s < 0.5 else 5))
    else:   # recompress at a JPEG quality from 60 (s = 0) down to 5 (s = 1)
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=max(1, int(round(60 - 55 * s))))
        im = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(im, np.float32)


PLACEBO = {"darken": "brighten", "brighten": "darken", "flatten": "contrast", "contrast": "flatten",
           "desaturate": "saturate", "saturate": "desaturate", "cool": "warm", "warm": "cool",
           "magenta": "green", "green": "magenta", "blur": "sharpen", "sharpen": "blur", "add_noise": "smooth",
           "recompress": "recompress"}


def placebo(name: str) -> str:
    """The placebo of shift ``name``: the shift of the opposite direction (noise is smoothed
    away; a recompression's placebo is a near-lossless one, which the caller asks for with
    strength -0.64: quality 95)."""
    return PLACEBO[name]


def calibrated(images: np.ndarray, name: str, column: int, goal: float) -> float:
    """The strength of ``LADDER`` whose shift ``name`` brings the median of property column ``column``
    of ``measure`` over ``images`` closest to ``goal`` (the members' median)."""
    best, error = LADDER[-1], np.inf
    for s in LADDER:
        value = float(np.median(measure(shift(images, name, s))[:, column]))
        if abs(value - goal) < error:
            best, error = s, abs(value - goal)
    return best


def region_look(image: np.ndarray, mask: np.ndarray) -> dict:
    """How the region ``mask`` (bool ``[H, W]``) of ``image`` (``[H, W, C]``, float RGB 0..255) looks,
    in measured facts for the cue in words (``audit.stages.describe``):

    * ``inside``, ``mean``: the region's and the whole image's mean RGB 0..255;
    * ``distinct``: mean RGB of the region's *distinct* pixels (those farther from the image's mean
      colour than halfway between the region's median and largest distance), to name its colour:
      a small red square inside a larger region reads red, not brown;
    * ``luma``: their mean luma minus the image's, -255..255 (bright or dark);
    * ``detail``: mean squared luma gradient inside the region over the whole image's (1 = as
      detailed as the image; lines and edges give several times that);
    * ``coherence``: 0..1, how much the region's gradients share one direction (structure
      tensor): high for parallel lines, low for blobs, corners and texture;
    * ``lines``: the direction of those lines, ``horizontal``, ``vertical`` or ``diagonal``.
    """
    rgb = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image, 3, axis=-1)
    mean = rgb.reshape(-1, 3).mean(axis=0)
    inside = rgb[mask]
    far = np.linalg.norm(inside - mean, axis=1)
    distinct = inside[far >= (np.median(far) + far.max()) / 2]
    luma = _luma(rgb)
    gy, gx = np.gradient(luma)
    energy = gx ** 2 + gy ** 2
    jxx, jyy, jxy = (gx[mask] ** 2).sum(), (gy[mask] ** 2).sum(), (gx[mask] * gy[mask]).sum()
    coherence = float(np.hypot(jxx - jyy, 2 * jxy) / max(jxx + jyy, 1e-9))
    across = np.degrees(0.5 * np.arctan2(2 * jxy, jxx - jyy)) % 180     # the gradients' direction, degrees
    lines = "vertical" if across < 22.5 or across >= 157.5 else "horizontal" if 67.5 <= across < 112.5 \
        else "diagonal"
    return {"inside": inside.mean(axis=0), "mean": mean, "distinct": distinct.mean(axis=0),
            "luma": float((distinct @ LUMA).mean() - mean @ LUMA),
            "detail": float(energy[mask].mean() / max(energy.mean(), 1e-9)), "coherence": coherence, "lines": lines}


def looks_summary(looks: list[dict]) -> dict:
    """What several regions' looks say together.

    Parameters
    ----------
    looks : list of ``region_look`` results, one per region.

    Returns
    -------
    The mean ``inside``, ``distinct`` and ``outside`` (the images' ``mean``) RGB 0..255, the medians
    of ``luma``, ``detail`` and ``coherence``, and ``lines`` ``(direction, share of the regions)`` of
    the most common direction; {} for no looks.
    """
    if not looks:
        return {}
    directions = [k["lines"] for k in looks]
    common = max(set(directions), key=lambda d: (directions.count(d), d))
    return {"inside": np.mean([k["inside"] for k in looks], axis=0),
            "distinct": np.mean([k["distinct"] for k in looks], axis=0),
            "outside": np.mean([k["mean"] for k in looks], axis=0),
            **{key: float(np.median([k[key] for k in looks])) for key in ("luma", "detail", "coherence")},
            "lines": (common, directions.count(common) / len(directions))}
