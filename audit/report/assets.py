"""Pictures of the report, embedded the same way in both layouts: ``Assets.image``.

``Assets.image(name, picture) -> src`` is the one function a section calls to put
a picture on the page. ``picture`` is a uint8 RGB array ``[H, W, 3]`` (encoded as
JPEG: thumbnails, overlays, montages), already encoded PNG/JPEG/WebP bytes (kept
as they are), a PIL RGB image (JPEG, like an array), or a matplotlib ``Figure``
(saved as PNG). The returned string goes
straight into ``<img src="...">``:

* ``single`` layout: a ``data:`` URI, so ``index.html`` is the whole report
  (offline, e-mailable, works in a sandboxed iframe);
* ``folder`` layout: ``assets/<name>.<ext>``, a file written next to ``index.html``
  (for runs too large for one file). A render of 10,000 images writes as many files,
  so they are not written one ``write_atomic`` each (two disk flushes per picture):
  they go into a hidden staged folder (``audit.integrity.StagedFolder``) that
  ``Assets.commit`` flushes once and renames into place as a whole, before
  ``index.html`` is written. Each file's size and SHA-256 land in ``artifacts.json``
  as with any other write; a render that fails or is killed leaves the previous
  ``assets/`` as it was (``Assets.discard`` removes the staged files) and no picture
  under its final name is ever half-written.

``name`` identifies the picture within one render (asking twice for the same name
returns the first src without encoding again). It must never hold class or file
names: use row ids, finding keys and fixed words (``row-12-gradcam``); anything
outside ``[A-Za-z0-9_.-]`` is replaced by a hash.
"""
from __future__ import annotations

import base64
import hashlib
import io
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from audit.integrity import StagedFolder

LAYOUTS = ("single", "folder")
FOLDER = "assets"
JPEG_QUALITY = 82
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")
_MIME = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


class Assets:
    """Hands out ``src`` strings for pictures and counts the bytes they add to the report.

    Parameters
    ----------
    run_dir : Path
        The run folder; the folder layout writes to ``run_dir/assets``.
    layout : str, default "single"
        ``single`` (``data:`` URIs) or ``folder`` (files); another raises ``ValueError``.

    Attributes
    ----------
    bytes, count : int
        Encoded picture bytes (before base64) and pictures handed out so far.

    In the folder layout the pictures are staged until ``commit`` puts ``assets/`` in place;
    call ``discard`` when the render fails (``with Assets(...) as assets:`` does).
    """

    def __init__(self, run_dir: Path, layout: str = "single"):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)} (got {layout!r})")
        self.layout = layout
        self.folder = Path(run_dir) / FOLDER
        self.bytes = 0                       # encoded picture bytes (before base64)
        self.count = 0
        self._src: dict[str, str] = {}
        self._stage: StagedFolder | None = None   # created by the first picture of the folder layout
        self._committed = False

    def __enter__(self) -> "Assets":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def image(self, name: str, picture: Any, quality: int = JPEG_QUALITY) -> str:
        """The ``src`` of ``picture`` (uint8 RGB array, PIL image, encoded bytes or Figure).

        Parameters
        ----------
        name : str
            Identifies the picture within the render (made safe by ``safe_name``); a name
            already given returns its first src.
        picture : np.ndarray, PIL.Image.Image, bytes or Figure
            See the module docstring (``encode``).
        quality : int, default JPEG_QUALITY
            JPEG quality 1..95 of an array.
        """
        name = safe_name(name)
        if name in self._src:
            return self._src[name]
        data, ext = encode(picture, quality)
        self.bytes += len(data)
        self.count += 1
        if self.layout == "single":
            src = f"data:{_MIME[ext]};base64,{base64.b64encode(data).decode('ascii')}"
        else:
            file = f"{name}.{ext}"
            if self._stage is None:
                self._stage = StagedFolder(self.folder)
            self._stage.write(file, data)
            src = f"{FOLDER}/{file}"
        self._src[name] = src
        return src

    def has(self, name: str) -> bool:
        """Whether a picture called ``name`` was handed out in this render."""
        return safe_name(name) in self._src

    def commit(self) -> None:
        """Put the pictures handed out in place, before the page that links them is written: in the folder
        layout the staged folder replaces ``assets/`` (one flush, one rename; an earlier render's files
        go with the old folder); in the single layout nothing."""
        if self.layout == "folder" and not self._committed:
            (self._stage or StagedFolder(self.folder)).commit()
            self._stage, self._committed = None, True

    def prune(self) -> None:
        """Once the single-file page is written: remove an ``assets/`` an earlier folder render left."""
        if self.layout == "single" and self.folder.is_dir():
            shutil.rmtree(self.folder, ignore_errors=True)

    def discard(self) -> None:
        """Remove the staged pictures of a render that did not finish (no-op after ``commit``)."""
        if self._stage is not None:
            self._stage.discard()
            self._stage = None


def safe_name(name: str) -> str:
    """``name`` when it is a safe file name (``[A-Za-z0-9][A-Za-z0-9_.-]{0,100}``), else ``h-`` + a SHA-1 prefix."""
    name = str(name)
    if _SAFE_NAME.fullmatch(name):
        return name
    return "h-" + hashlib.sha1(name.encode("utf-8")).hexdigest()[:16]


def encode(picture: Any, quality: int = JPEG_QUALITY) -> tuple[bytes, str]:
    """(bytes, extension) of a picture: arrays as JPEG, figures as PNG, bytes sniffed.

    Parameters
    ----------
    picture : np.ndarray, PIL.Image.Image, bytes or Figure
        uint8 ``[H, W, 3]`` RGB or an RGB PIL image (JPEG), PNG/JPEG/WebP bytes (kept), or a
        matplotlib ``Figure`` (100 dpi PNG, white background, no software metadata).
    quality : int, default JPEG_QUALITY
        JPEG quality of an array.

    Raises
    ------
    ValueError, TypeError
        For another array shape or dtype, unknown bytes, or another type.
    """
    if isinstance(picture, (bytes, bytearray)):
        data = bytes(picture)
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return data, "png"
        if data.startswith(b"\xff\xd8"):
            return data, "jpg"
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return data, "webp"
        raise ValueError("picture bytes are not PNG, JPEG or WebP")
    if isinstance(picture, Image.Image):
        if picture.mode != "RGB":
            raise ValueError(f"picture image must be RGB (got {picture.mode})")
        buf = io.BytesIO()
        picture.save(buf, format="JPEG", quality=quality, optimize=False)
        return buf.getvalue(), "jpg"
    if isinstance(picture, np.ndarray):
        arr = np.asarray(picture)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"picture array must be uint8 [H, W, 3] (got {arr.dtype} {arr.shape})")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality, optimize=False)
        return buf.getvalue(), "jpg"
    if hasattr(picture, "savefig"):  # a matplotlib Figure
        buf = io.BytesIO()
        picture.savefig(buf, format="png", dpi=100, metadata={"Software": None}, facecolor="white")
        return buf.getvalue(), "png"
    raise TypeError(f"cannot embed a {type(picture).__name__} as a picture")
