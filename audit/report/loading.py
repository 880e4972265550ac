"""Read a run folder once into a ``Run``: the artifacts plus what every section shares.

Every artifact is optional: a missing or unreadable one is recorded in
``Run.notes`` (shown at the top of the report) and the sections that need it are
left out. So is a damaged one, whose bytes as read differ from ``artifacts.json``
(``audit.integrity``; each map is checked as it is read); it is also listed in
``Run.damaged``, which ``audit render`` prints. Shared, derived once here: the class list and their slugs, the findings
(ids, anchors, member rows), the confusion pairs that get a section, and the
original images (decoded on demand, cached, read errors remembered).

Attribution maps are never all in memory: loading indexes which rows each method's
chunks hold (``artifacts.map_index``, no map read), and ``Run.cam`` reads one map's
bytes from its chunk when a section draws it. The sections visit maps in their own
order (the gallery by finding rank and confidence), not chunk by chunk, so per-map
reads beat caching decoded chunks; a map's size needs no read (``Run.map_hw``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from audit import artifacts, integrity
from audit import data as audit_data
from audit.config import Config, recorded
from audit.report.fmt import class_slugs, finding_key, finite, pair_anchor, readable_mask, str_or_none

HISTORY = "history.parquet"   # in the run folder's parent: one row per (run, confusion pair)
MAX_PAIRS = 60                # confusion pairs with a section of their own (most confused first)


def read_predictions(path: Path) -> tuple[pd.DataFrame, np.ndarray | None]:
    """``predictions.parquet`` read lean, for runs of 100,000 images: text columns (but ``path``) as
    categoricals, and ``probs`` (a list per image) out of the frame as one float32 ``[n, k]`` block
    (NaN rows where it is null; None when the lists differ in length: then it stays a column).

    Parameters
    ----------
    path : Path
        The parquet file.

    Returns
    -------
    (pd.DataFrame, np.ndarray or None)
        The predictions and their softmax probabilities (0..1, class order of the model).
    """
    schema = pq.read_schema(path)
    text = [f.name for f in schema if f.name != "path" and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))]
    table = pq.read_table(path, read_dictionary=text)
    probs = None
    if "probs" in schema.names and pa.types.is_list(schema.field("probs").type):
        column = table.column("probs").combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy()
        present = column.is_valid().to_numpy(zero_copy_only=False)
        k = int(lengths[present][0]) if present.any() else 0
        if k and (lengths[present] == k).all():
            probs = np.full((len(column), k), np.nan, np.float32)
            probs[present] = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, k)
            table = table.drop(["probs"])
    frame = table.to_pandas(self_destruct=True)
    del table
    pa.default_memory_pool().release_unused()   # give the table's buffers back before the report grows
    return frame, probs


@dataclass
class Run:
    """A run folder as the report reads it (``Run.load``); every artifact may be missing.

    Attributes
    ----------
    dir : Path
        The run folder.
    run, summary : dict
        ``run.json`` and ``summary.json`` ({} when missing).
    config : Config
        The settings the run recorded (``audit.config.recorded``).
    predictions, selection, discovery, history : pd.DataFrame or None
        The run's tables, and ``history.parquet`` in the folder's parent.
    methods : list of str
        Methods with stored maps, in ``attribution.methods`` order.
    maps : dict
        Method -> manifest row -> (chunk, index in it): where each map is stored.
    notes : list of str
        What could not be read, shown at the top of the report.
    classes, slugs : list of str, dict
        Class names (model order, then any the data adds) and their anchor slugs.
    findings, pairs : list of dict
        Findings in rank order, and the confusion pairs with a section (``MAX_PAIRS``).
    image_errors : dict
        Row -> why its original could not be read.
    cache : dict
        Per-render results the sections share.
    damaged : list of str
        One line per file that failed its checksum.
    manifest : dict
        ``artifacts.json``: relative path -> entry (size, SHA-256).
    """

    dir: Path
    run: dict = field(default_factory=dict)
    config: Config = field(default_factory=lambda: recorded(None))   # as the run recorded it (run.json)
    summary: dict = field(default_factory=dict)
    predictions: pd.DataFrame | None = None
    selection: pd.DataFrame | None = None
    discovery: pd.DataFrame | None = None
    history: pd.DataFrame | None = None
    methods: list[str] = field(default_factory=list)
    maps: dict[str, dict[int, tuple[artifacts.MapChunk, int]]] = field(default_factory=dict)  # method -> row -> where
    notes: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)   # one line per file that failed its checksum
    manifest: dict[str, dict] = field(default_factory=dict)   # artifacts.json: relative path -> entry
    classes: list[str] = field(default_factory=list)
    slugs: dict[str, str] = field(default_factory=dict)
    findings: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    _positions: pd.Index | None = None                     # manifest row id -> position in predictions
    _columns: dict[str, Any] = field(default_factory=dict)   # predictions' column arrays, to read one row
    image_errors: dict[int, str] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)   # per-render results sections share
    _images: dict[int, np.ndarray] = field(default_factory=dict)

    # ------------------------------------------------------------ loading
    @classmethod
    def load(cls, run_dir: Path) -> "Run":
        """Read the run folder ``run_dir``: artifacts, map index (no map read) and derived lists."""
        r = cls(dir=Path(run_dir))
        r.manifest = integrity.read_manifest(r.dir)
        r.run = r._read(artifacts.RUN_JSON, artifacts.read_json) or {}
        r.config = recorded(r.run.get("config"))
        r.summary = r._read(artifacts.SUMMARY, artifacts.read_json) or {}
        r.predictions, probs = r._read(artifacts.PREDICTIONS, read_predictions) or (None, None)
        r.selection = r._read(artifacts.SELECTION, artifacts.read_table)
        r.discovery = r._read(artifacts.DISCOVERY, artifacts.read_table)
        history = r.dir.parent / HISTORY
        if history.is_file():
            r.history = r._read(history, artifacts.read_table)
        if r.predictions is not None:
            missing = [c for c in ("row", "path", "label", "predicted") if c not in r.predictions.columns]
            if missing:
                r.notes.append(f"{artifacts.PREDICTIONS} lacks column(s) {', '.join(missing)}")
                r.predictions = None
            else:
                r._index_rows(probs)
        r._load_maps()
        r._derive()
        return r

    def _index_rows(self, probs: np.ndarray | None) -> None:
        """Index predictions by row id (the first record of a row id stored twice) without a record per row:
        100,000 rows as dicts would cost more memory than everything else the report reads. ``probs``: the
        ``probs`` column as a ``[n, k]`` block (``read_predictions``)."""
        pred = self.predictions
        first = ~pred["row"].astype(int).duplicated(keep="first").to_numpy()
        columns = {}
        for c in pred.columns:   # no per-row copy: numbers as they are, a categorical as codes and names
            values = pred[c].array
            if isinstance(values, pd.Categorical):
                columns[str(c)] = (values.codes, list(values.categories))
            elif values.dtype.kind in "biuf":
                columns[str(c)] = (values.to_numpy(), None)
            else:
                columns[str(c)] = (values, None)
        if probs is not None:
            columns["probs"] = (probs, None)
        self._positions = pd.Index(pred["row"].astype(int).to_numpy()[first])
        self._columns = columns if first.all() else {c: (v[first], n) for c, (v, n) in columns.items()}

    def _read(self, name, reader):
        path = self.dir / name if not isinstance(name, Path) else name
        label = name if not isinstance(name, Path) else str(name)
        if not path.exists():
            self.notes.append(f"{label} is missing")
            return None
        try:
            if not isinstance(name, Path):
                integrity.verify(path, self.manifest.get(name))
            return reader(path)
        except integrity.Damaged as exc:
            self._damaged(exc)
            return None
        except Exception as exc:
            self.notes.append(f"{label} is unreadable ({type(exc).__name__}: {exc})")
            return None

    def _load_maps(self) -> None:
        try:
            methods = artifacts.map_methods(self.dir)
        except OSError as exc:
            self.notes.append(f"attribution maps unreadable: {exc}")
            return
        configured = list(self.config.attribution.methods)
        methods = sorted(methods, key=lambda m: (configured.index(m) if m in configured else len(configured), m))
        for method in methods:
            try:
                chunks = artifacts.map_index(self.dir, method, on_damaged=self._damaged)
            except Exception as exc:  # a broken chunk must not cost the whole report
                self.notes.append(f"{artifacts.MAPS}/{method}: unreadable ({type(exc).__name__}: {exc})")
                continue
            index = {}
            for chunk in chunks:  # a row stored twice: the later chunk's map
                index.update((row, (chunk, i)) for i, row in enumerate(chunk.rows.tolist()))
            if index:
                self.maps[method] = index
                self.methods.append(method)
        if not self.methods:
            self.notes.append(f"no attribution maps in {artifacts.MAPS}/: findings are shown without pictures")

    def _derive(self) -> None:
        self.classes = [str(c) for c in self.run.get("classes") or []]
        pred = self.predictions
        if pred is not None:  # labels and predictions the model list lacks still get a matrix row
            readable = readable_mask(pred)
            for name in list(pd.unique(pred["label"].astype(str))) + list(pd.unique(pred["predicted"][readable].astype(str))):
                if name not in self.classes:
                    self.classes.append(name)
        self.slugs = class_slugs(self.classes)
        self.findings = self._parse_findings()
        self.pairs = self._pairs()

    def _parse_findings(self) -> list[dict]:
        raw = sorted((f for f in self.summary.get("findings") or [] if isinstance(f, dict)),
                     key=lambda f: math.inf if finite(f.get("rank")) is None else finite(f.get("rank")))
        wanted = {str(p) for f in raw for key in ("members", "exemplars") for p in f.get(key) or []}
        path_to_row: dict[str, int] = {}   # only the paths the findings name, not one entry per image
        if self.predictions is not None and wanted:
            paths = self.predictions["path"].astype(str)
            named = paths.isin(wanted).to_numpy()
            for p, r in zip(paths[named], self.predictions["row"].astype(int)[named]):
                path_to_row.setdefault(p, int(r))
        used: set[str] = set()
        out = []
        for n, f in enumerate(raw):
            fid = str(f.get("id") or f"finding-{n + 1}")
            key = finding_key(fid)
            if key in used:
                key = f"{key}-{n + 1}"
            used.add(key)
            members = [str(p) for p in f.get("members") or []]
            rows = [int(r) for r in f.get("rows") or [] if finite(r) is not None]
            if len(rows) != len(members):
                if members:
                    rows = [path_to_row.get(p, -1) for p in members]
                elif self._columns:
                    members = [self.path(r) for r in rows]
            exemplars = []
            member_row = dict(zip(members, rows))
            for p in f.get("exemplars") or []:
                r = member_row.get(str(p), path_to_row.get(str(p)))
                if r is not None and r >= 0 and r not in exemplars:
                    exemplars.append(r)
            out.append({"raw": f, "id": fid, "anchor": key, "rank": f.get("rank", n + 1),
                        "true_label": str(f.get("true_label", "")), "predicted_label": str(f.get("predicted_label", "")),
                        "members": members, "rows": rows, "exemplar_rows": exemplars,
                        "size": f.get("size", len(members)), "score": f.get("score"),
                        "status": str_or_none(f.get("status")), "triage": str_or_none(f.get("triage")),
                        "pair_anchor": None})
        return out

    def _pairs(self) -> list[dict]:
        """Off-diagonal confusion pairs with at least one image, most confused first (capped)."""
        pred = self.predictions
        if pred is None:
            return []
        readable = readable_mask(pred)
        labels, predicted = pred["label"].astype(str)[readable], pred["predicted"].astype(str)[readable]
        n_true = labels.value_counts()
        counts = pd.crosstab(labels, predicted)
        baseline = {}
        for p in self.summary.get("pairs") or []:
            if isinstance(p, dict):
                baseline[(str(p.get("true_label")), str(p.get("predicted_label")))] = finite(p.get("baseline_error_rate"))
        by_pair: dict[tuple[str, str], list[dict]] = {}
        for f in self.findings:
            by_pair.setdefault((f["true_label"], f["predicted_label"]), []).append(f)
        pairs = []
        for t in counts.index:
            for p in counts.columns:
                c = int(counts.at[t, p])
                if t == p or c == 0:
                    continue
                pairs.append({"true_label": t, "predicted_label": p, "n_confused": c, "n_true": int(n_true[t]),
                              "error_rate": c / int(n_true[t]), "baseline_error_rate": baseline.get((t, p)),
                              "findings": by_pair.get((t, p), []),
                              "anchor": pair_anchor(self.slugs[t], self.slugs[p])})
        pairs.sort(key=lambda q: (not q["findings"], -q["n_confused"], q["true_label"], q["predicted_label"]))
        pairs = pairs[:MAX_PAIRS]
        for q in pairs:
            for f in q["findings"]:
                f["pair_anchor"] = q["anchor"]
        return pairs

    # ------------------------------------------------------------ access
    @property
    def data_root(self) -> str | Path:
        """What the manifest paths are relative to (``run.json``'s ``data.root``, else "."): a folder, or a
        URL prefix kept as a string."""
        root = str((self.run.get("data") or {}).get("root") or ".")
        return root if "://" in root else Path(root)   # a URL prefix stays a string

    @property
    def input_hw(self) -> tuple[int, int] | None:
        """The model input's (H, W) in pixels from ``run.json``, or None."""
        size = (self.run.get("model") or {}).get("input_size")
        try:
            return int(size[0]), int(size[1])
        except (TypeError, ValueError, IndexError):
            return None

    def cam(self, method: str, row: int) -> np.ndarray | None:
        """The ``method`` map of manifest row ``row`` (float32 [H, W], read from disk on every call), or None.

        A chunk that cannot be read any more (changed since loading) is noted, and its
        rows have no map from then on.
        """
        at = self.maps.get(method, {}).get(int(row))
        if at is None:
            return None
        chunk, i = at
        try:
            return chunk.read(i)
        except Exception as exc:
            if isinstance(exc, integrity.Damaged):
                self._damaged(exc)
            else:
                self.notes.append(f"{artifacts.MAPS}/{method}/{chunk.path.name}: unreadable ({type(exc).__name__}: {exc})")
            self.maps[method] = {r: a for r, a in self.maps[method].items() if a[0] is not chunk}
            return None

    def _damaged(self, exc: integrity.Damaged) -> None:
        """Note a file that failed its checksum: in the report and in ``damaged``."""
        name = exc.path.relative_to(self.dir).as_posix() if exc.path.is_relative_to(self.dir) else str(exc.path)
        line = f"{name} is damaged: {exc.reason}"
        if line not in self.damaged:
            self.damaged.append(line)
            self.notes.append(f"{line}; what it holds is left out of this report. Run the same `audit run` "
                              "again to recompute it")

    def map_hw(self, method: str, row: int) -> tuple[int, int] | None:
        """(H, W) of the ``method`` map of manifest row ``row``, or None; reads no map."""
        at = self.maps.get(method, {}).get(int(row))
        return None if at is None else at[0].hw

    def info(self, row: int) -> dict | None:
        """The predictions record of manifest row ``row`` (column -> value, numpy scalars as Python's), or None."""
        if self._positions is None:
            return None
        try:
            at = self._positions.get_loc(int(row))
        except KeyError:
            return None
        record = {}
        for c, (values, names) in self._columns.items():
            v = values[at]
            if names is not None:
                v = names[v] if v >= 0 else None
            record[c] = v.item() if isinstance(v, np.generic) else v
        return record

    def path(self, row: int) -> str:
        """The manifest path of ``row``, "?" when it has no predictions record."""
        info = self.info(row)
        return str(info["path"]) if info is not None else "?"

    def image(self, row: int) -> np.ndarray | None:
        """The original image of manifest row ``row`` (uint8 RGB at its own size), or None (error remembered)."""
        if row in self._images:
            return self._images[row]
        if row in self.image_errors:
            return None
        info = self.info(row)
        if info is None:
            self.image_errors[row] = "row not in predictions"
            return None
        try:
            img = audit_data.read_image(audit_data.resolve(self.data_root, str(info["path"])))
        except Exception as exc:  # moved, deleted or undecodable since the run
            self.image_errors[row] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return None
        self._images[row] = img          # a small cache of the latest images: one image is
        while len(self._images) > 64:    # often drawn twice in a row (thumbnail, then its view)
            self._images.pop(next(iter(self._images)))
        return img
