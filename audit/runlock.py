"""The run folder's lock: one audit writes into a folder at a time.

``hold(run_dir, log)`` takes ``<run folder>/.lock`` for the run: an exclusive
``flock`` plus a record of the holder (PID, host, start time) whose modification
time a heartbeat renews every ``HEARTBEAT`` seconds (the lease). A second audit
into the same folder stops with exit 2 while the holder lives. A lock left by a run
that was killed (SIGKILL, power loss, a lost node) is stale: its process is gone
(same host) or its lease expired (``LEASE`` seconds without a heartbeat, any host,
e.g. a network file system where ``flock`` does not reach); it is taken over with
a one-line warning, and the new run resumes from what the dead one stored.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from audit.errors import UsageError

LOCK = ".lock"
HEARTBEAT = 20.0   # seconds between renewals of the lease
LEASE = 120.0      # seconds after the last renewal that a lock of a live-looking holder expires


@contextlib.contextmanager
def hold(run_dir: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Create ``run_dir``, check it is writable and hold its lock for the block.

    Raises ``UsageError`` (exit 2) when the folder cannot be written or another live audit
    holds the lock; ``log`` receives the warning when it takes over a stale one.
    """
    import fcntl

    path = Path(run_dir) / LOCK
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError as exc:
        raise UsageError(f"--out {run_dir}: cannot write the run folder ({exc.strerror})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"--out {run_dir}: another audit is writing to this run folder"
                             f"{_describe(_holder(path))}") from None
        holder = _holder(path)
        if holder:
            why = _stale(path, holder)
            if why is None:
                raise UsageError(f"--out {run_dir}: another audit is writing to this run folder{_describe(holder)}")
            log(f"warning: {run_dir}: taking over the lock of a run that stopped without releasing it"
                f"{_describe(holder)}: {why}")
        _write(handle, {"pid": os.getpid(), "host": socket.gethostname(),
                        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(path, stop), daemon=True, name="audit-lock-heartbeat")
        beat.start()
        try:
            yield
        finally:
            stop.set()
            with contextlib.suppress(OSError):
                handle.seek(0)
                handle.truncate()   # released: an empty lock file is no holder


def _holder(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {"unreadable": True}
    return holder if isinstance(holder, dict) else {"unreadable": True}


def _stale(path: Path, holder: dict) -> str | None:
    """Why the lock of ``holder`` is stale, or None while it may still be held."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return "its lock file vanished"
    if age > LEASE:
        return f"its lease expired {age:.0f} s ago (no heartbeat for over {LEASE:.0f} s)"
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return f"process {holder['pid']} is gone"
        except PermissionError:
            return None
        return None if holder["pid"] != os.getpid() else "it was this process's own earlier run"
    return None


def _describe(holder: dict) -> str:
    if not holder or holder.get("unreadable"):
        return ""
    return f" (PID {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')})"


def _write(handle, holder: dict) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(holder) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT):
        with contextlib.suppress(OSError):
            os.utime(path)
