"""Every fenced shell block of the README runs as printed.

Each block runs in a scratch folder laid out like the repository (``.venv``,
``pipelines/``, the demo cache under ``reports/.cache/demo``), with this checkout
first on ``PYTHONPATH``:

* blocks that install or run the suite (``make ...``, ``pip install ...``) are what CI
  itself runs, so they are not run again here;
* blocks whose inputs are the reader's own (a ``model.keras``, ``images/``, a
  ``triage.yaml``, the ``/models/...`` of ``pipelines/nightly.yaml``) must get as far as
  that input: exit 2 with one line naming it, never a complaint about the command or the
  config (``--set run_id=$(date +%F)`` keeps the date a string);
* the demo's nightly story runs whole (slow), and must say what the README says.
"""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.readme_blocks import BLOCKS, commands, kind, scratch


def test_the_readme_has_the_blocks_this_test_knows():
    kinds = [kind(b) for _, b in BLOCKS]
    assert kinds.count("ci") == 2 and kinds.count("runs") == 1 and kinds.count("own-inputs") >= 3, kinds


@pytest.mark.parametrize("block", [b for _, b in BLOCKS if kind(b) == "own-inputs"],
                         ids=[f"line{n}" for n, b in BLOCKS if kind(b) == "own-inputs"])
def test_commands_on_own_inputs_get_as_far_as_the_input(block, tmp_path):
    cwd, env = scratch(tmp_path)
    for command in commands(block):
        result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=300)
        last = (result.stderr.strip().splitlines() or [""])[-1]
        assert result.returncode == 2, (command, result.stdout[-500:], result.stderr[-500:])
        assert re.fullmatch(r"audit: error: --(model|data|classes) \S+: no such file( or folder)?", last), (command, last)


@pytest.mark.slow
def test_the_demos_nightly_story_runs_as_told(demo_nights):
    cwd, result = demo_nights
    out = result.stdout
    assert result.returncode == 0 and out.strip().splitlines()[-1] == "1", (out[-3000:], result.stderr[-2000:])
    assert re.search(r"resolved F-dd24e18e: pool -> bathroom", out), out[-3000:]
    night3 = (cwd / "reports" / "night3" / "summary.md").read_text()
    assert "max\\_new\\_finding\\_score" in night3 and "**FAIL**" in night3
    # night 2 as the README tells it: rails resolved, yet a new pool -> bathroom finding, bathroom -> pool
    # errors up, a cue found, lower accuracy, and the gates pass
    one, two = (json.loads((cwd / "reports" / n / "summary.json").read_text()) for n in ("night1", "night2"))
    assert two["status"] == "pass" and two["verdict"]["state"] == "cue_found"
    assert "F-dd24e18e" in [r["id"] for r in two["resolved"]]   # (with the bathroom strategy of the same cue)
    assert any(f["id"] == "F-dd24e18e-2" and f["status"] == "new" and f["true_label"] == "pool"
               and f["predicted_label"] == "bathroom" for f in two["findings"])
    rates = {(p["true_label"], p["predicted_label"]): p for p in two["pairs"]}
    assert rates[("bathroom", "pool")]["error_rate"] > rates[("bathroom", "pool")]["baseline_error_rate"] + 0.1
    assert two["metrics"]["accuracy"] < one["metrics"]["accuracy"]
