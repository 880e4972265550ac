"""Cost and acceptance figures of the trust stage on the demo, in one run.

Runs ``audit demo`` once in a fresh process (as a user runs it) with the three
default attribution methods (Grad-CAM, integrated gradients, occlusion) and the
shipped ``trust.*`` defaults, then reads the run folder:

* cost: the trust stage's time over the attribute stage's time, both from the
  same run's ``run.json`` (target: <= 20%);
* faithfulness: per method, deletion and insertion AUC against the uniform
  random maps of the same run (mean over seeds, and the spread of the seeds), and
  the margins (random minus method for deletion, method minus random for insertion);
* sanity: the Spearman rank correlation (and SSIM) of each method's maps per step
  of cascading randomization, and of the random-logit test;
* agreement and the IG completeness gap.

Writes ``trust.json`` and ``trust.md`` into ``--out`` and prints the acceptance figures.

    python benchmarks/trust.py --out benchmarks/results [--cache reports/.cache/demo]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["gradcam", "integrated_gradients", "occlusion"]
MAX_RATIO = 0.20
MAX_FINAL_SPEARMAN = 0.3


def run_demo(run_dir: Path, cache: Path) -> tuple[dict, dict]:
    """``audit demo`` into ``run_dir``; returns ``(run.json, summary.json)``."""
    command = [sys.executable, "-m", "audit.cli", "demo", "--out", str(run_dir), "--quiet", "--cache", str(cache),
               "--set", f"attribution.methods=[{','.join(METHODS)}]"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"audit demo failed ({result.returncode}): {result.stderr[-2000:]}")
    return (json.loads((run_dir / "run.json").read_text()), json.loads((run_dir / "summary.json").read_text()))


def figures(run: dict, summary: dict) -> dict:
    timings = run["timings"]
    trust = summary["trust"]
    random = trust["random"]
    methods = {}
    for name, m in trust["methods"].items():
        f, s = m["faithfulness"], m["sanity"]
        methods[name] = {
            "deletion_auc": f["deletion_auc"], "insertion_auc": f["insertion_auc"],
            "deletion_margin": f["deletion_margin"], "insertion_margin": f["insertion_margin"],
            "beats_random": bool(f["deletion_margin"] > 0 and f["insertion_margin"] > 0),
            "cascading": [{"top_layer": c["top_layer"], "spearman": c["spearman"], "ssim": c["ssim"]}
                          for c in s["cascading"]],
            "final_spearman": s["final_spearman"], "random_logit": s["random_logit"],
            "sanity_passed": s["passed"], "faithful": m["badge"]["faithful"],
        }
    return {
        "attribute_s": timings["attribute"], "trust_s": timings["trust"],
        "ratio": timings["trust"] / timings["attribute"],
        "n_attributed": trust["agreement"]["n_images"], "sample": trust["sample"], "settings": trust["settings"],
        "random": {k: random[k] for k in ("deletion_auc", "insertion_auc", "deletion_auc_per_seed",
                                          "insertion_auc_per_seed")},
        "methods": methods,
        "agreement": {k: trust["agreement"][k] for k in ("mean", "pairs")},
        "completeness_gap": trust["completeness_gap"] and {k: trust["completeness_gap"][k] for k in
                                                           ("n", "mean_abs", "median_abs", "p90_abs",
                                                            "median_relative")},
        "findings": [{"id": f["id"], "pair": f"{f['true_label']} -> {f['predicted_label']}", **f["trust"]}
                     for f in summary["findings"]],
    }


def acceptance(r: dict) -> list[str]:
    lines = [f"trust <= {MAX_RATIO:.0%} of attribute: {r['ratio'] <= MAX_RATIO} "
             f"({r['trust_s']:.2f} s / {r['attribute_s']:.2f} s = {r['ratio']:.1%})"]
    rd, ri = r["random"]["deletion_auc"], r["random"]["insertion_auc"]
    for name, m in r["methods"].items():
        lines.append(f"{name} beats random maps: {m['beats_random']} (deletion AUC {m['deletion_auc']:.3f} vs "
                     f"{rd:.3f}, margin {m['deletion_margin']:+.3f}; insertion AUC {m['insertion_auc']:.3f} vs "
                     f"{ri:.3f}, margin {m['insertion_margin']:+.3f})")
    g = r["methods"].get("gradcam")
    if g:
        per_step = ", ".join(f"{c['spearman']:+.2f}" for c in g["cascading"])
        lines.append(f"Grad-CAM Spearman < {MAX_FINAL_SPEARMAN} by the last randomization step: "
                     f"{g['final_spearman'] < MAX_FINAL_SPEARMAN} (per step: {per_step})")
    return lines


def markdown(r: dict) -> str:
    out = ["# Trust stage on the demo (one run)", "",
           f"Attribute {r['attribute_s']:.2f} s, trust {r['trust_s']:.2f} s: **{r['ratio']:.1%}** of attribute "
           f"(target <= {MAX_RATIO:.0%}). {r['n_attributed']} attributed images; faithfulness sample "
           f"{r['sample']['faithfulness']}, sanity sample {r['sample']['sanity']}, settings {r['settings']}.", "",
           "## Faithfulness (probability of the explained class; random = uniform random maps)", "",
           "| method | deletion AUC | random | margin | insertion AUC | random | margin | faithful |",
           "|---|---|---|---|---|---|---|---|"]
    rd, ri = r["random"]["deletion_auc"], r["random"]["insertion_auc"]
    for name, m in r["methods"].items():
        out.append(f"| {name} | {m['deletion_auc']:.3f} | {rd:.3f} | {m['deletion_margin']:+.3f} | "
                   f"{m['insertion_auc']:.3f} | {ri:.3f} | {m['insertion_margin']:+.3f} | {m['faithful']} |")
    out += ["", f"Random-map AUC per seed: deletion {r['random']['deletion_auc_per_seed']}, "
                f"insertion {r['random']['insertion_auc_per_seed']}.", "",
            "## Sanity: cascading randomization (Spearman / SSIM to the original maps)", ""]
    names = list(r["methods"])
    first = r["methods"][names[0]]["cascading"] if names else []
    out += ["| step (down to) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k, step in enumerate(first):
        cells = [f"{r['methods'][n]['cascading'][k]['spearman']:+.2f} / {r['methods'][n]['cascading'][k]['ssim']:.2f}"
                 for n in names]
        out.append(f"| {k + 1} ({step['top_layer']}) | " + " | ".join(cells) + " |")
    rl = ", ".join(f"{n}: {r['methods'][n]['random_logit']['spearman']:+.2f}" for n in names
                   if r["methods"][n]["random_logit"])
    passed = ", ".join(f"{n} {r['methods'][n]['sanity_passed']}" for n in names)
    out += ["", f"Random-logit Spearman: {rl}.", f"Sanity passed: {passed}.", "",
            f"Agreement (mean Spearman between methods): {r['agreement']}.", "",
            f"IG completeness gap: {r['completeness_gap']}.", "",
            "## Findings", "", "| finding | pair | agreement | lift | level |", "|---|---|---|---|---|"]
    for f in r["findings"]:
        out.append(f"| {f['id']} | {f['pair']} | {f['agreement']} | {f['lift']} | {f['level']} |")
    out += ["", "## Acceptance", ""] + [f"- {line}" for line in acceptance(r)]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--cache", type=Path, default=ROOT / "reports" / ".cache" / "demo")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.out / "runs" / "trust-demo"
    run, summary = run_demo(run_dir, args.cache)
    result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
              "methods": METHODS, "run_dir": str(run_dir), **figures(run, summary)}
    (args.out / "trust.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "trust.md").write_text(markdown(result))
    print("\n".join(acceptance(result)))
    print(f"wrote {args.out / 'trust.json'} and {args.out / 'trust.md'}")


if __name__ == "__main__":
    main()
