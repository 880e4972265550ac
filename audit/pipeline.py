"""The audit pipeline: the only module that knows Dask.

``run(config)`` checks every input before any work, then runs the stages into
the run folder (``audit.artifacts`` names the files):

1. predict: the manifest is split into partitions of ``predict.partition_size``
   rows; each Dask task decodes its images and runs the model in batches. Tasks
   get the model *path*; each worker process loads the model once.
2. select: misclassified, low-confidence and contrast images (in the driver).
3. attribute: the selection in partitions; each task writes its map chunks.
4. trust: faithfulness, sanity checks and agreement of the maps (in the driver).
5. discover, verify, locate: on the collected, small results, in the driver (locate
   places each cue at its verified region or finest faithful map); then the
   finish step (``_finish``) matches the findings to the baseline
   (``audit.nightly``), applies triage, gates, writes ``summary.json`` and appends
   the history. A complete run asked again with the same inputs and settings only
   repeats that last step (so new gates, a new baseline or triage take effect at
   once); ``audit.resume`` keys every stored output.
6. internals: what the model learned, for the top findings (``audit.stages.internals``).
7. render.

The local threaded scheduler runs by default; ``dask.scheduler``
(``--scheduler tcp://host:8786``) runs the same graph on a distributed cluster
whose workers see the same file system.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from audit import artifacts, integrity, nightly, progress, runlock
from audit.config import Config
from audit.errors import Terminated, UsageError
from audit.urls import is_url
from audit.findings import Finding
from audit.inputs import Prepared, prepare
from audit.nightly.baseline import apply_baseline
from audit.nightly.history import HistoryError, append_history, history_path, history_rows
from audit.nightly.triage import apply_triage
from audit.provenance import data_hash, versions
from audit.resume import chunk_paths, recorded_files, resumable, stage_keys

Log = Callable[[str], None]


def run(config: Config, log: Log = print, prepared: Prepared | None = None, started: float | None = None) -> dict:
    """Run the whole audit of ``config`` (resolved settings), progress to ``log`` (a ``Progress`` or any
    ``str -> None``); return the summary (also written to ``summary.json``). Bad input: ``UsageError``.

    ``prepared``: the inputs ``audit.inputs.prepare`` checked (the CLI does it before importing
    TensorFlow); checked here when not given. ``started``: ``time.monotonic()`` when the run began,
    for ``run.budget`` (default: now)."""
    started = time.monotonic() if started is None else started
    from audit.model_io import classifier_for
    from audit.stages.attribute import check_methods, without_layers

    prepared = prepared or prepare(config)
    frame, root, classes, inputs = prepared.frame.copy(), prepared.root, prepared.classes, prepared.nightly
    classifier = classifier_for(config)
    if len(classes) != classifier.n_classes:
        raise UsageError(f"{config.data.classes or config.data.path}: {len(classes)} classes but the model has "
                         f"{classifier.n_classes} outputs")
    config, not_computed = without_layers(config, classifier)
    for line in not_computed:
        log(line)
    check_methods(config, classifier)
    duplicated = frame.duplicated(["path", "label"])
    if duplicated.any():
        log(f"warning: {config.data.path}: {int(duplicated.sum())} duplicate row(s) ignored "
            f"(first: {frame['path'][duplicated].iloc[0]})")
        frame = frame[~duplicated].reset_index(drop=True)
    with _stop_on_sigterm(), runlock.hold(config.run_dir, log), integrity.recording(config.run_dir) as written:
        integrity.remove_temporaries(config.run_dir)
        return _run_stages(config, frame, root, classes, classifier, log, inputs, not_computed, written, started)


def _run_stages(config: Config, frame: pd.DataFrame, root: Path, classes: list[str], classifier, log: Log,
                inputs: nightly.Inputs, not_computed: list[str], written: integrity.Recorder, started: float) -> dict:
    import dask

    from audit.maps import area_pool
    from audit.model_io import file_sha256
    from audit.report.render import render
    from audit.stages.attribute import attribute_partition
    from audit.stages.discover import discover
    from audit.stages.link import link
    from audit.stages.locate import locate
    from audit.stages.strategies import kept
    from audit.stages.predict import predict_partition
    from audit.stages.select import select
    from audit.stages.trust import summary_figures, trust, with_trust
    from audit.stages.later import Allowance, deadline, over_budget, skipped_maps, trust_within, with_caps
    from audit.stages.plan import PROBE
    from audit.stages.verify import verify

    run_dir, end = config.run_dir, deadline(config, started)   # end: when run.budget is spent (None: no budget)
    frame.insert(0, "row", np.arange(len(frame)))
    record = {
        "run_id": config.run_id,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "versions": versions(),
        "model": {"path": str(config.model.path), "sha256": file_sha256(config.model.path),
                  "input_size": list(classifier.input_size),
                  "target_layer": None if classifier.layer is None else classifier.layer.name,
                  "logits": classifier.logits_kind},
        "not_computed": not_computed,
        "data": {"path": str(config.data.path), "root": root if is_url(str(root)) else str(Path(root).resolve()),
                 "sha256": data_hash(frame, root), "n_rows": len(frame)},
        "classes": classes,
        "timings": {},
    }
    keys = stage_keys(config, record)
    previous = artifacts.read_json(run_dir / artifacts.RUN_JSON) if (run_dir / artifacts.RUN_JSON).exists() else {}
    if previous.get("keys") == keys and (run_dir / artifacts.SUMMARY).exists() and _intact(run_dir, log):
        log(f"run {config.run_id} is complete for these inputs and settings (key {keys['run']}): nothing to do "
            f"but the baseline, triage, gates and history")
        stored = [artifacts.read_table(run_dir / name) for name in (artifacts.PREDICTIONS, artifacts.SELECTION,
                                                                    artifacts.DISCOVERY)]
        before = artifacts.read_json(run_dir / artifacts.SUMMARY)
        findings = [Finding.from_json(f) for f in before["findings"]]
        summary, _ = _finish(config, inputs, *stored, findings, before.get("trust"),
                             previous.get("created") or record["created"], log)
        artifacts.write_json(run_dir / artifacts.RUN_JSON, {**previous, "run_id": config.run_id,
                                                            "config": config.to_dict()})
        render(run_dir)
        return summary
    record["keys"] = keys
    artifacts.write_json(run_dir / artifacts.RUN_JSON, record)
    timings = record["timings"]

    with _scheduler(config) as compute:
        with _timed(timings, "predict", log):
            parts = _partitions(frame, config.predict.partition_size)
            paths = chunk_paths(run_dir, "predict", keys["predict"], len(parts), ".parquet", log)
            tasks = [dask.delayed(resumable)(path, predict_partition, config, root, classes, part, i)
                     for i, (path, part) in enumerate(zip(paths, parts))]
            predictions = pd.concat(compute(tasks), ignore_index=True)
            integrity.record(run_dir, recorded_files(run_dir, paths))
            artifacts.write_table(run_dir / artifacts.PREDICTIONS, predictions)
        log(f"  {len(predictions)} images, {int(predictions['error'].notna().sum())} unreadable")

        with _timed(timings, "select", log):
            selection = select(config, predictions)
            artifacts.write_table(run_dir / artifacts.SELECTION, selection)
        log(f"  {int((selection['reason'] != 'contrast').sum())} selected, "
            f"{int((selection['reason'] == 'contrast').sum())} contrast")

        with _timed(timings, "attribute", log) as handle:
            # at most one probe chunk and the rest of the selection in partitions: checked (reused) at once
            rest = max(len(selection) - min(PROBE, config.attribution.batch_size), 0)
            n_parts = 1 - (-rest // config.attribution.partition_size)
            paths = chunk_paths(run_dir, "attribute", keys["attribute"], n_parts, ".json", log)
            plan, probed = _plan(config, root, classes, predictions, selection, paths[0], compute, started, log)
            record["plan"] = plan.to_json()
            config = with_caps(config, plan.caps)   # the later stages' samples, when capped to fit run.budget
            planned = {m: plan.rows(m) for m in plan.methods}
            if handle is not None:
                handle.expect(sum(len(r) for r in planned.values()), "image maps")
            todo = selection["row"].isin(np.concatenate(list(planned.values()))) & ~selection["row"].isin(probed)
            parts = _partitions(selection[todo], config.attribution.partition_size)
            paths = paths[:len(parts) + 1] if len(probed) else []
            allowance = Allowance.of(plan, end)   # under a budget, costly batches start while time is left
            tasks = [dask.delayed(resumable)(path, attribute_partition, config, root, classes, part, i + 1, planned,
                                             False, allowance) for i, (path, part) in enumerate(zip(paths[1:], parts))]
            skipped_maps(record["plan"], compute(tasks), log)
            integrity.record(run_dir, recorded_files(run_dir, paths))
            feature_rows, features = artifacts.read_cams(run_dir, "features",
                                                         rows=selection["row"].to_numpy(np.int64))
            if len(feature_rows) < len(selection):   # a model without a target layer has no cams: no features
                feature_rows = selection["row"].to_numpy(np.int64)
                features = np.zeros((len(feature_rows), 0), np.float32)
            artifacts.write_npz(run_dir / artifacts.FEATURES, row=feature_rows, features=features)
        written.flush()

    trusted, trusting = None, trust_within(config, record["plan"], end, log)   # None: not started
    if trusting is not None:
        with _timed(timings, "trust", log):
            path = chunk_paths(run_dir, "trust", keys["trust"], 1, ".json", log)[0]
            trusted = resumable(path, lambda: trust(trusting, root, classes, selection, run_dir, classifier))
            integrity.record(run_dir, recorded_files(run_dir, [path]))

    with _timed(timings, "discover", log):
        # discovery and verification read the first method's maps (the next one's where it is empty) pooled
        # to the discovery grid, chunk by chunk: memory grows with the selection, never with the maps' size
        grid = config.discovery.grid
        map_rows, cells, used = artifacts.read_first_maps(run_dir, config.attribution.methods,
                                                          each=lambda m: area_pool(np.maximum(m, 0.0), grid, grid))
        if len(used) > 1:
            log(f"  maps read per method (a map with no positive value takes the next method's): {used}")
        # a budget too small for every selected image: discovery clusters those the first method explained
        explained = selection[selection["row"].isin(map_rows)]
        table, findings = discover(config, predictions, explained, map_rows, cells, feature_rows, features)
        strategies, map_rows, cells = _strategies(config, predictions, map_rows, cells)
    with _timed(timings, "verify", log):
        findings, dropped = kept(config, verify(config, root, classes, predictions, map_rows, cells,
                                                findings + strategies, classifier))
        if strategies:
            log(f"  {len(strategies)} strategy candidate(s) tested, {len(strategies) - dropped} confirmed")
        findings = with_trust(config, link(config, run_dir, predictions, findings), trusted)
        findings = locate(config, run_dir, findings, trusted, map_rows, cells)
        summary, findings = _finish(config, inputs, predictions, selection, table, findings,
                                    summary_figures(trusted), record["created"], log)
    log(f"  {len(findings)} finding(s)")
    artifacts.write_json(run_dir / artifacts.RUN_JSON, record)
    written.flush()

    with _timed(timings, "internals", log):
        from audit.stages.internals import run_internals

        if config.internals.enabled and over_budget("internals", record["plan"], end, log):
            artifacts.write_json(run_dir / artifacts.RUN_JSON, record)   # the report says why
            written.flush()
        else:
            run_internals(config, root, classes, predictions, findings, map_rows, cells, classifier, keys["internals"],
                          log)

    with _timed(timings, "render", log):
        render(run_dir)
    artifacts.write_json(run_dir / artifacts.RUN_JSON, record)
    return summary


def _plan(config: Config, root: Path, classes: list[str], predictions: pd.DataFrame, selection: pd.DataFrame,
          path: Path, compute: Callable[[list], list], started: float, log: Log):
    """Explain one batch of the selection with every method (the probe, chunk 0 of the attribute stage,
    stored at ``path``), then plan the rest from its timings (``audit.stages.plan``); log the plan. A
    resumed run reuses the probe and the plan stored beside it. Returns ``(plan, probe rows int64 [n])``."""
    import dask

    from audit.stages.attribute import attribute_partition
    from audit.stages.plan import PROBE, groups, make_plan, plan_from_json, probe_rows

    ordered = groups(selection, predictions)
    first = probe_rows(ordered, min(PROBE, config.attribution.batch_size))
    part = selection.set_index("row", drop=False).loc[first].reset_index(drop=True)
    probe = compute([dask.delayed(resumable)(path, attribute_partition, config, root, classes, part, 0, None,
                                             True)])[0] if len(first) else \
        {"rows": [], "seconds": dict.fromkeys(config.attribution.methods, 0.0), "wall": 0.0, "forward": 0.0}
    stored = path.with_name("plan.json")
    if stored.exists():
        plan = plan_from_json(artifacts.read_json(stored), ordered)
    else:
        plan = make_plan(config, selection, predictions, probe, time.monotonic() - started)
        artifacts.write_json(stored, plan.to_json())
    for line in plan.lines():
        log(f"  plan: {line}")
    return plan, first


def _strategies(config: Config, predictions: pd.DataFrame, map_rows: np.ndarray,
                cells: np.ndarray) -> tuple[list[Finding], np.ndarray, np.ndarray]:
    """The strategy candidates (``audit.stages.strategies``) and the maps verification reads: the
    attributed images' ``(map_rows [n], cells [n, G, G])`` plus the predict stage's Grad-CAM,
    pooled alike, of the correct predictions not attributed."""
    from audit.maps import area_pool
    from audit.stages.strategies import discover_strategies, strategy_pool

    if not config.strategies.enabled:
        return [], map_rows, cells
    grid = config.discovery.grid
    pool = strategy_pool(config, predictions)
    cam_rows, cams = artifacts.read_cams(config.run_dir, "cam", rows=pool["row"].to_numpy(np.int64),
                                         each=lambda m: area_pool(np.maximum(m, 0.0), grid, grid))
    if not len(cam_rows):
        return [], map_rows, cells
    _, features = artifacts.read_cams(config.run_dir, "features", rows=cam_rows)
    found = discover_strategies(config, predictions, pool, cam_rows, cams.astype(np.float32), features)
    extra = ~np.isin(cam_rows, map_rows)
    rows = np.concatenate([map_rows, cam_rows[extra]])
    both = np.concatenate([cells, cams[extra]]) if len(cells) else cams[extra]
    return found, rows, both.astype(np.float32)


def _finish(config: Config, inputs: nightly.Inputs, predictions: pd.DataFrame, selection: pd.DataFrame,
            table: pd.DataFrame, findings: list[Finding], trust: dict | None, created: str,
            log: Log) -> tuple[dict, list[Finding]]:
    """The run's last step: match the findings to the baseline, apply triage, gate, write
    ``discovery.parquet`` and ``summary.json`` (with the ``trust`` figures), append the history.
    Returns the summary and the findings as the summary lists them."""
    from audit.stages.discover import assign_findings
    from audit.stages.gate import summarize

    run_dir = config.run_dir
    b = config.baseline
    findings, resolved = apply_baseline(findings, inputs.baseline, b.tolerance, b.focus_tolerance, b.min_overlap)
    findings = apply_triage(findings, inputs.triage)
    for e in inputs.expired:
        log(f"warning: {config.triage.path}: triage entry {e['id']} ({e['action']}) expired on {e['expires']}: "
            f"no longer applied")
    summary = {**summarize(config, predictions, selection, findings, inputs.baseline, resolved, created,
                           inputs.expired), "trust": trust}
    artifacts.write_table(run_dir / artifacts.DISCOVERY, assign_findings(table, findings))
    artifacts.write_json(run_dir / artifacts.SUMMARY, summary)
    if inputs.baseline is not None:
        n_new = sum(f.status == "new" for f in findings)
        log(f"  against baseline {inputs.baseline.run_id}: {n_new} new, {len(findings) - n_new} persisting, "
            f"{len(resolved)} resolved finding(s)")
    path = history_path(config)
    if path is not None:
        try:
            append_history(path, history_rows(summary, created, run_dir))
        except HistoryError as exc:
            log(f"warning: {exc}")
    return summary, findings


def _intact(run_dir: Path, log: Log) -> bool:
    """Whether every file of the run folder's manifest still matches it (a full read); a damaged
    one is logged and the run goes through its stages again, reusing every intact chunk."""
    damaged = []
    for name, entry in integrity.read_manifest(run_dir).items():
        try:
            integrity.verify(run_dir / name, entry)
        except integrity.Damaged as exc:
            damaged.append(f"{name}: {exc.reason}")
    for line in damaged:
        log(f"warning: {line}; recomputing what depends on it")
    return not damaged


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM (a scheduler's timeout: cron, Airflow, Kubernetes) into ``Terminated`` in the
    main thread for the block: the run unwinds keeping what it stored (tasks already running
    finish and store their chunks). A second SIGTERM kills at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _partitions(frame: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    return [frame.iloc[start:start + size] for start in range(0, len(frame), size)]


@contextlib.contextmanager
def _scheduler(config: Config) -> Iterator[Callable[[list], list]]:
    """Yield ``compute(tasks) -> results`` on the configured scheduler."""
    import dask

    address = config.dask.scheduler
    if address is None:
        yield lambda tasks: list(dask.compute(*tasks, scheduler="threads", num_workers=config.dask.workers))
        return
    from distributed import Client

    try:
        client = Client(address, timeout="20s")
    except OSError as exc:
        raise UsageError(f"`dask.scheduler` {address}: cannot connect ({exc})") from None
    with client:
        yield lambda tasks: list(dask.compute(*tasks, scheduler=client))


@contextlib.contextmanager
def _timed(timings: dict, stage: str, log: Log) -> Iterator[progress.Stage | None]:
    """Time a stage into ``timings``; report it (and its finished Dask tasks) through ``log``; yield
    its progress handle (None when ``log`` is a plain callable)."""
    start = time.perf_counter()
    try:
        with progress.stage(log, stage) as handle, _task_progress(handle):
            yield handle
            timings[stage] = round(time.perf_counter() - start, 3)
    except Terminated as exc:
        exc.stage = exc.stage or stage
        raise


@contextlib.contextmanager
def _task_progress(handle: progress.Stage | None) -> Iterator[None]:
    """Feed ``handle.update(done, total)`` from the local scheduler's task callbacks."""
    if handle is None:
        yield
        return
    from dask.callbacks import Callback

    def posttask(key, result, dsk, state, worker_id) -> None:
        done = len(state["finished"])
        handle.update(done, done + sum(len(state[k]) for k in ("ready", "waiting", "running")))

    with Callback(posttask=posttask):
        yield
