"""Feedback while running: one progress bar per stage on a terminal, log lines otherwise.

A ``Progress`` is the ``log`` callable the pipeline (and the demo) call with short
messages, plus ``stage(name)``, a context manager around one stage whose handle
takes ``update(done, total)`` (the pipeline feeds it finished Dask tasks). Modes:

* ``bar``: stderr is a terminal: each stage draws a line-updating bar on stderr
  (``[predict] ######------ 4/6 tasks 1.2 s``), messages go to stderr above it.
* ``text``: timestamped lines on stdout: ``2026-11-22T03:50:01Z [predict] start``,
  messages, ``... [predict] done in 1.2 s (6 tasks)``.
* ``json``: one JSON object per line on stderr: ``{"ts", "level", "stage",
  "event", "msg", ...}`` with events ``start``, ``end`` (``seconds``, ``tasks``),
  ``failed`` (``seconds``), ``log`` and ``error`` (the CLI's one-line error).
* ``quiet``: nothing (the CLI still prints the result).

Long stages: in ``text`` and ``json`` modes a running stage logs a progress line at
least every ``HEARTBEAT_SECONDS`` (30 s): ``[attribute] 120/512 images (23%), 4.1 min,
ETA 13.4 min`` (event ``progress`` with ``done``, ``total``, ``eta_seconds``). The work
units come from ``advance(n)``, which the stages' batch loops call (a no-op outside a
stage, e.g. on a distributed worker, where finished tasks still count), against the
total the pipeline announces with ``Stage.expect``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import sys
import threading
import time
from typing import Callable, Iterator, TextIO

MODES = ("bar", "text", "json", "quiet")
BAR_WIDTH = 24
REDRAW_SECONDS = 0.1
HEARTBEAT_SECONDS = 30.0
_ACTIVE: list["Stage"] = []   # the running stage of this process (a list: set and cleared by Progress.stage)


def choose_mode(log_format: str, quiet: bool, stream: TextIO | None = None) -> str:
    """The progress mode: ``quiet``, ``json``, ``bar`` when ``stream`` is a terminal, else ``text``.

    Parameters
    ----------
    log_format : str
        The CLI's ``--log-format``; ``"json"`` selects ``json``, anything else a bar or text.
    quiet : bool
        ``--quiet``: wins over everything.
    stream : TextIO, optional
        The stream a bar would draw on (default ``sys.stderr``).
    """
    if quiet:
        return "quiet"
    if log_format == "json":
        return "json"
    stream = sys.stderr if stream is None else stream
    return "bar" if hasattr(stream, "isatty") and stream.isatty() else "text"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Stage:
    """The handle of one running stage: ``update(done, total)`` with finished / all tasks.

    Parameters
    ----------
    progress : Progress
        The log the stage draws on.
    name : str
        The stage's name (``predict``, ``attribute``, ...).
    """

    def __init__(self, progress: "Progress", name: str):
        self.progress, self.name = progress, name
        self.done, self.total = 0, 0
        self.units_done, self.units_total, self.unit = 0, 0, "images"
        self.start = time.perf_counter()
        self._drawn = 0.0
        self._lock = threading.Lock()

    def expect(self, total: int, unit: str = "images") -> None:
        """Announce the stage's work: ``total`` units of kind ``unit`` (images) that ``advance`` counts down."""
        self.units_total, self.unit = int(total), unit

    def advance(self, n: int) -> None:
        """``n`` more units done (thread-safe: the local scheduler's tasks call it from their threads)."""
        with self._lock:
            self.units_done += int(n)
        if self.progress.mode == "bar" and time.perf_counter() - self._drawn >= REDRAW_SECONDS:
            self._drawn = time.perf_counter()
            self.progress._draw(self)

    def eta(self) -> float | None:
        """Seconds left at the pace so far (units, else tasks); None before the first is done."""
        done, total = (self.units_done, self.units_total) if self.units_total else (self.done, self.total)
        if not total or not done:
            return None
        return self.seconds / done * max(total - done, 0)

    def status(self) -> str:
        """``[attribute] 120/512 images (23%), 4.1 min, ETA 13.4 min``."""
        done, total, unit = ((self.units_done, self.units_total, self.unit) if self.units_total
                             else (self.done, self.total, "tasks"))
        eta = self.eta()
        where = f"{done}/{total} {unit} ({done / total:.0%}), " if total else "running, "
        return (f"[{self.name}] {where}{_duration(self.seconds)}"
                + (f", ETA {_duration(eta)}" if eta is not None else ", ETA unknown"))

    def update(self, done: int, total: int) -> None:
        """Record ``done`` of ``total`` tasks; a bar redraws at most every ``REDRAW_SECONDS`` (and at the end)."""
        self.done, self.total = int(done), int(total)
        if self.progress.mode == "bar" and (time.perf_counter() - self._drawn >= REDRAW_SECONDS or done >= total):
            self._drawn = time.perf_counter()
            self.progress._draw(self)

    @property
    def seconds(self) -> float:
        """Wall-clock seconds since the stage started."""
        return time.perf_counter() - self.start


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 \
        else f"{seconds / 3600:.1f} h"


def note(msg: str) -> None:
    """Log ``msg`` in this process's running stage (the ``warning: ...`` of a retried chunk), else through
    the ``audit`` logger (an ``explain`` call outside a run)."""
    if _ACTIVE:
        _ACTIVE[-1].progress(msg)
    else:
        import logging

        logging.getLogger("audit").warning(msg)


