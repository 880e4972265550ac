"""Image records inside container files: TFRecord shards and Parquet files of image bytes.

TFRecord, in the common convention of image data sets: each record a
``tf.train.Example`` with the encoded image in ``image/encoded`` (bytes) and the
label in ``image/class/text`` (bytes, the class name) or ``image/class/label``
(int64, a class index in the model's output order). Read without TensorFlow: the
record framing (length, CRC, data, CRC) and the few protobuf messages involved
are parsed here, so the report can show a record's image without TensorFlow.

Parquet, in the Hugging Face datasets export layout: an image column that is a
struct ``{bytes, path}`` or plain binary, and a ``label`` column (a string, or an
int that the file's Hugging Face metadata names as a ``ClassLabel``; otherwise a
class index). Other scalar columns are kept as metadata.

A record is named ``<file>#<index>`` (its position in the file, from 0); that is
the ``path`` of its manifest row and the member string in summary.json.
"""
from __future__ import annotations

import functools
import json
import re
import struct
from pathlib import Path

import pandas as pd

from audit.errors import UsageError

RECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec")
PARQUET_SUFFIXES = (".parquet", ".pq")
_REF = re.compile(r"^(.*\.(?:tfrecords?|tfrec|parquet|pq))#(\d+)$", re.IGNORECASE)


def split_ref(path: str) -> tuple[str, int] | None:
    """``(file, index)`` of a record name ``path`` = ``file#index``; ``None`` for any other path."""
    match = _REF.match(path)
    return (match.group(1), int(match.group(2))) if match else None


# ---------------------------------------------------------------- TFRecord

@functools.lru_cache(maxsize=64)
def _offsets(file: str, mtime_ns: int) -> tuple[tuple[int, int], ...]:
    """``(offset, length)`` of every record's data in a TFRecord file (read once per process)."""
    out = []
    with open(file, "rb") as fh:
        while True:
            head = fh.read(12)
            if not head:
                break
            if len(head) < 12:
                raise ValueError(f"{file}: truncated TFRecord header after {len(out)} record(s)")
            (length,) = struct.unpack("<Q", head[:8])
            out.append((fh.tell(), length))
            fh.seek(length + 4, 1)
    return tuple(out)


