"""What looking beyond the errors costs: the audit with and without strategies, property tests and links.

Issue 14 asks that the strategy audit, the property (global-cue) tests and the
linking add at most 25% to the audit's wall time, on the demo and on the scale
benchmark's 8k set. Each data set is audited ``--repeats`` times in each of two
variants, alternating (so load from other jobs falls on both alike), with the
shipped defaults otherwise:

* ``without``: ``strategies.enabled=false verify.properties=false link.enabled=false``;
* ``with``: the defaults (all three on).

Both variants run the predict stage's fused pass (its cost against logits alone is
``benchmarks/predict.py``'s). Each audit runs in a fresh run folder through
``scale.audit_once`` (wall and CPU time of the audit process, per-stage times).
The ratio is the median over rounds of ``with / without`` in the same round, for
wall time and for CPU time (which hardly depends on other jobs).

    python benchmarks/cost.py [--out benchmarks/results] [--repeats 3] [--sizes demo,8000]

Writes ``cost.json`` and ``cost.md`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

import scale

OFF = ("strategies.enabled=false", "verify.properties=false", "link.enabled=false")
MAX_RATIO = 1.25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="demo,8000", help="demo and/or scale data set sizes")
    parser.add_argument("--cache", default="reports/.cache/demo", help="demo cache (model, classes, audit set)")
    parser.add_argument("--data", default=None, help="scale data cache (default <out>/scale-data)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from audit import demo

    assets = demo.prepare(Path(args.cache), log=lambda msg: print(msg, flush=True))
    wanted = [s.strip() for s in args.sizes.split(",") if s.strip()]
    sizes = [int(s) for s in wanted if s != "demo"]
    sets = {}
    if "demo" in wanted:
        sets["demo"] = Path(assets.manifest)
    if sizes:
        data = Path(args.data) if args.data else out / "scale-data"
        scale.prepare_data(data, sizes, 0, os.cpu_count() or 1)
        sets.update({str(n): data / f"manifest-{n}.csv" for n in sizes})
    script = Path(sys.executable).parent / "audit"
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "audit.cli"]
    rows = []
    for name, manifest in sets.items():
        runs = {"without": [], "with": []}
        for r in range(args.repeats):
            order = ("without", "with") if r % 2 == 0 else ("with", "without")
            for variant in order:
                a = scale.audit_once(exe, assets.model_path, manifest, assets.classes,
                                     out / "cost-runs" / f"{name}-{variant}-r{r}", 0.2,
                                     OFF if variant == "without" else ())
                print(f"cost: {name} round {r + 1} {variant}: wall {a['wall']:.1f} s, CPU {a['cpu']:.1f} s, "
                      f"findings {a['findings']}, stages {a['stage_seconds']}", flush=True)
                runs[variant].append(a)
        wall = float(np.median([w["wall"] / o["wall"] for w, o in zip(runs["with"], runs["without"])]))
        cpu = float(np.median([w["cpu"] / o["cpu"] for w, o in zip(runs["with"], runs["without"])]))
        stages = {k: round(float(np.median([w["stage_seconds"].get(k, 0) - o["stage_seconds"].get(k, 0)
                                            for w, o in zip(runs["with"], runs["without"])])), 2)
                  for k in ("discover", "verify")}
        rows.append({"data": name, "wall_ratio": round(wall, 3), "cpu_ratio": round(cpu, 3),
                     "extra_seconds": stages,
                     "without_wall": [a["wall"] for a in runs["without"]], "with_wall": [a["wall"] for a in runs["with"]],
                     "findings": [a["findings"] for a in runs["with"]]})
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU; load {os.getloadavg()}",
              "max_ratio": MAX_RATIO, "rows": rows}
    (out / "cost.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Cost of strategies, property tests and links", "", result["machine"], "",
             "| data | wall with / without | CPU with / without | extra discover s | extra verify s |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['data']} | {r['wall_ratio']} | {r['cpu_ratio']} | {r['extra_seconds']['discover']} | "
              f"{r['extra_seconds']['verify']} |" for r in rows]
    lines += ["", f"Target: wall ratio <= {MAX_RATIO}: " + ", ".join(
        f"{r['data']} {'met' if r['wall_ratio'] <= MAX_RATIO else 'NOT met'}" for r in rows)]
    (out / "cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
