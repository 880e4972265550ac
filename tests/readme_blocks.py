"""The README's fenced shell blocks, and a scratch folder laid out like the repository to run them in."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN_INPUTS = ("model.keras", "triage.yaml", "pipelines/nightly.yaml")


def shell_blocks() -> list[tuple[int, str]]:
    """(line number, text) of every ```sh block of the README, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    out = []
    for match in re.finditer(r"^```sh\n(.*?)^```", text, re.S | re.M):
        line = text[:match.start()].count("\n") + 1
        out.append((line, match.group(1).replace("\\\n", " ")))
    return out


def commands(block: str) -> list[str]:
    """The block's command lines, comments stripped."""
    lines = [re.sub(r"\s+#.*$", "", raw).strip() for raw in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def kind(block: str) -> str:
    first = commands(block)[0]
    if first.startswith(("make ", "pip install")):
        return "ci"
    if any(name in block for name in OWN_INPUTS):
        return "own-inputs"
    return "runs"


BLOCKS = shell_blocks()


def scratch(tmp_path: Path) -> tuple[Path, dict]:
    """A folder laid out like the repository, and the environment to run the README's commands in.

    The demo caches (the standard model and night 2's ``--rail-rate 0.05`` model) are the
    checkout's own, so that a model is trained once per checkout, not once per test."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "pipelines").symlink_to(ROOT / "pipelines")
    (tmp_path / "reports" / ".cache").mkdir(parents=True)
    for name in ("demo", "demo-rails-0.05"):
        (ROOT / "reports" / ".cache" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "reports" / ".cache" / name).symlink_to(ROOT / "reports" / ".cache" / name)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return tmp_path, env


def nightly_story() -> str:
    """The README's one block that runs whole: the demo's three nights."""
    (block,) = [b for _, b in BLOCKS if kind(b) == "runs"]
    return block
