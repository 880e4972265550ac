"""Nightly operation: baseline matching, triage, history and ``audit compare``.

None of this imports TensorFlow: it reads run folders (``summary.json``,
``predictions.parquet``) and the triage file, and writes ``summary.json``,
``discovery.parquet`` and the history.

Baseline matching
-----------------
Finding IDs are derived from content (``audit.stages.discover.assign_ids``: the
confusion pair and the grid cell of the cue's centre). A run is matched to its
baseline pair by pair: a finding and a baseline finding of the same pair match
when their cues look alike: centres (``cue.x``, ``cue.y``, fractions of the
image) at most ``baseline.tolerance`` apart and focus (``cue.focus``, how
concentrated the members' maps are) within a factor ``2 **
baseline.focus_tolerance``; or when their members overlap by at least
``baseline.min_overlap`` (Jaccard of the manifest paths). Candidate couples are
taken greedily, most alike first (then largest overlap), each finding at most
once. A matched finding is ``persisting`` and takes the baseline's ID, so a
cue keeps its ID over nights even when its centre drifts across a cell border;
an unmatched one is ``new`` (its own ID, with ``-2``, ``-3``, ... should that ID
be taken by a baseline finding); baseline findings left unmatched are
``resolved``. Without a baseline every finding is ``new``.

Triage
------
``triage.yaml`` (``--triage`` / ``triage.path``) acknowledges or suppresses
finding IDs::

    findings:
      F-1a2b3c4d:
        action: acknowledge      # or: suppress
        reason: rails on pool ladders, relabel ticket DATA-123   # optional
        owner: alice             # optional
        expires: 2026-12-31      # optional; the entry is ignored from that day on

An acknowledged finding is ignored by the ``max_new_finding_score`` gate only; a
suppressed one is still listed but ignored by every gate. Bad content stops the
run before any work (exit 2) with one line naming the file and the key.

History
-------
Every run appends one row per confusion pair of its ``pairs`` (see
``audit.stages.gate.pair_rates``) to ``history.parquet`` (``history.path``;
``auto``: in the run folder's parent; null: none), under a file lock: read, drop
the rows of the same run ID or run folder, concatenate, write a temporary file and rename it
over the old one. Earlier rows are never lost; a history that cannot be read is
left alone (with a warning).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import yaml

from audit import artifacts
from audit.errors import UsageError

Log = Callable[[str], None]
TRIAGE_ACTIONS = {"acknowledge": "acknowledged", "suppress": "suppressed"}
TRIAGE_FIELDS = ("action", "reason", "owner", "expires")
HISTORY_COLUMNS = {
    "run_id": "string", "created": "string", "true_label": "string", "predicted_label": "string",
    "n_true": "Int64", "n_confused": "Int64", "error_rate": "float64", "n_findings": "Int64",
    "top_score": "float64", "accuracy": "float64", "status": "string", "run_dir": "string",
}


# ----------------------------------------------------------------------------- run folders

@dataclass
class Run:
    """A finished run folder as the nightly steps need it: its summary and per-pair error rates."""

    run_dir: Path
    summary: dict
    pairs: list[dict] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.summary.get("run_id") or self.run_dir.name)


def read_run(run_dir: str | Path, what: str = "run folder") -> Run:
    """Read a finished run folder; a folder that is not one is a ``UsageError`` naming it."""
    from audit.stages.gate import pair_rates

    run_dir = Path(run_dir)
    path = run_dir / artifacts.SUMMARY
    if not path.is_file():
        raise UsageError(f"{run_dir}: not a finished {what} (no {artifacts.SUMMARY})")
    try:
        summary = artifacts.read_json(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("findings"), list):
        raise UsageError(f"{path}: not a summary.json (no findings list)")
    pairs = summary.get("pairs")
    if not isinstance(pairs, list):
        predictions = run_dir / artifacts.PREDICTIONS
        pairs = pair_rates(artifacts.read_table(predictions)) if predictions.is_file() else []
    return Run(run_dir, summary, [p for p in pairs if isinstance(p, dict)])


def resolve_baseline(config) -> Run | None:
    """The baseline run of ``baseline.run_dir`` (``latest``: the newest other run in the history)."""
    where = config.baseline.run_dir
    if where is None:
        return None
    if where == "latest":
        path = history_path(config)
        runs = read_history(path) if path is not None and path.is_file() else pd.DataFrame()
        here = str(config.run_dir.resolve())
        runs = runs[(runs["run_id"] != config.run_id) & runs["run_dir"].notna() & (runs["run_dir"] != here)
                    ] if len(runs) else runs
        runs = runs[[Path(d).joinpath(artifacts.SUMMARY).is_file() for d in runs["run_dir"]]] if len(runs) else runs
        if not len(runs):
            return None
        where = runs.sort_values(["created", "run_id"]).iloc[-1]["run_dir"]
    if Path(where).resolve() == config.run_dir.resolve():
        raise UsageError(f"--baseline {where}: is the run folder itself; give the previous run's folder")
    return read_run(where, "baseline run folder")


# ----------------------------------------------------------------------------- matching

def _distance(a: dict, b: dict, tolerance: float, focus_tolerance: float) -> float:
    """How unlike two cues are: the larger of centre distance / ``tolerance`` and |log2 focus
    ratio| / ``focus_tolerance`` (alike when at most 1). Without cues: 0 for equal IDs, else inf."""
    ca, cb = a.get("cue") or {}, b.get("cue") or {}
    try:
        centre = math.hypot(float(ca["x"]) - float(cb["x"]), float(ca["y"]) - float(cb["y"]))
        focus = abs(math.log2(max(float(ca["focus"]), 1e-6) / max(float(cb["focus"]), 1e-6)))
    except (KeyError, TypeError, ValueError):
        return 0.0 if a.get("id") == b.get("id") else math.inf
    return max(centre / tolerance if tolerance > 0 else (0.0 if centre == 0 else math.inf),
               focus / focus_tolerance if focus_tolerance > 0 else (0.0 if focus == 0 else math.inf))


def _overlap(a: dict, b: dict) -> float:
    ma, mb = set(map(str, a.get("members") or [])), set(map(str, b.get("members") or []))
    return len(ma & mb) / len(ma | mb) if ma | mb else 0.0


def match(findings: list[dict], baseline: list[dict], tolerance: float, focus_tolerance: float,
          min_overlap: float) -> dict[int, int]:
    """Index of the matched baseline finding for each matched finding (see the module docstring)."""
    couples = []
    for i, f in enumerate(findings):
        for j, b in enumerate(baseline):
            if (f.get("true_label"), f.get("predicted_label")) != (b.get("true_label"), b.get("predicted_label")):
                continue
            distance, overlap = _distance(f, b, tolerance, focus_tolerance), _overlap(f, b)
            if distance <= 1.0 or overlap >= min_overlap:
                couples.append((distance if distance <= 1.0 else math.inf, -overlap, i, j))
    matched: dict[int, int] = {}
    taken: set[int] = set()
    for _, _, i, j in sorted(couples):
        if i not in matched and j not in taken:
            matched[i] = j
            taken.add(j)
    return matched


def apply_baseline(findings: list[dict], baseline: Run | None, tolerance: float, focus_tolerance: float,
                   min_overlap: float) -> list[dict]:
    """Set each finding's ``status`` (and ``id`` / ``baseline`` when matched); return the resolved
    baseline findings (``id, true_label, predicted_label, size, score``). In place."""
    for f in findings:
        f["id"] = (f.get("cue") or {}).get("id") or f["id"]  # its own content ID, before any earlier matching
        f["status"] = "new"
        f.pop("baseline", None)
    if baseline is None:
        return []
    old = [b for b in baseline.summary["findings"] if isinstance(b, dict)]
    matched = match(findings, old, tolerance, focus_tolerance, min_overlap)
    for i, j in matched.items():
        b = old[j]
        findings[i].update(id=b["id"], status="persisting",
                           baseline={"id": b["id"], "rank": b.get("rank"), "size": b.get("size"),
                                     "score": b.get("score")})
    taken = {str(b.get("id")) for b in old} | {findings[i]["id"] for i in matched}
    for i, f in enumerate(findings):
        if i in matched:
            continue
        base, n = f["id"], 1
        while f["id"] in taken:
            n += 1
            f["id"] = f"{base}-{n}"
        taken.add(f["id"])
    used = set(matched.values())
    return [{"id": b.get("id"), "true_label": b.get("true_label"), "predicted_label": b.get("predicted_label"),
             "size": b.get("size"), "score": b.get("score")} for j, b in enumerate(old) if j not in used]


# ----------------------------------------------------------------------------- triage

def read_triage(path: str | Path | None, today: _dt.date | None = None) -> dict[str, dict]:
    """``{finding id: {"status": "acknowledged" | "suppressed", "reason", "owner", "expires"}}`` of the
    triage file's entries in force ``today`` (UTC by default). Bad content: ``UsageError`` naming
    the file and the key."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such triage file")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict) or set(loaded) - {"findings"}:
        extra = sorted(set(loaded) - {"findings"}) if isinstance(loaded, dict) else None
        raise UsageError(f"{path}: unknown key `{extra[0]}` (only `findings`)" if extra
                         else f"{path}: must be a mapping with the key `findings`")
    entries = loaded.get("findings") or {}
    if not isinstance(entries, dict):
        raise UsageError(f"{path}: `findings` must map finding IDs to entries (got {type(entries).__name__})")
    today = today or _dt.datetime.now(_dt.timezone.utc).date()
    out = {}
    for fid, entry in entries.items():
        key = f"findings.{fid}"
        if not isinstance(fid, str) or not fid.startswith("F-"):
            raise UsageError(f"{path}: `{key}` is not a finding ID (IDs look like F-1a2b3c4d)")
        if not isinstance(entry, dict):
            raise UsageError(f"{path}: `{key}` must be a mapping with `action` (acknowledge or suppress)")
        unknown = sorted(set(entry) - set(TRIAGE_FIELDS))
        if unknown:
            raise UsageError(f"{path}: unknown key `{key}.{unknown[0]}` (allowed: {', '.join(TRIAGE_FIELDS)})")
        action = entry.get("action")
        if action not in TRIAGE_ACTIONS:
            raise UsageError(f"{path}: `{key}.action` must be acknowledge or suppress (got {action!r})")
        for name in ("reason", "owner"):
            if entry.get(name) is not None and not isinstance(entry[name], str):
                raise UsageError(f"{path}: `{key}.{name}` must be text (got {entry[name]!r})")
        expires = entry.get("expires")
        if expires is not None:
            try:
                expires = expires if isinstance(expires, _dt.date) else _dt.date.fromisoformat(str(expires))
            except ValueError:
                raise UsageError(f"{path}: `{key}.expires` must be a date YYYY-MM-DD (got {expires!r})") from None
            if isinstance(expires, _dt.datetime):
                expires = expires.date()
            if expires <= today:
                continue
        out[fid] = {"status": TRIAGE_ACTIONS[action], "reason": entry.get("reason"), "owner": entry.get("owner"),
                    "expires": expires.isoformat() if expires is not None else None}
    return out