def advance(n: int) -> None:
    """Count ``n`` units of work done in this process's running stage (no-op when none runs)."""
    if _ACTIVE:
        _ACTIVE[-1].advance(n)


class Progress:
    """The run's log: call it with a message; ``with progress.stage(name) as s: ...`` around a stage.

    A message starting with "warning" is logged at level ``warning``; ``heartbeat``: seconds
    between progress lines of a running stage in text and json modes.

    Parameters
    ----------
    mode : str, default "text"
        One of ``MODES`` (module docstring); another raises ``ValueError``.
    out, err : TextIO, optional
        Streams for text lines and for bars / JSON lines (default stdout, stderr).
    """

    def __init__(self, mode: str = "text", out: TextIO | None = None, err: TextIO | None = None,
                 heartbeat: float = HEARTBEAT_SECONDS):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} (got {mode!r})")
        self.mode = mode
        self.heartbeat = heartbeat
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.current: Stage | None = None
        self._bar_shown = False

    def __call__(self, msg: str) -> None:
        level = "warning" if msg.lstrip().lower().startswith("warning") else "info"
        self.event("log", msg.strip() if self.mode == "json" else msg, level=level)

    def event(self, event: str, msg: str, level: str = "info", **fields) -> None:
        """Emit one ``event`` (``start``, ``end``, ``failed``, ``log``, ``error``) in the current mode.

        Parameters
        ----------
        event, msg : str
            The event's name and its human-readable message.
        level : str, default "info"
            ``info``, ``warning`` or ``error`` (JSON mode only).
        **fields
            Extra keys of the JSON record (e.g. ``seconds``, ``tasks``).
        """
        stage = self.current.name if self.current is not None else None
        if self.mode == "quiet":
            return
        if self.mode == "json":
            record = {"ts": _now(), "level": level, "stage": stage, "event": event, "msg": msg, **fields}
            print(json.dumps(record, default=str), file=self.err, flush=True)
        elif self.mode == "text":
            print(f"{_now()} {msg}", file=self.out, flush=True)
        else:
            self._clear()
            print(msg, file=self.err, flush=True)
            if self.current is not None:
                self._draw(self.current)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        """Context manager around stage ``name``: logs its start, then its end (or failure) with seconds.

        Parameters
        ----------
        name : str
            The stage's name.

        Yields
        ------
        Stage
            The handle to feed with ``update(done, total)``.
        """
        stage = Stage(self, name)
        self.current = stage
        self.event("start", f"[{name}] start")
        if self.mode == "bar":
            self._draw(stage)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(stage, stop), daemon=True)
        if self.mode in ("text", "json"):
            beat.start()
        _ACTIVE.append(stage)
        failed = True
        try:
            yield stage
            failed = False
        finally:
            _ACTIVE.remove(stage)
            stop.set()
            if beat.is_alive():
                beat.join()
            seconds = round(stage.seconds, 3)
            tasks = f" ({stage.total} tasks)" if stage.total else ""
            if self.mode == "bar":
                self._draw(stage, final=True)
            elif failed:
                self.event("failed", f"[{name}] failed after {seconds:.1f} s", level="error", seconds=seconds)
            else:
                self.event("end", f"[{name}] done in {seconds:.1f} s{tasks}", seconds=seconds,
                           tasks=stage.total or None)
            self.current = None

    def _beat(self, stage: Stage, stop: threading.Event) -> None:
        """Log the stage's progress every ``heartbeat`` seconds until ``stop`` (text and json modes)."""
        while not stop.wait(self.heartbeat):
            eta = stage.eta()
            done, total = (stage.units_done, stage.units_total) if stage.units_total else (stage.done, stage.total)
            self.event("progress", stage.status(), done=done, total=total or None,
                       eta_seconds=None if eta is None else round(eta, 1))

    def _draw(self, stage: Stage, final: bool = False) -> None:
        if stage.units_total and not final:
            filled = int(BAR_WIDTH * min(stage.units_done / stage.units_total, 1.0))
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            eta = stage.eta()
            text = (f"[{stage.name}] {bar} {stage.units_done}/{stage.units_total} {stage.unit} "
                    f"{stage.seconds:.1f} s" + (f" ETA {_duration(eta)}" if eta is not None else ""))
        elif stage.total:
            filled = int(BAR_WIDTH * stage.done / stage.total)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            text = f"[{stage.name}] {bar} {stage.done}/{stage.total} tasks {stage.seconds:.1f} s"
        else:
            text = f"[{stage.name}] {'done' if final else '...'} {stage.seconds:.1f} s"
        self.err.write("\r\x1b[2K" + text + ("\n" if final else ""))
        self.err.flush()
        self._bar_shown = not final

    def _clear(self) -> None:
        if self._bar_shown:
            self.err.write("\r\x1b[2K")
            self._bar_shown = False


@contextlib.contextmanager
def stage(log: Callable[[str], None], name: str) -> Iterator[Stage | None]:
    """``log.stage(name)`` for a ``Progress``; for a plain callable, ``[name]`` and ``name took`` lines.

    Parameters
    ----------
    log : callable
        A ``Progress`` or any ``str -> None`` callable.
    name : str
        The stage's name.

    Yields
    ------
    Stage or None
        The stage handle (None for a plain callable).
    """
    if isinstance(log, Progress):
        with log.stage(name) as handle:
            yield handle
        return
    log(f"[{name}]")
    start = time.perf_counter()
    yield None
    log(f"  {name} took {time.perf_counter() - start:.1f} s")
