"""Which path strings are URLs (read through fsspec) rather than local files."""
from __future__ import annotations

URL_SCHEMES = ("s3://", "gs://", "gcs://", "http://", "https://", "file://", "memory://")


def is_url(path: object) -> bool:
    """Whether ``path`` is a URL of a scheme cnn-audit reads through fsspec (never made relative)."""
    return isinstance(path, str) and path.lower().startswith(URL_SCHEMES)