def tfrecord_bytes(file: str | Path, index: int) -> bytes:
    """The serialized ``tf.train.Example`` of record ``index`` (0-based) of the TFRecord ``file``."""
    file = str(file)
    offsets = _offsets(file, Path(file).stat().st_mtime_ns)
    if not 0 <= index < len(offsets):
        raise IndexError(f"{file} has {len(offsets)} records, not #{index}")
    offset, length = offsets[index]
    with open(file, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise ValueError(f"{file}#{index}: truncated record")
    return data


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """``(field number, wire type, value)`` of a protobuf message (bytes for length-delimited fields)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"not a tf.train.Example (protobuf wire type {wire})")
        yield number, wire, value


def parse_example(data: bytes) -> dict[str, list]:
    """The features of ``data``, a serialized ``tf.train.Example``: name -> list of bytes or ints (floats
    skipped)."""
    out: dict[str, list] = {}
    for number, _, features in _fields(data):
        if number != 1:
            continue
        for n, _, entry in _fields(features):   # map<string, Feature> entries
            if n != 1:
                continue
            name, values = "", []
            for k, _, part in _fields(entry):
                if k == 1:
                    name = part.decode("utf-8")
                elif k == 2:
                    for kind, _, listed in _fields(part):   # 1 bytes_list, 2 float_list, 3 int64_list
                        if kind == 1:
                            values = [v for f, _, v in _fields(listed) if f == 1]
                        elif kind == 3:
                            values = _int64s(listed)
            out[name] = values
    return out


def _int64s(listed: bytes) -> list[int]:
    values = []
    for f, wire, v in _fields(listed):
        if f != 1:
            continue
        if wire == 2:   # packed
            i = 0
            while i < len(v):
                x, i = _varint(v, i)
                values.append(x - (1 << 64) if x >= 1 << 63 else x)
        else:
            values.append(v - (1 << 64) if v >= 1 << 63 else v)
    return values


def tfrecord_image(file: str | Path, index: int) -> bytes:
    """The ``image/encoded`` bytes of record ``index`` (0-based) of the TFRecord ``file``."""
    encoded = parse_example(tfrecord_bytes(file, index)).get("image/encoded")
    if not encoded:
        raise ValueError(f"{file}#{index}: the record has no image/encoded bytes")
    return encoded[0]


def tfrecord_manifest(files: list[Path], root: Path) -> pd.DataFrame:
    """``path`` (``file#index``, relative to ``root``) and ``label`` of every record of ``files``.

    A record without a label stops the run (``UsageError`` naming it); a record whose
    image bytes are missing is kept and recorded as unreadable when decoded.
    """
    rows = []
    for file in files:
        name = file.relative_to(root).as_posix()
        try:
            count = len(_offsets(str(file), file.stat().st_mtime_ns))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--data {file}: not a readable TFRecord file ({exc})") from None
        for index in range(count):
            try:
                features = parse_example(tfrecord_bytes(file, index))
            except (ValueError, IndexError) as exc:
                raise UsageError(f"--data {file}#{index}: unreadable record ({exc})") from None
            text, number = features.get("image/class/text"), features.get("image/class/label")
            if text:
                label, kind = text[0].decode("utf-8"), "name"
            elif number:
                label, kind = int(number[0]), "index"
            else:
                raise UsageError(f"--data {file}#{index}: the record has neither image/class/text nor "
                                 "image/class/label")
            rows.append({"path": f"{name}#{index}", "label": label, "_kind": kind})
    frame = pd.DataFrame(rows, columns=["path", "label", "_kind"])
    return _indexed(frame.drop(columns="_kind"), set(frame["_kind"]) == {"index"})


# ---------------------------------------------------------------- Parquet of image bytes

def image_column(schema) -> str | None:
    """The column holding image bytes in the Parquet ``schema`` (pyarrow): a ``{bytes, ...}`` struct or a
    binary column; None without one."""
    import pyarrow as pa

    for field in schema:
        t = field.type
        if pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields)):
            return field.name
    for field in schema:
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            return field.name
    return None


@functools.lru_cache(maxsize=8)
def _table(file: str, mtime_ns: int, column: str):
    import pyarrow.parquet as pq

    return pq.read_table(file, columns=[column], memory_map=True).column(column)


def parquet_image(file: str | Path, index: int) -> bytes:
    """The image bytes of row ``index`` (0-based) of ``file``, a Parquet file of images."""
    import pyarrow.parquet as pq

    file = str(file)
    column = image_column(pq.read_schema(file))
    values = _table(file, Path(file).stat().st_mtime_ns, column)
    if not 0 <= index < len(values):
        raise IndexError(f"{file} has {len(values)} rows, not #{index}")
    value = values[index].as_py()
    value = value.get("bytes") if isinstance(value, dict) else value
    if not value:
        raise ValueError(f"{file}#{index}: no image bytes in column {column!r}")
    return value


def parquet_manifest(file: Path, root: Path, column: str) -> pd.DataFrame:
    """``path`` (``file#row``, relative to ``root``), ``label`` and the scalar metadata columns of ``file``, a
    Parquet file of images whose image bytes are in ``column``."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(file)
    if "label" not in schema.names:
        raise UsageError(f"--data {file}: a Parquet file of images (column {column!r}) needs a label column")
    table = pq.read_table(file, columns=[n for n in schema.names if n != column and n != "path"])
    frame = table.to_pandas()
    name = file.relative_to(root).as_posix()
    frame.insert(0, "path", [f"{name}#{i}" for i in range(len(frame))])
    names = _class_label_names(schema)
    if names is not None and pd.api.types.is_integer_dtype(frame["label"]):
        bad = ~frame["label"].between(0, len(names) - 1)
        if bad.any():
            raise UsageError(f"--data {file}#{int(bad.idxmax())}: label {frame['label'][bad].iloc[0]} is not "
                             f"a class of the file's ClassLabel ({len(names)} names)")
        frame["label"] = [names[i] for i in frame["label"]]
        frame.attrs["classes"] = names   # the ClassLabel order is the model's output order
        return frame
    return _indexed(frame, pd.api.types.is_integer_dtype(frame["label"]))


def _class_label_names(schema) -> list[str] | None:
    """The label names the Hugging Face metadata of a Parquet file gives (a ``ClassLabel``), if any."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    try:
        label = json.loads(meta)["info"]["features"]["label"]
    except (ValueError, KeyError, TypeError):
        return None
    names = label.get("names") if isinstance(label, dict) else None
    return [str(n) for n in names] if names else None


def _indexed(frame: pd.DataFrame, by_index: bool) -> pd.DataFrame:
    """Mark a frame whose labels are class indices (resolved against the class list later)."""
    frame.attrs["label_index"] = bool(by_index)
    return frame
