"""``audit export RUN --finding F-... --format csv|fiftyone|labelstudio``: a finding's members
for relabelling, in the file a labelling tool reads. No TensorFlow.

Every format lists the finding's members, most central first, with the manifest path,
the image file's absolute path, the label, the model's prediction and confidence:

* ``csv``: ``finding_id, rank, path, file, label, predicted, confidence, exemplar``;
* ``fiftyone``: a JSON list of samples ``{"filepath", "tags", "ground_truth": {"label"},
  "prediction": {"label", "confidence"}}``; load with
  ``fo.Dataset().add_samples([fo.Sample(filepath=s["filepath"], tags=s["tags"],
  ground_truth=fo.Classification(**s["ground_truth"]), prediction=fo.Classification(**s["prediction"]))
  for s in json.load(open(path))])``;
* ``labelstudio``: Label Studio's task import JSON, one task per member with the model's
  prediction as a pre-annotation (``choices`` control ``label`` on image ``image``).
"""
from __future__ import annotations

import csv
import difflib
import json
from pathlib import Path

from audit import artifacts
from audit.data import resolve
from audit.errors import UsageError

FORMATS = {"csv": ".csv", "fiftyone": ".json", "labelstudio": ".json"}


def members(run_dir: Path, finding_id: str) -> list[dict]:
    """The members of ``finding_id`` in ``run_dir``: one dict per image, most central first.

    Raises ``UsageError`` naming the run folder, or the finding (with the nearest ID).
    """
    run_dir = Path(run_dir)
    if not (run_dir / artifacts.SUMMARY).is_file():
        raise UsageError(f"{run_dir}: not a finished run folder (no {artifacts.SUMMARY})")
    summary = artifacts.read_json(run_dir / artifacts.SUMMARY)
    found = {str(f.get("id")): f for f in summary.get("findings") or []}
    if finding_id not in found:
        near = difflib.get_close_matches(finding_id, list(found), n=1, cutoff=0.6)
        raise UsageError(f"--finding {finding_id}: not a finding of {run_dir}"
                         + (f" (did you mean {near[0]}?)" if near else f" (findings: {', '.join(found) or 'none'})"))
    finding = found[finding_id]
    root = Path((artifacts.read_json(run_dir / artifacts.RUN_JSON).get("data") or {}).get("root") or ".") \
        if (run_dir / artifacts.RUN_JSON).is_file() else Path(".")
    predictions = artifacts.read_table(run_dir / artifacts.PREDICTIONS).drop_duplicates("path").set_index("path")
    exemplars = set(finding.get("exemplars") or ())
    out = []
    for rank, path in enumerate(finding.get("members") or [], start=1):
        row = predictions.loc[path] if path in predictions.index else None
        confidence = None if row is None or row["confidence"] != row["confidence"] else round(float(row["confidence"]), 6)
        out.append({"finding_id": finding_id, "rank": rank, "path": path, "file": str(resolve(root, path).resolve()),
                    "label": None if row is None else str(row["label"]),
                    "predicted": None if row is None or row["predicted"] is None else str(row["predicted"]),
                    "confidence": confidence, "exemplar": path in exemplars})
    return out


def export(run_dir: Path, finding_id: str, fmt: str, out: Path | None = None) -> Path:
    """Write the members of ``finding_id`` of the run folder ``run_dir`` as ``fmt`` (``FORMATS``) to ``out``
    (default ``<run_dir>/export-<finding_id>-<fmt><ext>``); returns the path written."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
    rows = members(run_dir, finding_id)
    out = Path(out) if out is not None else Path(run_dir) / f"export-{finding_id}-{fmt}{FORMATS[fmt]}"
    if fmt == "csv":
        with open(out, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["finding_id"])
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "fiftyone":
        samples = [{"filepath": r["file"], "tags": [finding_id], "ground_truth": {"label": r["label"]},
                    "prediction": {"label": r["predicted"], "confidence": r["confidence"]}} for r in rows]
        out.write_text(json.dumps(samples, indent=1), encoding="utf-8")
    else:
        tasks = [{"data": {"image": r["file"], "path": r["path"], "label": r["label"], "finding": finding_id},
                  "predictions": [{"model_version": "cnn-audit", "score": r["confidence"],
                                   "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                               "value": {"choices": [r["predicted"]]}}]}]} for r in rows]
        out.write_text(json.dumps(tasks, indent=1), encoding="utf-8")
    return out