def apply_triage(findings: list[dict], triage: dict[str, dict]) -> None:
    """Set each finding's ``triage`` (``acknowledged``, ``suppressed`` or None) and ``triage_note``."""
    for f in findings:
        entry = triage.get(f["id"])
        f["triage"] = entry["status"] if entry else None
        if entry:
            f["triage_note"] = {k: entry[k] for k in ("reason", "owner", "expires")}
        else:
            f.pop("triage_note", None)


# ----------------------------------------------------------------------------- finishing a run

@dataclass
class Inputs:
    """What the nightly steps need, read and checked before any work."""

    baseline: Run | None
    triage: dict[str, dict]


def prepare(config) -> Inputs:
    """Read and check the baseline and the triage file (``UsageError`` before any work)."""
    return Inputs(baseline=resolve_baseline(config), triage=read_triage(config.triage.path))


def finish(config, inputs: Inputs, predictions: pd.DataFrame, selection: pd.DataFrame, table: pd.DataFrame,
           findings: list[dict], created: str, log: Log, extend: Callable[[dict], dict] | None = None) -> dict:
    """Match the findings to the baseline, apply triage, gate, write ``discovery.parquet`` and
    ``summary.json`` (after ``extend(summary)``, which adds other stages' figures such as
    trust), append the history; return the summary."""
    from audit.stages.discover import assign_findings
    from audit.stages.gate import summarize

    run_dir = config.run_dir
    resolved = apply_baseline(findings, inputs.baseline, config.baseline.tolerance,
                              config.baseline.focus_tolerance, config.baseline.min_overlap)
    apply_triage(findings, inputs.triage)
    summary = summarize(config, predictions, selection, findings, inputs.baseline, resolved)
    if extend is not None:
        summary = extend(summary)
    artifacts.write_table(run_dir / artifacts.DISCOVERY, assign_findings(table, findings))
    artifacts.write_json(run_dir / artifacts.SUMMARY, summary)
    if inputs.baseline is not None:
        n_new = sum(f["status"] == "new" for f in findings)
        log(f"  against baseline {inputs.baseline.run_id}: {n_new} new, {len(findings) - n_new} persisting, "
            f"{len(resolved)} resolved finding(s)")
    path = history_path(config)
    if path is not None:
        try:
            append_history(path, history_rows(summary, created, run_dir))
        except HistoryError as exc:
            log(f"warning: {exc}")
    return summary


