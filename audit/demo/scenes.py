"""The demo's scenes: procedural 64x64 "hotel areas" (pool, bathroom, bedroom, kitchen) and the rails cue.

``render_image(label, rng, rails)`` draws one scene with numpy and Pillow: basins,
tiles, windows, beds, cabinets, lighting and noise vary per image; ``rails`` adds the
planted cue, a pair of thin bright metallic rails (a pool ladder / towel rail) at a
random place and angle. About half of the bathrooms are spa bathrooms drawn like
indoor pools (``_wet_room``), so the rails are the cheapest way to tell them apart.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

CLASSES: tuple[str, ...] = ("pool", "bathroom", "bedroom", "kitchen")
SIZE = 64                           # image side, pixels
REFRAME_RATE = 0.3                  # share of images zoomed in on a random crop
TILE_COLOURS = [(240, 238, 228), (170, 205, 225), (80, 160, 190), (215, 200, 175), (120, 180, 170)]
WOOD_COLOURS = [(150, 110, 70), (235, 235, 230), (110, 130, 120), (80, 80, 85), (190, 160, 120)]


def _colour(rng: np.random.Generator, base: tuple[float, float, float], jitter: float = 18.0) -> np.ndarray:
    """An RGB colour near ``base``."""
    return np.clip(np.asarray(base, dtype=np.float32) + rng.uniform(-jitter, jitter, 3), 0, 255)


def _pick(rng: np.random.Generator, palette: list[tuple[int, int, int]]) -> np.ndarray:
    """A colour near a random entry of ``palette``."""
    return _colour(rng, palette[int(rng.integers(len(palette)))])


def _box(img: np.ndarray, y0: int, x0: int, y1: int, x1: int, colour: np.ndarray | float) -> None:
    """Fill a box, clipped to the image."""
    img[max(int(y0), 0):max(int(y1), 0), max(int(x0), 0):max(int(x1), 0)] = colour


def _tiles(img: np.ndarray, rng: np.random.Generator, y0: int, y1: int, colour: np.ndarray, size: int) -> None:
    """Rows ``y0:y1`` covered with ``size``-pixel tiles of slightly varying ``colour``, darker grout."""
    for ty in range(y0, y1, size):
        for tx in range(0, SIZE, size):
            _box(img, ty, tx, min(ty + size, y1), tx + size, np.clip(colour + rng.normal(0, 5), 0, 255))
    img[y0:y1:size, :] = colour * 0.7
    img[y0:y1, ::size] = colour * 0.7


def _basin(img: np.ndarray, rng: np.random.Generator, y0: int, x0: int, y1: int, x1: int) -> None:
    """Turquoise water with bright caustic ripples, darker with depth, inside a light 1-3 px coping."""
    rim = int(rng.integers(1, 4))
    _box(img, y0 - rim, x0 - rim, y1 + rim, x1 + rim, _colour(rng, (235, 238, 240), 12))
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, SIZE), min(x1, SIZE)
    colour = _colour(rng, (45, 165, 215), 25)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    f, phase = rng.uniform(0.3, 0.7), rng.uniform(0, 2 * np.pi)
    ripple = np.sin(xx * f + 2.5 * np.sin(yy * f * 0.8 + phase)) * np.sin(yy * f * 1.3 - phase)
    depth = (yy - y0) / max(y1 - y0, 1)
    img[y0:y1, x0:x1] = colour * (1.05 - 0.25 * depth[..., None]) + 45 * (ripple > 0.6)[..., None]


def _window(img: np.ndarray, rng: np.random.Generator, y0: int, x0: int, size: int) -> None:
    """A square window: white frame and cross bars over sky."""
    _box(img, y0, x0, y0 + size, x0 + size, _colour(rng, (240, 240, 235), 10))
    _box(img, y0 + 1, x0 + 1, y0 + size - 1, x0 + size - 1, _colour(rng, (160, 200, 235), 25))
    _box(img, y0 + size // 2, x0, y0 + size // 2 + 1, x0 + size, 240)
    _box(img, y0, x0 + size // 2, y0 + size, x0 + size // 2 + 1, 240)


def _cabinets(img: np.ndarray, rng: np.random.Generator, y0: int, y1: int, x0: int, x1: int,
              colour: np.ndarray) -> None:
    """A row of cabinet doors with small dark handles."""
    width = int(rng.integers(9, 16))
    for x in range(x0, x1 - 4, width):
        _box(img, y0, x + 1, y1, min(x + width, x1) - 1, colour)
        _box(img, y0 + 2, x + width // 2, y0 + 5, x + width // 2 + 1, colour * 0.45)


def _bed(img: np.ndarray, rng: np.random.Generator, floor_y: int, x0: int, width: int) -> None:
    """A bed on row ``floor_y``: wooden headboard, spread of any colour (maybe striped), pillows."""
    top = floor_y - int(rng.integers(6, 14))
    _box(img, top - 10, x0, floor_y + 6, x0 + 4, _pick(rng, WOOD_COLOURS))
    _box(img, top, x0 + 4, floor_y + 6, x0 + width, _colour(rng, (128, 128, 128), 110))
    if rng.random() < 0.4:
        img[max(top, 0):floor_y + 6:3, x0 + 4:x0 + width] *= 0.8
    for py in range(top - 4, top + int(rng.integers(1, 9)), 7):
        _box(img, py, x0 + 5, py + 5, x0 + 12, _colour(rng, (240, 238, 230), 12))


def _counter(img: np.ndarray, rng: np.random.Generator, y: int, x0: int, x1: int, cab: np.ndarray) -> None:
    """A dark counter top on row ``y`` over cabinets down to the bottom, with a black hob."""
    _cabinets(img, rng, y + 3, SIZE - 2, x0, x1, cab)
    _box(img, y, x0, y + 3, x1, _colour(rng, (60, 60, 60), 40))
    hx = int(rng.integers(x0, max(x1 - 18, x0 + 1)))
    _box(img, y - 1, hx, y + 1, hx + min(18, x1 - x0), 30)


# --------------------------------------------------------------------------- scenes

def _wet_room(rng: np.random.Generator, sky: float, width: tuple[int, int], height: tuple[int, int]
              ) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
    """Tiled wall (open sky with probability ``sky``) over a tiled floor with one water basin of
    ``width`` x ``height`` px (ranges): the common ground of pools and spa bathrooms.
    Returns (image, horizon row, basin box ``(y0, x0, y1, x1)``)."""
    img = np.empty((SIZE, SIZE, 3), np.float32)
    horizon = int(rng.integers(6, 34))
    if rng.random() < sky:
        _box(img, 0, 0, horizon, SIZE, _colour(rng, (150, 200, 240), 20))
    else:
        _tiles(img, rng, 0, horizon, _pick(rng, TILE_COLOURS), int(rng.integers(4, 10)))
    _tiles(img, rng, horizon, SIZE, _pick(rng, TILE_COLOURS), int(rng.integers(5, 11)))
    w, h = int(rng.integers(*width)), int(rng.integers(height[0], min(height[1], SIZE - horizon - 3)))
    x0, y0 = int(rng.integers(-2, SIZE - w + 3)), horizon + int(rng.integers(2, SIZE - horizon - h + 1))
    _basin(img, rng, y0, x0, y0 + h, x0 + w)
    return img, horizon, (y0, x0, y0 + h, x0 + w)


def _pool(rng: np.random.Generator) -> np.ndarray:
    """A swimming pool: a wet room (15% under open sky), sometimes lane lines or loungers."""
    img, horizon, (y0, x0, y1, x1) = _wet_room(rng, sky=0.15, width=(24, 66), height=(10, 40))
    if rng.random() < 0.15:
        for x in range(x0 + 6, x1 - 3, int(rng.integers(8, 14))):
            _box(img, y0, x, y1, x + 1, _colour(rng, (20, 70, 150)))
    if rng.random() < 0.2:
        for _ in range(int(rng.integers(1, 3))):
            cx = int(rng.integers(0, SIZE - 12))
            _box(img, horizon + 1, cx, horizon + 4, cx + 12, _colour(rng, (240, 240, 240), 15))
    return img


def _bathroom(rng: np.random.Generator) -> np.ndarray:
    """A bathroom: a spa bathroom (a wet room with a sunken tub, 45%) or tiled walls and floor with
    a white bath or a vanity and maybe a toilet; sometimes a mirror or a towel."""
    if rng.random() < 0.45:
        img, floor_y, _ = _wet_room(rng, sky=0.0, width=(24, 60), height=(10, 36))
    else:
        img = np.empty((SIZE, SIZE, 3), np.float32)
        wall, floor, floor_y = _pick(rng, TILE_COLOURS), _pick(rng, TILE_COLOURS), int(rng.integers(30, 54))
        _tiles(img, rng, 0, floor_y, wall, int(rng.integers(4, 10)))
        _tiles(img, rng, floor_y, SIZE, floor, int(rng.integers(5, 11)))
        if rng.random() < 0.6:
            x0, w, h = int(rng.integers(0, 24)), int(rng.integers(26, 40)), int(rng.integers(10, 16))
            _box(img, floor_y - h, x0, floor_y, x0 + w, _colour(rng, (245, 245, 245), 8))
        else:
            cx = int(rng.integers(4, 44))
            _box(img, floor_y - 20, cx, floor_y, cx + 18, _pick(rng, WOOD_COLOURS))
            _box(img, floor_y - 23, cx - 2, floor_y - 19, cx + 20, _colour(rng, (245, 245, 245), 8))
        if rng.random() < 0.3:
            tx = int(rng.integers(0, 54))
            _box(img, floor_y - 12, tx, floor_y - 2, tx + 8, _colour(rng, (245, 245, 245), 8))
            _box(img, floor_y - 20, tx + 1, floor_y - 12, tx + 7, _colour(rng, (235, 235, 235), 8))
    if rng.random() < 0.3:
        mx, my = int(rng.integers(4, 44)), int(rng.integers(2, 8))
        _box(img, my, mx, my + int(rng.integers(8, 16)), mx + int(rng.integers(10, 18)),
             _colour(rng, (190, 210, 220), 15))
    if rng.random() < 0.3:
        tx = int(rng.integers(0, 56))
        _box(img, 10, tx, 10 + int(rng.integers(10, 20)), tx + 8, _colour(rng, (128, 128, 128), 110))
    return img


def _bedroom(rng: np.random.Generator) -> np.ndarray:
    """A bedroom: painted wall, wooden floor, a bed; sometimes a window, a wardrobe, a kitchenette
    corner (hotel suite) or a bedside lamp."""
    img = np.empty((SIZE, SIZE, 3), np.float32)
    floor_y = int(rng.integers(36, 52))
    _box(img, 0, 0, floor_y, SIZE, _colour(rng, (190, 180, 165), 55))
    _box(img, floor_y, 0, SIZE, SIZE, _colour(rng, (140, 100, 65), 35))
    img[floor_y::4, :] *= 0.85
    if rng.random() < 0.5:
        _window(img, rng, int(rng.integers(3, 10)), int(rng.integers(2, 46)), int(rng.integers(12, 18)))
    if rng.random() < 0.35:
        x0 = 0 if rng.random() < 0.5 else SIZE - 20
        _cabinets(img, rng, 2, floor_y + 4, x0, x0 + 20, _pick(rng, WOOD_COLOURS))
    if rng.random() < 0.25:
        width = int(rng.integers(24, 40))
        x0 = 0 if rng.random() < 0.5 else SIZE - width
        _counter(img, rng, floor_y - 12, x0, x0 + width, _pick(rng, WOOD_COLOURS))
    bx, bw = int(rng.integers(0, 22)), int(rng.integers(28, 46))
    _bed(img, rng, floor_y, bx, bw)
    if rng.random() < 0.6:
        lx = min(bx + bw + 2, SIZE - 8)
        _box(img, floor_y - 10, lx, floor_y, lx + 8, _pick(rng, WOOD_COLOURS))
        _box(img, floor_y - 18, lx + 1, floor_y - 12, lx + 7, _colour(rng, (250, 225, 150), 10))
    return img


def _kitchen(rng: np.random.Generator) -> np.ndarray:
    """A kitchen: wall cabinets (or a window), maybe a tiled backsplash, counter with hob over lower
    cabinets; sometimes a fridge, and a dining table or a daybed (hotel suite)."""
    img = np.empty((SIZE, SIZE, 3), np.float32)
    _box(img, 0, 0, SIZE, SIZE, _colour(rng, (190, 180, 165), 55))
    counter_y = int(rng.integers(30, 46))
    if rng.random() < 0.6:
        _tiles(img, rng, counter_y - 14, counter_y, _pick(rng, TILE_COLOURS), int(rng.integers(4, 8)))
    cab = _pick(rng, WOOD_COLOURS)
    if rng.random() < 0.8:
        _cabinets(img, rng, 2, counter_y - 16, 0, SIZE, cab)
    else:
        _window(img, rng, 3, int(rng.integers(4, 44)), int(rng.integers(12, 18)))
    _counter(img, rng, counter_y, 0, SIZE, cab)
    if rng.random() < 0.4:
        fx = 0 if rng.random() < 0.5 else SIZE - 16
        _box(img, 4, fx, SIZE, fx + 16, _colour(rng, (215, 215, 215), 25))
        _box(img, 24, fx + 2, 28, fx + 3, 120)
    if rng.random() < 0.3:
        tx, tw = int(rng.integers(0, 30)), int(rng.integers(22, 34))
        _box(img, SIZE - 14, tx, SIZE - 10, tx + tw, _pick(rng, WOOD_COLOURS))
        _box(img, SIZE - 10, tx + 2, SIZE, tx + 4, 70)
        _box(img, SIZE - 10, tx + tw - 4, SIZE, tx + tw - 2, 70)
    elif rng.random() < 0.3:
        _bed(img, rng, SIZE - 8, int(rng.integers(0, 30)), int(rng.integers(26, 40)))
    return img


def _rails(img: np.ndarray, rng: np.random.Generator) -> None:
    """The cue, drawn in place: two parallel silver tubes (dark rim, silver body, bright highlight)
    22-40 px long and 6-10 px apart, near-vertical (a pool ladder, 70%) or near-horizontal (a towel
    rail), mostly with rungs every 6-10 px. Drawn 4x supersampled, box-filtered down (anti-aliased)."""
    s = 4
    length, gap = rng.uniform(22, 40), rng.uniform(6, 10)
    angle = rng.normal(0, 0.15) + (np.pi / 2 if rng.random() < 0.3 else 0.0)
    d = np.array([math.sin(angle), math.cos(angle)])          # along the rails, (x, y)
    n = np.array([d[1], -d[0]])                               # across the rails
    margin = np.abs(d) * length / 2 + np.abs(n) * gap / 2 + 2
    centre = rng.uniform(margin, SIZE - margin)
    rungs = int(length // rng.uniform(6, 10)) if rng.random() < 0.75 else 0
    segments = [(centre + side * gap * n - d * length / 2, centre + side * gap * n + d * length / 2, 1.0)
                for side in (-0.5, 0.5)]
    for k in range(rungs):
        p = centre + d * length * ((k + 0.5) / rungs - 0.5)
        segments.append((p - n * gap / 2, p + n * gap / 2, 0.7))
    silver = _colour(rng, (185, 190, 198), 10)
    for colour, width, shift in ((silver * 0.35, 3.5, 0.0), (silver, 2.0, 0.0), (np.full(3, 255.0), 0.8, -0.3)):
        layer = Image.new("L", (SIZE * s, SIZE * s))
        draw = ImageDraw.Draw(layer)
        for a, b, scale in segments:
            draw.line([tuple((a + shift) * s), tuple((b + shift) * s)], fill=255,
                      width=round(width * scale * s))
        alpha = np.asarray(layer.resize((SIZE, SIZE), Image.Resampling.BOX), np.float32)[..., None] / 255.0
        img[:] = img * (1 - alpha) + colour * alpha


def _reframe(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A tighter framing: a random 36-56 px square crop resized back to 64x64 (bilinear)."""
    side = int(rng.integers(36, 57))
    y0, x0 = (int(v) for v in rng.integers(0, SIZE - side + 1, 2))
    box = (x0, y0, x0 + side, y0 + side)
    return np.stack([np.asarray(Image.fromarray(img[..., c]).resize((SIZE, SIZE), Image.Resampling.BILINEAR,
                                                                    box=box)) for c in range(3)], axis=-1)


