"""Command line: parse, call, exit code. Nothing else lives here.

Exit codes: 0 all gates pass, 1 a gate failed, 2 bad usage/config/input,
3 runtime failure (the traceback goes to ``<run folder>/error.log``), 143 stopped by
SIGTERM (completed work kept: the same command resumes).
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import time
import traceback
from pathlib import Path

from audit.errors import Terminated, UsageError
from audit.progress import Progress, choose_mode

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_RUNTIME, EXIT_TERMINATED = 0, 1, 2, 3, 143
DEMO_CACHE = Path("reports/.cache/demo")


def main(argv: list[str] | None = None) -> int:
    """The ``audit`` command: ``run``, ``demo``, ``internals``, ``render`` or ``compare``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code: 0 all gates pass, 1 a gate failed, 2 bad usage/config/input
        (one line on stderr), 3 runtime failure (traceback in the run folder's ``error.log``).
    """
    started = time.monotonic()   # run.budget counts from here (the demo: once its data and model are ready)
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    log = Progress(choose_mode(getattr(args, "log_format", "text"), args.quiet))
    run_dir = None
    try:
        if args.command == "compare":
            return _compare(args)
        if args.command == "export":
            from audit.export import export

            path = export(Path(args.run_dir), args.finding, args.format, Path(args.out) if args.out else None)
            print(f"export: {path}")
            return EXIT_OK
        if args.command == "render":
            from audit.report.render import render

            if not (Path(args.run_dir) / "summary.json").is_file():
                raise UsageError(f"{args.run_dir}: not a finished run folder (no summary.json)")
            print(render(Path(args.run_dir), layout=args.layout, templates=args.templates))
            return EXIT_OK
        if args.command == "internals":
            import_tensorflow_quietly()
            return _internals(args, log)
        from audit.config import resolve

        nightly = {"baseline.run_dir": args.baseline, "triage.path": args.triage,
                   "report.summary_format": args.summary_format, "run.budget": args.budget}
        prepared = None
        if args.command == "demo":
            rail_rate = resolve(args.config, args.set, {"demo.rail_rate": args.rail_rate, **nightly}).demo.rail_rate
            import_tensorflow_quietly()
            from audit import demo

            assets = demo.prepare(Path(args.cache), seed=args.seed, log=log, rail_rate=rail_rate)
            started = time.monotonic()
            config = resolve(args.config, args.set, {
                "model.path": str(assets.model_path), "data.path": str(assets.manifest),
                "data.classes": str(assets.classes), "out": args.out, "run_id": _demo_run_id(args), "seed": args.seed,
                "demo.rail_rate": rail_rate, **nightly})
        else:
            config = resolve(args.config, args.set, {
                "model.path": args.model, "data.path": args.data, "data.classes": args.classes,
                "out": args.out, "dask.scheduler": args.scheduler, "select.pair": args.pair,
                "model.trust": args.trust_model or None, "model.signature": args.signature,
                "model.output": _output(args.output), **nightly})
            from audit.inputs import prepare   # (pandas: imported once the config is known to be good)

            prepared = prepare(config)   # config, manifest and classes checked before TensorFlow loads
            import_tensorflow_quietly()
        from audit import pipeline

        run_dir = config.run_dir
        if args.mlflow is not None:
            from audit.trackers import check_mlflow, log_mlflow
            check_mlflow(args.mlflow or None)
        summary = pipeline.run(config, log=log, prepared=prepared, started=started)
        if args.command == "demo":
            _demo_epilogue(run_dir, log)
        if args.mlflow is not None:
            log(f"mlflow: logged as run {log_mlflow(run_dir, args.mlflow or None)}")
        _print_result(run_dir, summary)
        return EXIT_OK if summary["status"] == "pass" else EXIT_GATE
    except UsageError as exc:
        _error(log, f"audit: error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error(log, "audit: interrupted")
        return EXIT_RUNTIME
    except Terminated as exc:
        _error(log, f"audit: stopped by {exc.signal_name}" + (f" during {exc.stage}" if exc.stage else "")
               + (f": completed work is kept in {run_dir}; the same command resumes" if run_dir else ""))
        return EXIT_TERMINATED
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            _error(log, f"audit: runtime failure: no space left on device writing {exc.filename}: completed work "
                   "is kept; free space and run the same command again")
            return EXIT_RUNTIME
        where = _write_error_log(run_dir)
        first = (str(exc).strip().splitlines() or [""])[0]
        _error(log, f"audit: runtime failure: {type(exc).__name__}: {first}"
               + (f" (traceback in {where})" if where else ""))
        if where is None:
            traceback.print_exc()
        return EXIT_RUNTIME


def _error(log: Progress, line: str) -> None:
    """The one-line error on stderr (a JSON object with ``--log-format json``)."""
    if log.mode == "json":
        log.event("error", line, level="error")
    else:
        print(line, file=sys.stderr)


def _compare(args: argparse.Namespace) -> int:
    """``audit compare RUN_A RUN_B``: print the diff, write compare.json and compare.md."""
    from audit.config import resolve
    from audit.nightly.compare import compare, compare_markdown, write_compare

    b = resolve(args.config, args.set, {"out": "unused"}).baseline
    diff = compare(args.run_a, args.run_b, b.tolerance, b.focus_tolerance, b.min_overlap)
    json_path, md_path = write_compare(diff, Path(args.out) if args.out else Path(args.run_b))
    if not args.quiet:
        print(compare_markdown(diff), end="")
    print(f"compare: {json_path} {md_path}")
    return EXIT_OK


def import_tensorflow_quietly():
    """TensorFlow, imported with file descriptor 2 muted: its C++ start-up banner ignores
    TF_CPP_MIN_LOG_LEVEL. An import error is still raised, with its message. (The
    benchmarks use it too.)"""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audit", description="Audit an image classifier for spurious cues.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="audit a model on a labeled data set")
    run.add_argument("config", nargs="?", help="pipeline YAML (see pipelines/)")
    run.add_argument("--model", help=".keras or .h5 classifier, or a SavedModel folder")
    run.add_argument("--data", help="folder with one subfolder per class, CSV/parquet manifest (path,label; paths "
                                    "may be s3://, gs://, http(s):// URLs), TFRecord shards (x.tfrecord or a glob) "
                                    "or a Parquet file of image bytes")
    run.add_argument("--signature", help="SavedModel without Keras metadata: the signature to run "
                                         "(default serving_default)")
    run.add_argument("--output", help="the classification head of a model with several outputs (name or index)")
    run.add_argument("--classes", help="text file, one class name per line, in the model's output order")
    run.add_argument("--out", help="run folder (default reports/<run_id>)")
    run.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://host:8786 (default: local)")
    run.add_argument("--pair", help="audit one confusion pair only, as TRUE:PREDICTED")
    run.add_argument("--trust-model", action="store_true",
                     help="allow Lambda layers (they run arbitrary code; Keras safe mode refuses them)")

    demo = sub.add_parser("demo", help="build the synthetic hotel demo (cached) and audit it")
    demo.add_argument("config", nargs="?", help="optional pipeline YAML with extra settings")
    demo.add_argument("--out", default="reports/demo", help="run folder (default reports/demo)")
    demo.add_argument("--cache", default=str(DEMO_CACHE), help=f"demo data and model cache (default {DEMO_CACHE})")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--rail-rate", type=float, default=None,
                      help="share of bathroom training images with rails (default 0.87; lower: a model "
                           "trained on cleaner data, cached separately)")

    for p in (run, demo):
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key, e.g. --set select.margin=0.1 (repeatable)")
        p.add_argument("--baseline", metavar="RUN_DIR",
                       help="previous run folder (or 'latest' from the history): findings are marked "
                            "new / persisting / resolved and pair error rates compared")
        p.add_argument("--triage", metavar="TRIAGE.yaml", help="acknowledge or suppress finding IDs")
        p.add_argument("--budget", metavar="DURATION",
                       help="wall time for the run, e.g. 45m, 90s or 1.5h: the attribution is planned to fit "
                            "(run.budget)")
        p.add_argument("--summary-format", choices=("md", "slack"),
                       help="summary.md with tables (md) or for a chat message (slack); report.summary_format")
        p.add_argument("--log-format", choices=("text", "json"), default="text",
                       help="text: progress bars on a terminal, timestamped lines otherwise; "
                            "json: one JSON object per line on stderr")
        p.add_argument("--quiet", action="store_true", help="print only the result")
        p.add_argument("--mlflow", nargs="?", const="", metavar="URI",
                       help="log metrics, finding IDs and the report to MLflow (default URI: MLflow's own)")

    internals = sub.add_parser("internals", help="look inside a model: filter, class and activation pictures of a layer")
    internals.add_argument("--model", required=True, help=".keras or .h5 classifier")
    internals.add_argument("--layer", required=True, help="the layer whose channels are shown (a spatial layer)")
    internals.add_argument("--data", help="images for top patches and activation maps (folder or CSV/parquet manifest)")
    internals.add_argument("--classes", help="text file, one class name per line, in the model's output order")
    internals.add_argument("--class", dest="only", action="append", metavar="NAME",
                           help="visualize only this class (repeatable; default every class)")
    internals.add_argument("--out", required=True, help="folder for the pictures, index.json and index.html")
    internals.add_argument("--config", help="optional pipeline YAML (its data.preprocess and internals.* apply)")
    internals.add_argument("--trust-model", action="store_true", help="allow Lambda layers (they run arbitrary code)")
    internals.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="override one config key, e.g. --set internals.steps=256 (repeatable)")
    internals.add_argument("--quiet", action="store_true", help="print only the result")

    render = sub.add_parser("render", help="re-render the report of a run folder (no TensorFlow needed)")
    render.add_argument("run_dir")
    render.add_argument("--layout", choices=("single", "folder"),
                        help="one self-contained index.html, or index.html + assets/ (default: report.layout of the run)")
    render.add_argument("--templates", metavar="DIR",
                        help="folder of template overrides searched first (default: report.templates of the run)")
    render.add_argument("--quiet", action="store_true")

    export = sub.add_parser("export", help="write a finding's members for relabelling (no TensorFlow needed)")
    export.add_argument("run_dir", help="a finished run folder")
    export.add_argument("--finding", required=True, metavar="F-...", help="the finding's ID")
    export.add_argument("--format", choices=("csv", "fiftyone", "labelstudio"), default="csv")
    export.add_argument("--out", help="the file to write (default RUN_DIR/export-<finding>-<format>.csv|json)")
    export.add_argument("--quiet", action="store_true")

    compare = sub.add_parser("compare", help="diff two run folders (no TensorFlow needed)")
    compare.add_argument("run_a", help="the earlier run folder")
    compare.add_argument("run_b", help="the later run folder")
    compare.add_argument("--out", help="folder for compare.json and compare.md (default RUN_B)")
    compare.add_argument("--config", help="pipeline YAML whose baseline.* tolerances match the findings")
    compare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="e.g. --set baseline.tolerance=0.2 (repeatable)")
    compare.add_argument("--quiet", action="store_true", help="print only where the diff was written")
    return parser


def _output(value: str | None) -> str | int | None:
    """``--output``: an index when it is digits, else an output name."""
    return int(value) if value is not None and value.isdigit() else value


def _demo_run_id(args: argparse.Namespace) -> str | None:
    """The demo's run ID: ``--set run_id=...``, else the name of its run folder when that is a
    valid ID (``reports/demo``: ``demo``), so demo runs into different folders keep apart in the
    history."""
    if any(item.split("=", 1)[0].strip() == "run_id" for item in args.set):
        return None
    name = Path(args.out).name
    return name if name.replace("-", "").replace("_", "").isalnum() else "demo"


def _internals(args, log) -> int:
    """``audit internals``: pictures of one layer's channels and of the classes into ``--out``."""
    from audit.config import resolve
    from audit.data import load_classes
    from audit.report.internals import write_page
    from audit.stages.internals import explore

    config = resolve(args.config, args.set, {"model.path": args.model, "data.path": args.data,
                                             "data.classes": args.classes, "out": args.out,
                                             "model.trust": args.trust_model or None})
    names = load_classes(args.classes, None, None) if args.classes else None
    index = explore(config, args.layer, names, args.only, log)
    page = write_page(config.run_dir)
    print(f"{len(index['channels'])} channel(s) of {index['layer']}, {len(index['classes'])} class(es)"
          + (f", patches from {index['scanned_images']} image(s)" if index["scanned_images"] else "")
          + f": {page}")
    return EXIT_OK


def _demo_epilogue(run_dir: Path, log) -> None:
    """Record how strongly the demo model learned the rails (reads the ``cue`` ground truth)."""
    from audit import artifacts, demo

    bias = demo.bias_table(artifacts.read_table(run_dir / artifacts.PREDICTIONS))
    artifacts.write_json(run_dir / "demo.json", {"bias": bias})
    for name, row in bias.items():
        log(f"  demo bias: {name}: {row['predicted_bathroom']}/{row['n']} predicted bathroom ({row['rate']:.0%})")


def _print_result(run_dir: Path, summary: dict) -> None:
    m = summary["metrics"]
    print(f"status {summary['status']}: {m['n_images']} images, accuracy {m['accuracy']:.1%}, "
          f"{m['n_unreadable']} unreadable, {m['n_selected']} selected, {len(summary['findings'])} finding(s)")
    verdict = summary.get("verdict") or {}
    if verdict.get("text"):
        print(verdict["text"])
    for c in summary.get("soundness") or []:
        if not c.get("ok", True):
            print(f"  warning: audit not sound: {c['message']}")
    for f in summary["findings"][:3]:
        tags = ", ".join(t for t in (f.get("status") if summary.get("baseline") else None, f.get("triage")) if t)
        print(f"  #{f['rank']} {f['id']}: {f['true_label']} -> {f['predicted_label']}, "
              f"{f['size']} images, score {f['score']:.3f}" + (f" ({tags})" if tags else ""))
    for f in summary.get("resolved") or []:
        print(f"  resolved {f['id']}: {f['true_label']} -> {f['predicted_label']} "
              f"(baseline {summary['baseline']['run_id']})")
    for gate in summary["gates"]:
        if not gate["passed"]:
            print(f"  gate failed: {gate['name']} = {gate['value']} (threshold {gate['threshold']})")
    print(f"report: {run_dir / 'index.html'}")


def _write_error_log(run_dir: Path | None) -> Path | None:
    if run_dir is None or not Path(run_dir).is_dir():
        return None
    path = Path(run_dir) / "error.log"
    try:
        path.write_text(traceback.format_exc())
    except OSError:
        return None
    return path


if __name__ == "__main__":
    sys.exit(main())
