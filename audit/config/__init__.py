"""One frozen configuration object, resolved once: defaults < YAML < ``--set`` < flags.

Every setting is declared once, in ``audit.config.schema`` (default, check, comment).
Code reads it as attributes: ``config.select.margin``. An unknown key or a bad value
stops the run before any work (exit 2) with one line such as
"`select.margin` must be a float in [0, 1] (got 3)"; a near miss gets a suggestion
("unknown key `selct.margin` (did you mean `select.margin`?)").
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import difflib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator

import yaml

from audit.config.checks import Check
from audit.config.schema import PREPROCESS, Settings
from audit.errors import UsageError
from audit.urls import is_url

__all__ = ["Config", "KEYS", "PREPROCESS", "Setting", "defaults", "recorded", "resolve"]


def _freeze(value: Any) -> Any:
    if isinstance(value, (dict, MappingProxyType)):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, (dict, MappingProxyType)):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {f.name: _thaw(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


@dataclass(frozen=True)
class Setting:
    """One key of the schema (``KEYS`` maps each dotted key to one).

    Attributes
    ----------
    key : str
        Dotted name, e.g. ``"select.margin"``.
    default : Any
        Default value, as plain values (lists, dicts).
    check : Check
        The value test and its words for the error line.
    doc : str
        The comment the commented ``pipelines/*.yaml`` carry.
    path : bool
        A relative value in a YAML file is taken relative to that file's folder.
    mapping : bool
        A free-form mapping whose nested keys ``--set`` may address.
    """

    key: str
    default: Any
    check: Check
    doc: str
    path: bool
    mapping: bool


def _settings(cls: type, prefix: str = "") -> Iterator[Setting]:
    for f in dataclasses.fields(cls):
        if f.metadata.get("section"):
            yield from _settings(f.default_factory, f"{prefix}{f.name}.")
        elif "check" in f.metadata:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            yield Setting(f"{prefix}{f.name}", _thaw(default), f.metadata["check"], f.metadata["doc"],
                          f.metadata["path"], f.metadata["mapping"])


KEYS: dict[str, Setting] = {s.key: s for s in _settings(Settings)}
SECTIONS = tuple(f.name for f in dataclasses.fields(Settings) if f.metadata.get("section"))


@dataclass(frozen=True)
class Config(Settings):
    """The resolved settings of a run (``audit.config.schema``), plus ``source``: the YAML file read."""

    source: str | None = None

    def to_dict(self) -> dict:
        """The settings as a nested dict of plain values (lists, dicts), in schema order."""
        return _thaw({f.name: getattr(self, f.name) for f in dataclasses.fields(Settings)})

    @property
    def run_dir(self) -> Path:
        """The run folder (``out``)."""
        return Path(self.out)

    def __reduce__(self):  # picklable for Dask workers (a read-only mapping is not)
        return (from_dict, (self.to_dict(), self.source))


def defaults() -> dict:
    """Every setting's default as a nested dict (``{"select": {"margin": 0.15, ...}, ...}``)."""
    return from_dict({}, None).to_dict()


def from_dict(values: dict, source: str | None = None) -> Config:
    """A ``Config`` from a nested dict of (already checked) values; missing keys take their default.

    Parameters
    ----------
    values : dict
        ``{"select": {"margin": 0.15}, "seed": 0, ...}``; not checked here.
    source : str, optional
        The YAML file the values came from (``Config.source``).
    """
    built = {}
    for f in dataclasses.fields(Settings):
        if f.metadata.get("section"):
            given = values.get(f.name) or {}
            built[f.name] = f.default_factory(**{k: _freeze(v) for k, v in given.items()})
        elif f.name in values:
            built[f.name] = _freeze(values[f.name])
    return Config(**built, source=source)


def recorded(values: dict | None) -> Config:
    """The config a run recorded (``run.json``), read leniently to re-render or compare old runs.

    Parameters
    ----------
    values : dict or None
        The recorded nested settings; keys the schema does not know are ignored, a
        missing or invalid value takes today's default.
    """
    out = defaults()
    for key, setting in KEYS.items():
        try:
            value = _get(values or {}, key)
        except (KeyError, TypeError):
            continue
        if setting.check(value):
            *parents, leaf = key.split(".")
            node = out
            for part in parents:
                node = node[part]
            node[leaf] = value
    return from_dict(out)


def resolve(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = (),
            flags: dict[str, Any] | None = None) -> Config:
    """Build the config: defaults, then the YAML file, then ``--set key=value``, then flags.

    Parameters
    ----------
    path : str or Path, optional
        YAML file; relative paths in it are taken relative to its folder.
    sets : sequence of str
        ``"key=value"`` strings, the value parsed as YAML (a string stays a string
        where the key expects one: ``run_id=2026-12-02``).
    flags : dict, optional
        Dotted key to value; ``None`` values are ignored.

    Returns
    -------
    Config
        Frozen; ``run_id`` defaults to the UTC time ``YYYYmmdd-HHMMSS``, ``out`` to
        ``reports/<run_id>``.

    Raises
    ------
    UsageError
        One line naming the file or key (unknown key, bad value, bad YAML).
    """
    values = copy.deepcopy(defaults())
    source = None
    if path is not None:
        path = Path(path)
        loaded = _read_yaml(path)
        for key, value in _flatten(loaded, where=str(path)):
            setting = KEYS.get(key)
            if setting is not None and setting.path and isinstance(value, str) and value not in ("auto", "latest"):
                value = value if Path(value).is_absolute() or is_url(value) else str(path.parent / value)
            raw = value.isoformat() if isinstance(value, (_dt.date, _dt.datetime)) else None
            _assign(values, key, value, where=str(path), raw=raw)
        source = str(path)
    for item in sets:
        if "=" not in item:
            raise UsageError(f"--set {item}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _assign(values, key.strip(), value, where="--set", raw=raw)
    for key, value in (flags or {}).items():
        if value is not None:
            _assign(values, key, value, where="flag")
    for key, setting in KEYS.items():
        value = _get(values, key)
        if not setting.check(value):
            raise UsageError(f"`{key}` must be {setting.check.describe()} (got {value!r})")
    extra = [m for m in values["trust"]["methods"] or [] if m not in values["attribution"]["methods"]]
    if extra:
        raise UsageError(f"`trust.methods` must be among `attribution.methods` (got {', '.join(extra)})")
    if values["run_id"] is None:
        values["run_id"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    if values["out"] is None:
        values["out"] = str(Path("reports") / values["run_id"])
    return from_dict(values, source)


def _read_yaml(path: Path) -> dict:
    """The mapping in a YAML file; a syntax error names the file, line and column (and a tab)."""
    if not path.is_file():
        raise UsageError(f"{path}: no such config file")
    text = path.read_text()
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        line = text.splitlines()[mark.line] if mark is not None and mark.line < len(text.splitlines()) else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        hint = "; a tab is not allowed in YAML indentation, use spaces" if "\t" in line else ""
        raise UsageError(f"{where}: not valid YAML ({problem}{hint})") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"{path}: the config must be a mapping of keys")
    return loaded


def _flatten(tree: dict, prefix: str = "", where: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if dotted in SECTIONS and not isinstance(value, dict):
            raise UsageError(f"{where}: `{dotted}` must be a mapping of its keys (got {value!r})")
        if isinstance(value, dict) and dotted in SECTIONS:
            yield from _flatten(value, dotted + ".", where)
        else:
            yield dotted, value


def _assign(values: dict, dotted: str, value: Any, where: str, raw: str | None = None) -> None:
    mapping = next((s.key for s in KEYS.values() if s.mapping and dotted.startswith(s.key + ".")), None)
    if mapping is not None:  # e.g. --set attribution.params.occlusion.patch=8
        node = _get(values, mapping)
        *parents, leaf = dotted[len(mapping) + 1:].split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"{where}: `{dotted}`: `{part}` is not a mapping")
        node[leaf] = value
        return
    setting = KEYS.get(dotted)
    if setting is None:
        near = difflib.get_close_matches(dotted, [*KEYS, *SECTIONS], n=1, cutoff=0.75)   # a section too: `selct:`
        raise UsageError(f"{where}: unknown key `{dotted}`" + (f" (did you mean `{near[0]}`?)" if near else ""))
    if raw is not None and not setting.check(value) and setting.check(raw):
        value = raw   # a date or a number where the key takes text: keep what was written
    *parents, leaf = dotted.split(".")
    node = values
    for part in parents:
        node = node[part]
    node[leaf] = value


def _get(values: dict, dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node
