"""Experiment trackers: a finished run logged to MLflow (``audit run --mlflow [URI]``).

One MLflow run per audit, named after the audit's run ID, in the experiment MLflow
picks (``MLFLOW_EXPERIMENT_NAME``, else its default), at the tracking URI given
(``file:///path``, ``http://host:5000``, ...) or MLflow's own default
(``MLFLOW_TRACKING_URI``, else ``./mlruns``). It holds:

* metrics: ``accuracy``, ``n_images``, ``n_unreadable``, ``n_selected``,
  ``n_findings``, ``top_score`` (the best finding's score, 0 without findings), and
  per gate ``gate.<name>`` (its value) and ``gate.<name>.passed`` (1 or 0);
* tags: ``cnn_audit.run_id``, ``cnn_audit.status``, ``cnn_audit.findings`` (the
  finding IDs, best first, comma-separated) and one ``finding.<ID>`` per finding
  (``true -> predicted, N images, score S``), so runs can be searched by finding;
* artifacts: ``summary.json``, ``summary.md`` and the report (``index.html``, plus
  ``assets/`` in the folder layout).

Only this module imports MLflow, and only when a run asks for it (the ``tracking``
extra: ``pip install 'cnn-audit[tracking]'``, which installs ``mlflow-skinny``).
"""
from __future__ import annotations

from pathlib import Path

from audit.errors import UsageError

ARTIFACTS = ("summary.json", "summary.md", "index.html")


def require_mlflow():
    """The ``mlflow`` module; a ``UsageError`` (exit 2, before any work) when it is not installed."""
    try:
        import mlflow
    except ImportError:
        raise UsageError("--mlflow: the mlflow package is not installed "
                         "(pip install 'cnn-audit[tracking]' or mlflow-skinny)") from None
    return mlflow


def check_mlflow(uri: str | None) -> None:
    """Reach the tracking store at ``uri`` (None: MLflow's default) before the audit starts, so a wrong URI
    costs no work: a ``UsageError`` naming the URI and MLflow's reason (e.g. a file store MLflow refuses)."""
    mlflow = require_mlflow()
    try:
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"--mlflow {uri or '(MLflow default ' + mlflow.get_tracking_uri() + ')'}: {reason}") from None


def metrics(summary: dict) -> dict[str, float]:
    """The figures of ``summary.json`` logged as MLflow metrics (names above)."""
    m = summary.get("metrics") or {}
    findings = summary.get("findings") or []
    out = {k: float(m[k]) for k in ("accuracy", "n_images", "n_unreadable", "n_selected") if m.get(k) is not None}
    out["n_findings"] = float(len(findings))
    out["top_score"] = float(max((f["score"] for f in findings), default=0.0))
    for gate in summary.get("gates") or []:
        if isinstance(gate.get("value"), (int, float)) and not isinstance(gate.get("value"), bool):
            out[f"gate.{gate['name']}"] = float(gate["value"])
        out[f"gate.{gate['name']}.passed"] = 1.0 if gate.get("passed") else 0.0
    return out


def tags(summary: dict) -> dict[str, str]:
    """The run's status and finding IDs from ``summary`` (summary.json) as MLflow tags (names above)."""
    findings = summary.get("findings") or []
    out = {"cnn_audit.run_id": str(summary.get("run_id")), "cnn_audit.status": str(summary.get("status")),
           "cnn_audit.findings": ",".join(f["id"] for f in findings)}
    for f in findings:
        out[f"finding.{f['id']}"] = (f"{f['true_label']} -> {f['predicted_label']}, {f['size']} images, "
                                     f"score {f['score']:.3f}")
    return out


def log_mlflow(run_dir: str | Path, uri: str | None = None) -> str:
    """Log a finished run folder to MLflow; return the MLflow run ID.

    Parameters
    ----------
    run_dir : a finished run folder (``summary.json``, ``summary.md``, ``index.html``).
    uri : MLflow tracking URI; ``None``: MLflow's default.
    """
    import json

    mlflow = require_mlflow()
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    if uri:
        mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_name=str(summary.get("run_id")), nested=mlflow.active_run() is not None) as run:
        mlflow.log_metrics(metrics(summary))
        mlflow.set_tags(tags(summary))
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                mlflow.log_artifact(str(run_dir / name))
        if (run_dir / "assets").is_dir():
            mlflow.log_artifacts(str(run_dir / "assets"), artifact_path="assets")
        return run.info.run_id