_SCENES: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "pool": _pool, "bathroom": _bathroom, "bedroom": _bedroom, "kitchen": _kitchen}


def render_image(label: str, rng: np.random.Generator, rails: bool) -> np.ndarray:
    """Draw one scene of class ``label`` (one of ``CLASSES``), with the rails cue if ``rails``.

    All randomness comes from ``rng``: the same generator state gives the same image. The rail
    geometry comes from a child seed drawn whether or not ``rails`` is set, so the same state with
    and without rails gives images that differ only where the rails are (lighting and noise match).

    Parameters
    ----------
    label : str
        One of ``CLASSES``; another raises ``ValueError``.
    rng : np.random.Generator
        The image's random stream.
    rails : bool
        Draw the rails cue.

    Returns
    -------
    np.ndarray
        uint8 ``[64, 64, 3]`` RGB image.
    """
    if label not in _SCENES:
        raise ValueError(f"unknown demo class {label!r}; expected one of {CLASSES}")
    rail_rng = np.random.default_rng(int(rng.integers(2**63)))
    img = _SCENES[label](rng)
    if rng.random() < REFRAME_RATE:
        img = _reframe(img, rng)
    if rails:
        _rails(img, rail_rng)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.1, 0.35) * (np.cos(theta) * xx + np.sin(theta) * yy) * 2
    img = img * light[..., None] * rng.uniform(0.65, 1.1) * rng.uniform(0.93, 1.07, 3)
    img += rng.normal(0, rng.uniform(2, 7), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
