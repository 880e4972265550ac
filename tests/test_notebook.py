"""examples/quickstart.ipynb executed with nbclient, as a reader runs it in Jupyter.

Uses the demo cache of `make demo` (reports/.cache/demo; trained once when missing): the
notebook runs in a copy of the examples folder whose ../reports/.cache/demo links there.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _outputs(cell) -> list[dict]:
    return [o for o in cell.get("outputs", []) if o.get("output_type") in ("display_data", "execute_result")]


@pytest.mark.slow
def test_quickstart_notebook_runs_and_shows_the_findings(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    cache = ROOT / "reports" / ".cache" / "demo"
    cache.mkdir(parents=True, exist_ok=True)
    (tmp_path / "reports" / ".cache").mkdir(parents=True)
    (tmp_path / "reports" / ".cache" / "demo").symlink_to(cache, target_is_directory=True)
    (tmp_path / "examples").mkdir()
    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))   # the kernel imports this checkout's audit
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path / "examples")}}).execute()   # raises on a cell error

    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    summary = json.loads((tmp_path / "reports" / "notebook" / "summary.json").read_text())
    ids = [f["id"] for f in summary["findings"]]
    top = summary["findings"][0]
    assert ids and (top["true_label"], top["predicted_label"]) == ("pool", "bathroom")

    html = [o["data"]["text/html"] for c in code for o in _outputs(c) if "text/html" in o["data"]]
    cards = [h for h in html if 'class="cnn-audit"' in h]
    assert cards and 'alt="cue montage of' in cards[0] and all(i in cards[0] for i in ids[:3])
    tables = [h for h in html if "<table" in h and "true_label" in h and "predicted_label" in h]
    assert tables and all(i in tables[0] for i in ids), "the findings table is missing from the output"
    assert any("image/png" in o["data"] for c in code for o in _outputs(c)), "explain showed no picture"
