"""Triage: ``triage.yaml`` acknowledges or suppresses finding IDs.

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
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from pathlib import Path

import yaml

from audit.errors import UsageError
from audit.findings import Finding

TRIAGE_ACTIONS = {"acknowledge": "acknowledged", "suppress": "suppressed"}
TRIAGE_FIELDS = ("action", "reason", "owner", "expires")


def read_triage(path: str | Path | None, today: _dt.date | None = None) -> dict[str, dict]:
    """``{finding id: {"status": "acknowledged" | "suppressed", "reason", "owner", "expires"}}`` of the
    triage file's entries in force ``today`` (UTC by default). Bad content: ``UsageError`` naming
    the file and the key.

    Parameters
    ----------
    path : str or Path or None
        The triage YAML (``triage.path``); None: no triage.
    today : datetime.date, optional
        Entries that expire on or before it are left out.
    """
    return read_triage_entries(path, today)[0]


def read_triage_entries(path: str | Path | None, today: _dt.date | None = None) -> tuple[dict[str, dict], list[dict]]:
    """The entries in force (as ``read_triage``) and the expired ones, each
    ``{"id", "action", "reason", "owner", "expires"}``, so the run can say they no longer apply.

    Parameters
    ----------
    path : str or Path or None
        The triage YAML (``triage.path``); None: no triage.
    today : datetime.date, optional
        Entries that expire on or before it are expired (default: today, UTC).
    """
    if path is None:
        return {}, []
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
    out, expired = {}, []
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
                expired.append({"id": fid, "action": action, "reason": entry.get("reason"),
                                "owner": entry.get("owner"), "expires": expires.isoformat()})
                continue
        out[fid] = {"status": TRIAGE_ACTIONS[action], "reason": entry.get("reason"), "owner": entry.get("owner"),
                    "expires": expires.isoformat() if expires is not None else None}
    return out, expired


def apply_triage(findings: list[Finding], triage: dict[str, dict]) -> list[Finding]:
    """Each of ``findings`` with its ``triage`` (``acknowledged``, ``suppressed`` or None) and ``triage_note``
    from the ``triage`` entries (``read_triage``).

    An entry covers the findings linked to its finding by the same cue (``related`` with ``same_cue``:
    the victims and the strategy of one cue are one decision); their note names the entry's finding
    (``via``). A finding's own entry wins."""
    out = []
    for f in findings:
        entry = triage.get(f.id)
        via = None
        if entry is None:
            via = next((i for i, relation in f.related if relation == "same_cue" and i in triage), None)
            entry = triage.get(via) if via else None
        note = {k: entry[k] for k in ("reason", "owner", "expires")} if entry else None
        if note is not None and via is not None:
            note["via"] = via
        out.append(dataclasses.replace(f, triage=entry["status"] if entry else None, triage_note=note))
    return out
