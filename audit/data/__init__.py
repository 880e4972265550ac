"""Data: manifests (``audit.data.manifest``), records in TFRecord and Parquet files
(``audit.data.records``) and image decoding (``audit.data.decode``).

The names below are the package's interface; the stages import them from here.
"""
from audit.data.decode import grey, load_images, prefetched, preprocess, read_image, read_source, resize
from audit.data.manifest import (IMAGE_EXTENSIONS, RESERVED_COLUMNS, load_classes, load_manifest, resolve,
                                 with_class_names)

__all__ = ["IMAGE_EXTENSIONS", "RESERVED_COLUMNS", "grey", "load_classes", "load_images", "load_manifest",
           "prefetched", "preprocess", "read_image", "read_source", "resize", "resolve", "with_class_names"]
