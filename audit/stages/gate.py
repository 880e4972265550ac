"""Gate: metrics, gates and findings into ``summary.json`` (the stable contract).

Gates come from config (``gates.*``; ``null`` disables one). The run's status is
``fail`` when any gate fails, and the CLI then exits with code 1.
"""
from __future__ import annotations

import pandas as pd

from audit.config import Config


def summarize(config: Config, predictions: pd.DataFrame, selection: pd.DataFrame, findings: list[dict]) -> dict:
    valid = predictions[predictions["error"].isna()]
    accuracy = float((valid["predicted"] == valid["label"]).mean()) if len(valid) else 0.0
    metrics = {
        "n_images": int(len(predictions)),
        "n_unreadable": int(predictions["error"].notna().sum()),
        "accuracy": round(accuracy, 6),
        "n_selected": int((selection["reason"] != "contrast").sum()),
        "n_misclassified": int((selection["reason"] == "misclassified").sum()),
        "n_low_confidence": int((selection["reason"] == "low_confidence").sum()),
    }
    gates = []
    if config["gates.max_error_rate"] is not None:
        value = round(1.0 - accuracy, 6)
        gates.append({"name": "max_error_rate", "passed": value <= config["gates.max_error_rate"],
                      "value": value, "threshold": config["gates.max_error_rate"]})
    if config["gates.max_finding_score"] is not None:
        value = max((f["score"] for f in findings), default=0.0)
        gates.append({"name": "max_finding_score", "passed": value <= config["gates.max_finding_score"],
                      "value": value, "threshold": config["gates.max_finding_score"]})
    return {
        "run_id": config["run_id"],
        "status": "pass" if all(g["passed"] for g in gates) else "fail",
        "metrics": metrics,
        "findings": findings,
        "gates": gates,
    }
