"""The audit pipeline: the only module that knows Dask.

``run(config)`` checks every input before any work, then runs the stages into
the run folder (``audit.artifacts`` names the files):

1. predict: the manifest is split into partitions of ``predict.partition_size``
   rows; each Dask task decodes its images and runs the model in batches. Tasks
   get the model *path*; each worker process loads the model once.
2. select: misclassified, low-confidence and contrast images (in the driver).
3. attribute: the selection in partitions; each task writes its map chunks.
4. discover, gate, render: on the collected, small results, in the driver.

The local threaded scheduler runs by default; ``dask.scheduler``
(``--scheduler tcp://host:8786``) runs the same graph on a distributed cluster
whose workers see the same file system.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import platform
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from audit import artifacts
from audit.config import Config
from audit.data import load_classes, load_manifest, resolve
from audit.errors import UsageError

Log = Callable[[str], None]


def run(config: Config, log: Log = print) -> dict:
    """Run the whole audit; return the summary (also written to ``summary.json``)."""
    from audit.model_io import classifier_for

    for key, flag in (("model.path", "--model"), ("data.path", "--data")):
        if config[key] is None:
            raise UsageError(f"`{key}` is required ({flag} or {key} in the config)")
    frame, root = load_manifest(Path(config["data.path"]))
    classes = load_classes(config["data.classes"], frame, Path(config["data.path"]))
    classifier = classifier_for(config)
    _check_inputs(config, frame, classes, classifier.n_classes)
    with _run_folder(config.run_dir):
        return _run_stages(config, frame, root, classes, classifier, log)


def _run_stages(config: Config, frame: pd.DataFrame, root: Path, classes: list[str], classifier, log: Log) -> dict:
    import dask

    from audit.model_io import file_sha256
    from audit.report.render import render
    from audit.stages.attribute import attribute_partition
    from audit.stages.discover import discover
    from audit.stages.gate import summarize
    from audit.stages.predict import predict_partition
    from audit.stages.select import select

    run_dir = config.run_dir
    frame.insert(0, "row", np.arange(len(frame)))
    record = {
        "run_id": config["run_id"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "versions": _versions(),
        "model": {"path": str(config["model.path"]), "sha256": file_sha256(config["model.path"]),
                  "input_size": list(classifier.input_size), "target_layer": classifier.layer.name,
                  "logits": classifier.logits_kind},
        "data": {"path": str(config["data.path"]), "root": str(Path(root).resolve()),
                 "sha256": _data_hash(frame, root), "n_rows": len(frame)},
        "classes": classes,
        "timings": {},
    }
    artifacts.write_json(run_dir / artifacts.RUN_JSON, record)
    timings = record["timings"]

    with _scheduler(config) as compute:
        with _timed(timings, "predict", log):
            parts = _partitions(frame, config["predict.partition_size"])
            tasks = [dask.delayed(predict_partition)(config, root, classes, part) for part in parts]
            predictions = pd.concat(compute(tasks), ignore_index=True)
            artifacts.write_table(run_dir / artifacts.PREDICTIONS, predictions)
        log(f"  {len(predictions)} images, {int(predictions['error'].notna().sum())} unreadable")

        with _timed(timings, "select", log):
            selection = select(config, predictions)
            artifacts.write_table(run_dir / artifacts.SELECTION, selection)
        log(f"  {int((selection['reason'] != 'contrast').sum())} selected, "
            f"{int((selection['reason'] == 'contrast').sum())} contrast")

        with _timed(timings, "attribute", log):
            parts = _partitions(selection, config["attribution.partition_size"])
            tasks = [dask.delayed(attribute_partition)(config, root, classes, part, i) for i, part in enumerate(parts)]
            results = compute(tasks)
            feature_rows = np.concatenate([r for r, _ in results]) if results else np.zeros(0, np.int64)
            features = np.concatenate([f for _, f in results]) if results else np.zeros((0, 0), np.float32)
            np.savez(run_dir / artifacts.FEATURES, row=feature_rows, features=features)

    with _timed(timings, "discover", log):
        map_rows, maps = artifacts.read_maps(run_dir, config["attribution.methods"][0])
        table, findings = discover(config, predictions, selection, map_rows, maps, feature_rows, features)
        artifacts.write_table(run_dir / artifacts.DISCOVERY, table)
        summary = summarize(config, predictions, selection, findings)
        artifacts.write_json(run_dir / artifacts.SUMMARY, summary)
    log(f"  {len(findings)} finding(s)")
    artifacts.write_json(run_dir / artifacts.RUN_JSON, record)

    with _timed(timings, "render", log):
        render(run_dir)
    artifacts.write_json(run_dir / artifacts.RUN_JSON, record)
    return summary


@contextlib.contextmanager
def _run_folder(run_dir: Path) -> Iterator[None]:
    """Create the run folder, check it is writable, and hold its lock for the run.

    A second audit into the same folder at the same time stops (exit 2) rather than
    mixing its artifacts with the first one's.
    """
    import fcntl

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(run_dir / ".lock", "w")
    except OSError as exc:
        raise UsageError(f"--out {run_dir}: cannot write the run folder ({exc.strerror})") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"--out {run_dir}: another audit is writing to this run folder") from None
        yield


def _check_inputs(config: Config, frame: pd.DataFrame, classes: list[str], n_outputs: int) -> None:
    where = config["data.classes"] or config["data.path"]
    if len(classes) != n_outputs:
        raise UsageError(f"{where}: {len(classes)} classes but the model has {n_outputs} outputs")
    unknown = ~frame["label"].isin(classes)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise UsageError(f"{config['data.path']}: row {i} ({frame['path'][i]}) has label "
                         f"{frame['label'][i]!r}, not among the classes ({int(unknown.sum())} such rows)")
    if config["select.pair"] is not None:
        for name in config["select.pair"].split(":"):
            if name.strip() not in classes:
                raise UsageError(f"`select.pair`: {name.strip()!r} is not among the classes")


def _partitions(frame: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    return [frame.iloc[start:start + size] for start in range(0, len(frame), size)]


@contextlib.contextmanager
def _scheduler(config: Config) -> Iterator[Callable[[list], list]]:
    """Yield ``compute(tasks) -> results`` on the configured scheduler."""
    import dask

    address = config["dask.scheduler"]
    if address is None:
        yield lambda tasks: list(dask.compute(*tasks, scheduler="threads", num_workers=config["dask.workers"]))
        return
    from distributed import Client

    try:
        client = Client(address, timeout="20s")
    except OSError as exc:
        raise UsageError(f"`dask.scheduler` {address}: cannot connect ({exc})") from None
    with client:
        yield lambda tasks: list(dask.compute(*tasks, scheduler=client))


@contextlib.contextmanager
def _timed(timings: dict, stage: str, log: Log) -> Iterator[None]:
    log(f"[{stage}]")
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 3)
    log(f"  {stage} took {timings[stage]:.1f} s")


def _data_hash(frame: pd.DataFrame, root: Path) -> str:
    """Hash of the manifest rows and each file's size (cheap, catches changed files)."""
    digest = hashlib.sha256()
    for path, label in zip(frame["path"], frame["label"]):
        file = resolve(root, path)
        size = file.stat().st_size if file.exists() else -1
        digest.update(f"{path}\t{label}\t{size}\n".encode())
    return digest.hexdigest()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("cnn-audit", "tensorflow", "keras", "dask", "numpy", "pandas", "scikit-learn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    if out.get("tensorflow") is None:
        with contextlib.suppress(PackageNotFoundError):
            out["tensorflow"] = version("tensorflow-cpu")
    return out