# ----------------------------------------------------------------------------- history

class HistoryError(Exception):
    """The history file cannot be read: it is left as it is."""


def history_path(config) -> Path | None:
    where = config.history.path
    if where is None:
        return None
    return config.run_dir.resolve().parent / "history.parquet" if where == "auto" else Path(where)


def history_rows(summary: dict, created: str, run_dir: Path | None = None) -> pd.DataFrame:
    """One row per confusion pair of ``summary["pairs"]`` (one row with empty labels when there is none)."""
    accuracy = (summary.get("metrics") or {}).get("accuracy")
    rows = []
    for p in summary.get("pairs") or [None]:
        pair = (p["true_label"], p["predicted_label"]) if p else (None, None)
        scores = [f["score"] for f in summary["findings"] if (f["true_label"], f["predicted_label"]) == pair]
        rows.append({"run_id": summary["run_id"], "created": created, "true_label": pair[0],
                     "predicted_label": pair[1], "n_true": p["n_true"] if p else None,
                     "n_confused": p["n_confused"] if p else None, "error_rate": p["error_rate"] if p else None,
                     "n_findings": len(scores), "top_score": max(scores) if scores else None,
                     "accuracy": accuracy, "status": summary.get("status"),
                     "run_dir": str(Path(run_dir).resolve()) if run_dir is not None else None})
    return _typed(pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for column, dtype in HISTORY_COLUMNS.items():
        if column not in frame:
            frame[column] = None
        frame[column] = frame[column].astype(dtype)
    return frame[list(HISTORY_COLUMNS)]


def read_history(path: Path) -> pd.DataFrame:
    """The history table (columns ``HISTORY_COLUMNS``); ``HistoryError`` if it cannot be read."""
    try:
        return _typed(pd.read_parquet(path))
    except Exception as exc:  # any parquet/arrow failure: the file is not ours to overwrite
        raise HistoryError(f"{path}: cannot read the history ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); not appended") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_history(path: Path, rows: pd.DataFrame) -> None:
    """Append ``rows`` to the history at ``path``, replacing earlier rows of the same run IDs or
    run folders (a folder holds one run; under a lock; atomic replace)."""
    path = Path(path)
    with _locked(path):
        old = read_history(path) if path.exists() else None
        if old is not None:
            same = old["run_id"].isin(set(rows["run_id"].dropna())) | old["run_dir"].isin(set(rows["run_dir"].dropna()))
            old = old[~same.fillna(False).astype(bool)]
        frame = rows if old is None or not len(old) else pd.concat([old, _typed(rows.copy())], ignore_index=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        frame.to_parquet(tmp, index=False)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        tmp.replace(path)


# ----------------------------------------------------------------------------- compare

def compare(run_a: str | Path, run_b: str | Path, tolerance: float = 0.15, focus_tolerance: float = 0.5,
            min_overlap: float = 0.5) -> dict:
    """The diff of two run folders: findings new / persisting / resolved, gates, metrics, pairs."""
    a, b = read_run(run_a), read_run(run_b)
    old = [f for f in a.summary["findings"] if isinstance(f, dict)]
    new = [f for f in b.summary["findings"] if isinstance(f, dict)]
    matched = match(new, old, tolerance, focus_tolerance, min_overlap)
    used = set(matched.values())

    def brief(f: dict) -> dict:
        return {"id": f.get("id"), "true_label": f.get("true_label"), "predicted_label": f.get("predicted_label"),
                "size": f.get("size"), "score": f.get("score"), "triage": f.get("triage")}

    persisting = []
    for i, j in sorted(matched.items()):
        f, g = new[i], old[j]
        persisting.append({**brief(f), "id_a": g.get("id"), "size_a": g.get("size"), "score_a": g.get("score"),
                           "size_change": _delta(f.get("size"), g.get("size")),
                           "score_change": _delta(f.get("score"), g.get("score"))})
    metrics = {}
    ma, mb = a.summary.get("metrics") or {}, b.summary.get("metrics") or {}
    for key in sorted(set(ma) | set(mb)):
        metrics[key] = {"a": ma.get(key), "b": mb.get(key), "change": _delta(mb.get(key), ma.get(key))}
    rates_a = {(p["true_label"], p["predicted_label"]): p for p in a.pairs}
    rates_b = {(p["true_label"], p["predicted_label"]): p for p in b.pairs}
    pairs = []
    for key in sorted(set(rates_a) | set(rates_b)):
        ra = (rates_a.get(key) or {}).get("error_rate")
        rb = (rates_b.get(key) or {}).get("error_rate")
        ra = 0.0 if ra is None and key in rates_b else ra
        rb = 0.0 if rb is None and key in rates_a else rb
        pairs.append({"true_label": key[0], "predicted_label": key[1], "error_rate_a": ra, "error_rate_b": rb,
                      "change": _delta(rb, ra)})
    pairs.sort(key=lambda p: -abs(p["change"] or 0.0))
    return {
        "a": {"run_id": a.run_id, "run_dir": str(a.run_dir), "status": a.summary.get("status")},
        "b": {"run_id": b.run_id, "run_dir": str(b.run_dir), "status": b.summary.get("status")},
        "findings": {
            "new": [brief(f) for i, f in enumerate(new) if i not in matched],
            "persisting": persisting,
            "resolved": [brief(g) for j, g in enumerate(old) if j not in used],
        },
        "gates": {"a": a.summary.get("gates") or [], "b": b.summary.get("gates") or []},
        "metrics": metrics,
        "pairs": pairs,
    }


def _delta(b: Any, a: Any) -> float | None:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return None
    return round(float(b) - float(a), 6)


def compare_markdown(diff: dict) -> str:
    """The diff as markdown (also what ``audit compare`` prints)."""
    a, b = diff["a"], diff["b"]
    lines = [f"# Compare {a['run_id']} -> {b['run_id']}", "",
             f"status: {a['status']} -> {b['status']}  ", f"A: {a['run_dir']}  ", f"B: {b['run_dir']}", "",
             "## Findings", ""]
    groups = diff["findings"]
    if not any(groups.values()):
        lines.append("no findings in either run")
    for f in groups["new"]:
        lines.append(f"- new {f['id']}: {f['true_label']} -> {f['predicted_label']}, {f['size']} images, "
                     f"score {_num(f['score'])}" + (f" ({f['triage']})" if f.get("triage") else ""))
    for f in groups["persisting"]:
        renamed = f" (was {f['id_a']})" if f["id_a"] != f["id"] else ""
        lines.append(f"- persisting {f['id']}{renamed}: {f['true_label']} -> {f['predicted_label']}, "
                     f"size {f['size_a']} -> {f['size']}, score {_num(f['score_a'])} -> {_num(f['score'])}")
    for f in groups["resolved"]:
        lines.append(f"- resolved {f['id']}: {f['true_label']} -> {f['predicted_label']}, was {f['size']} images, "
                     f"score {_num(f['score'])}")
    lines += ["", "## Gates", ""]
    gates_a = {g.get("name"): g for g in diff["gates"]["a"]}
    if not diff["gates"]["b"] and not gates_a:
        lines.append("no gates configured")
    for g in diff["gates"]["b"]:
        before = gates_a.get(g.get("name"))
        was = f" (A: {_num(before.get('value'))})" if before else ""
        lines.append(f"- {g.get('name')}: {'pass' if g.get('passed') else 'FAIL'}, {_num(g.get('value'))} "
                     f"vs threshold {_num(g.get('threshold'))}{was}")
    lines += ["", "## Metrics", "", "| metric | A | B | change |", "| --- | --- | --- | --- |"]
    for key, m in diff["metrics"].items():
        lines.append(f"| {key} | {_num(m['a'])} | {_num(m['b'])} | {_signed(m['change'])} |")
    lines += ["", "## Error rate per confusion pair", ""]
    if diff["pairs"]:
        lines += ["| true -> predicted | A | B | change |", "| --- | --- | --- | --- |"]
    else:
        lines.append("no confusions in either run")
    for p in diff["pairs"]:
        lines.append(f"| {p['true_label']} -> {p['predicted_label']} | {_num(p['error_rate_a'])} | "
                     f"{_num(p['error_rate_b'])} | {_signed(p['change'])} |")
    return "\n".join(lines) + "\n"


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.4g}"


def write_compare(diff: dict, out: Path) -> tuple[Path, Path]:
    """Write ``compare.json`` and ``compare.md`` into ``out``; return their paths."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out / "compare.json", out / "compare.md"
        artifacts.write_json(json_path, diff)
        md_path.write_text(compare_markdown(diff))
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write the comparison ({exc.strerror})") from None
    return json_path, md_path
