"""The demo end to end through the CLI: the audit must find the planted rails.

Reads the README's night 1 (``demo_nights``: ``audit demo`` with default settings, on
the demo cache of `make demo`, reports/.cache/demo), which the session runs once.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_finds_rails_in_pools(demo_nights):
    folder, result = demo_nights
    out = folder / "reports" / "night1"
    assert result.returncode == 0, result.stderr[-2000:]
    assert "report: " in result.stdout and "#1 " in result.stdout

    summary = json.loads((out / "summary.json").read_text())
    predictions = pd.read_parquet(out / "predictions.parquet")
    pools = predictions[predictions["label"] == "pool"]
    railed, clean = pools[pools["cue"] == 1], pools[pools["cue"] == 0]
    assert (railed["predicted"] == "bathroom").mean() >= 0.5
    assert (clean["predicted"] == "bathroom").mean() <= 0.1

    top = summary["findings"][0]
    assert (top["true_label"], top["predicted_label"]) == ("pool", "bathroom")
    railed_paths = set(railed["path"])
    members = set(top["members"])
    assert len(members & railed_paths) >= 0.8 * len(members)
    fooled = set(railed.loc[railed["predicted"] == "bathroom", "path"])
    assert len(members & fooled) >= 0.5 * len(fooled)

    bias = json.loads((out / "demo.json").read_text())["bias"]
    assert bias["pool_with_cue"]["n"] == len(railed)
    assert f'id="{top["id"]}"' in (out / "index.html").read_text()
