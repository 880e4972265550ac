"""The attribution plan (audit.stages.plan): pure numbers first, then the --budget flag and one run."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest

from audit.config import resolve
from audit.config.checks import seconds_of
from audit.stages.plan import allocate, full_methods, groups, make_plan, probe_rows
from tests.conftest import audit_command

COSTS = {"gradcam": 0.01, "integrated_gradients": 0.5, "occlusion": 0.3}
FULL = ("gradcam",)


@pytest.mark.parametrize("text, seconds", [("45m", 2700), ("90s", 90), ("1.5h", 5400), ("600", 600), (120, 120),
                                           (" 2M ", 120), (None, None)])
def test_durations(text, seconds):
    assert seconds_of(text) == seconds


@pytest.mark.parametrize("text", ["45x", "0", "-5m", "m", "", "inf", True, "1e999h"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        seconds_of(text)


def test_without_budget_costly_methods_are_capped_per_group():
    counts = allocate([200, 40, 10], [32, 0, 0], COSTS, 0.0, FULL, None, 64, 16)
    assert [c["gradcam"] for c in counts] == [200, 40, 10]
    assert [c["integrated_gradients"] for c in counts] == [64, 40, 10]
    assert all(c["occlusion"] == c["integrated_gradients"] for c in counts)
    assert allocate([200], [0], COSTS, 0.0, FULL, None, None, 16)[0]["occlusion"] == 200   # null: no cap


def test_costly_methods_are_capped_in_all_most_suspicious_groups_first():
    counts = allocate([200, 40, 10, 30], [8, 0, 0, 0], COSTS, 0.0, FULL, None, 16, 8, total=20)
    assert [c["gradcam"] for c in counts] == [200, 40, 10, 30]         # the first method still covers all
    assert [c["occlusion"] for c in counts] == [8, 8, 4, 0]            # the probe's 8 count towards the 20
    assert sum(c["occlusion"] for c in allocate([200] * 30, [0] * 30, COSTS, 0.0, FULL, None, 16, 8,
                                                  total=48)) == 48     # not 30 pairs x 16
    assert [c["occlusion"] for c in allocate([200, 40], [0, 0], COSTS, 0.0, FULL, None, 16, 8,
                                             total=48)] == [16, 16]    # few pairs: the per-pair cap binds


def _spent(sizes, done, counts, overhead=0.0):
    return sum((c["gradcam"] - d) * (COSTS["gradcam"] + overhead)
               + sum((c[m] - d) * COSTS[m] for m in ("integrated_gradients", "occlusion"))
               for c, d in zip(counts, done))


@pytest.mark.parametrize("seconds", [0.0, 1.0, 5.0, 30.0, 60.0, 200.0, 1e6])
def test_budget_is_respected_and_priorities_hold(seconds):
    sizes, done = [100, 60, 30, 30], [16, 0, 0, 0]
    counts = allocate(sizes, done, COSTS, 0.002, FULL, seconds, 64, 16)
    assert _spent(sizes, done, counts, 0.002) <= seconds + 1e-9
    full = [c["gradcam"] for c in counts]
    sample = [c["occlusion"] for c in counts]
    assert all(d <= s <= f <= n for d, s, f, n in zip(done, sample, full, sizes))
    # the full method covers every group before a costly method gets more than the probe
    if any(s > d for s, d in zip(sample, done)):
        assert full == sizes
    # a less suspicious group never gets more than the minimum sample while a more suspicious one lacks it
    for g in range(1, len(sizes)):
        if sample[g] > max(16, done[g]):
            assert all(sample[h] >= min(64, sizes[h]) for h in range(g))
        if sample[g] > done[g]:
            assert all(sample[h] >= min(16, sizes[h]) for h in range(g))


def test_small_budget_gives_the_most_suspicious_groups_their_minimum_sample_first():
    per = COSTS["integrated_gradients"] + COSTS["occlusion"]
    gradcam_all = 220 * (COSTS["gradcam"])
    counts = allocate([100, 60, 30, 30], [0, 0, 0, 0], COSTS, 0.0, FULL, gradcam_all + 20 * per, 64, 16)
    assert [c["gradcam"] for c in counts] == [100, 60, 30, 30]
    assert [c["occlusion"] for c in counts] == [16, 4, 0, 0]


def test_cheap_methods_are_full_by_measured_cost():
    costs = {"occlusion": 0.3, "gradcam": 0.01, "saliency": 0.02, "integrated_gradients": 0.5}
    assert full_methods(tuple(costs), costs) == ("occlusion", "gradcam", "saliency")   # the first always


def _tables():
    rows, labels, predicted = [], [], []
    # 100 images per class; a -> b: 30 errors (suspicious), c -> b: 6 errors, a -> c: 5 errors
    for name, wrong in (("a", {"b": 30, "c": 5}), ("b", {}), ("c", {"b": 6})):
        out = [p for p, n in wrong.items() for _ in range(n)]
        labels += [name] * 100
        predicted += out + [name] * (100 - len(out))
    predictions = pd.DataFrame({"row": np.arange(300), "label": labels, "predicted": predicted,
                                "confidence": np.linspace(0.5, 0.99, 300), "margin": np.linspace(0, 1, 300),
                                "error": None})
    wrong = predictions[predictions["label"] != predictions["predicted"]]
    selection = wrong.assign(reason="misclassified", true_label=wrong["label"], pair_label=wrong["predicted"])
    right = predictions[predictions["label"] == "b"].iloc[:10]
    contrast = right.assign(reason="contrast", true_label="b", pair_label="b")
    selection = pd.concat([selection, contrast])
    selection["pair"] = selection["true_label"] + " -> " + selection["pair_label"]
    return predictions, selection.reset_index(drop=True)


def test_groups_most_suspicious_first_in_stratified_order():
    predictions, selection = _tables()
    ordered = groups(selection, predictions)
    assert [g.name for g in ordered] == ["a -> b", "c -> b", "a -> c", "b (contrast)"]
    top = ordered[0]
    assert sorted(top.rows) == sorted(selection.loc[selection["pair"] == "a -> b", "row"])
    ranked = selection[selection["pair"] == "a -> b"].sort_values("confidence", ascending=False)["row"].tolist()
    prefix = sorted(ranked.index(r) for r in top.rows[:6])   # a prefix spreads over the confidence ranking
    assert prefix[0] == 0 and prefix[-1] >= 20 and min(np.diff(prefix)) >= 3
    assert probe_rows(ordered, 32).tolist() == list(top.rows) + list(ordered[1].rows[:2])


def test_make_plan_fits_the_budget_and_says_so():
    predictions, selection = _tables()
    config = resolve(None, ["out=/tmp/unused", "run.budget=3m", "attribution.sample_per_pair=16"])
    probe = {"rows": probe_rows(groups(selection, predictions), 8).tolist(),
             "seconds": {"gradcam": 0.08, "integrated_gradients": 8.0, "occlusion": 4.0},
             "wall": 12.5, "forward": 0.04}
    plan = make_plan(config, selection, predictions, probe, spent=60.0)
    assert plan.full == ("gradcam",) and plan.costly == ("integrated_gradients", "occlusion")
    assert plan.estimate <= 180 * 0.95 + 1e-6 and plan.attribute > 0
    assert len(plan.rows("gradcam")) == len(selection)
    sampled = plan.rows("occlusion")
    assert set(probe["rows"]) <= set(sampled.tolist()) and set(sampled.tolist()) <= set(plan.rows("gradcam").tolist())
    lines = plan.lines()
    assert lines[0].startswith("a -> b: 30 images; 30 x gradcam, ")
    assert any(line.startswith("per image: ") and "estimated" in line for line in lines)
    assert json.loads(json.dumps(plan.to_json()))["groups"][0]["counts"]["gradcam"] == 30

    # a budget too small for the later stages: Grad-CAM (it drives discovery) still covers the selection,
    # the costly methods get nothing beyond the probe, and trust and internals are left to the clock
    tiny = make_plan(resolve(None, ["out=/tmp/unused", "run.budget=75s"]), selection, predictions, probe, spent=60.0)
    assert len(tiny.rows("gradcam")) == len(selection)                   # 38 of 51 before
    assert set(tiny.rows("occlusion").tolist()) == set(probe["rows"])

    unlimited = make_plan(resolve(None, ["out=/tmp/unused"]), selection, predictions, probe, spent=60.0)
    assert [c[2] for c in unlimited.counts] == [13, 6, 5, 8] and unlimited.budget is None   # 8 each, then 16: 32 in all
    assert plan.estimate < unlimited.estimate


@pytest.mark.parametrize("command", ["run", "demo"])
@pytest.mark.parametrize("value", ["45x", "0", "-5m"])
def test_bad_budget_flag_exits_2_with_one_line(tmp_path, command, value):
    args = [command, f"--budget={value}", "--out", tmp_path / "run"]
    if command == "run":
        args += ["--model", tmp_path / "m.keras", "--data", tmp_path]
    result = subprocess.run(audit_command(*args), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"audit: error: `run.budget` must be a duration such as 90s, 45m or 1.5h (a plain number: seconds) "
        f"or null (got '{value}')"]
    assert not (tmp_path / "run").exists()


def test_budgeted_run_prints_records_and_follows_its_plan(audit_case, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(audit_command(
        "run", "--model", audit_case / "model.keras", "--data", audit_case / "manifest.csv",
        "--classes", audit_case / "classes.txt", "--out", out, "--budget", "3m",
        "--set", "attribution.sample_per_pair=6", "--set", "attribution.batch_size=4"),
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    printed = [line.split("plan: ", 1)[1] for line in (result.stdout + result.stderr).splitlines() if "plan: " in line]
    plan = json.loads((out / "run.json").read_text())["plan"]
    assert plan["budget"] == 180 and plan["estimate"] <= 180
    summary_line = next(i for i, line in enumerate(printed) if line.startswith("per image: "))
    assert printed[summary_line].endswith("(budget 3.0 min)") and summary_line == len(plan["groups"])
    assert all(line.startswith("capped to fit the budget: ") for line in printed[summary_line + 1:])
    assert printed[0].startswith(f"{plan['groups'][0]['name']}: ")
    from audit import artifacts

    for method in plan["methods"]:   # the maps stored are the plan's, method by method
        stored = artifacts.read_maps(out, method)[0]
        planned = sum(g["counts"][method] for g in plan["groups"])
        assert len(stored) == len(set(stored.tolist()))
        # under load the run may fall behind its plan: the clock then stops a costly method, and says so
        late = [line for line in plan.get("skipped", []) if line.startswith(f"{method}: ")]
        assert len(stored) == planned if not late else planned - int(late[0].split()[1]) == len(stored)
    costly = [m for m in plan["methods"] if m not in plan["full"]]
    assert costly and all(g["counts"][m] <= max(6, 4) for g in plan["groups"] for m in costly)
    assert any(g["counts"]["gradcam"] > g["counts"][costly[0]] for g in plan["groups"])
    summary = json.loads((out / "summary.json").read_text())   # discovery works on the partly sampled maps
    assert (summary["findings"][0]["true_label"], summary["findings"][0]["predicted_label"]) == ("red", "green")
    assert "Attribution plan" in (out / "index.html").read_text()


def test_later_stages_are_capped_to_fit_a_small_budget():
    from audit.stages.later import later_caps, later_seconds, with_caps

    config = resolve(None, ["out=/tmp/unused"])
    costs = {"gradcam": 0.02, "integrated_gradients": 3.0, "occlusion": 3.0}
    full = sum(later_seconds(config, 300, 240, 0.1, costs).values())
    caps = later_caps(config, 200.0, full)
    assert caps["trust.sample"] < config.trust.sample and caps["internals.steps"] < config.internals.steps
    capped = with_caps(config, caps)
    assert capped.trust.sample == caps["trust.sample"] and capped.select == config.select
    assert sum(later_seconds(capped, 300, 240, 0.1, costs).values()) < full
    assert later_caps(config, 10 * full, full) == {}
    # the full methods' coverage of every selected image comes before the later stages' samples
    roomy, tighter = later_caps(config, 1000.0, full), later_caps(config, 1000.0, full, cover=800.0)
    assert tighter["trust.sample"] < roomy["trust.sample"] and tighter["internals.steps"] < roomy["internals.steps"]
    # no caps while the later stages and what the attribution wants fit together, whatever their share
    assert later_caps(config, 1000.0, 600.0, cover=100.0, wanted=300.0) == {}
    assert later_caps(config, 1000.0, 600.0, cover=100.0, wanted=500.0)["trust.sample"] < config.trust.sample
    # a budget far too small for them: the internals pictures (a fixed cost no cap lowers) go first
    assert "internals.findings" not in roomy and later_caps(config, 0.2 * full, full)["internals.findings"] == 0
    assert later_seconds(with_caps(config, later_caps(config, 0.2 * full, full)), 300, 240, 0.1, costs)["internals"] == 0


def test_run_past_its_budget_starts_no_more_costly_work_and_still_finishes(audit_case, tmp_path, monkeypatch):
    """The clock jumps past run.budget once the plan is made: the costly methods explain no more than the
    probe, trust and internals are not started, what was skipped is recorded and reported, and the run
    still ends with its findings."""
    from audit import artifacts, pipeline
    from audit.stages import later, plan as planning

    out = tmp_path / "run"
    config = resolve(None, ["run.budget=10m", "attribution.sample_per_pair=6", "attribution.batch_size=4"],
                     {"model.path": str(audit_case / "model.keras"), "data.path": str(audit_case / "manifest.csv"),
                      "data.classes": str(audit_case / "classes.txt"), "out": str(out)})
    late = {"by": 0.0}
    make_plan, clock = planning.make_plan, later.now

    def planned_then_late(*args, **kwargs):
        made = make_plan(*args, **kwargs)
        late["by"] = 3600.0   # from here on, the budget is long spent
        return made

    monkeypatch.setattr(planning, "make_plan", planned_then_late)
    monkeypatch.setattr(later, "now", lambda: clock() + late["by"])
    logs: list[str] = []
    summary = pipeline.run(config, log=logs.append)

    record = json.loads((out / "run.json").read_text())
    plan = record["plan"]
    costly = [m for m in plan["methods"] if m not in plan["full"]]
    probe = len(json.loads(next((out / "chunks").glob("attribute-*/part-00000.json")).read_text())["rows"])
    for method in plan["methods"]:
        stored = len(artifacts.read_maps(out, method)[0])
        planned = sum(g["counts"][method] for g in plan["groups"])
        assert stored == (probe if method in costly else planned), method
        if method in costly:
            assert planned > probe   # the plan wanted more; the clock stopped it
    skipped = plan["skipped"]
    assert {line.split(":")[0] for line in skipped} == {*costly, "trust", "internals"}
    assert all(any(line in log for log in logs) for line in skipped)
    assert "trust" not in record["timings"] and "render" in record["timings"]
    assert summary["trust"] is None and (out / "summary.json").exists()
    assert (summary["findings"][0]["true_label"], summary["findings"][0]["predicted_label"]) == ("red", "green")
    assert "Not started, to keep within the budget" in (out / "index.html").read_text()


def test_trust_drops_its_sanity_checks_first_when_the_clock_runs_short(monkeypatch):
    from audit.stages import later

    config = resolve(None, ["out=/tmp/unused", "trust.sanity_sample=4"])
    monkeypatch.setattr(later, "now", lambda: 1000.0)
    estimates = {"trust": 10.0, "sanity": 50.0, "verify": 5.0, "internals": 30.0, "discover_render": 5.0}
    logs: list[str] = []
    plan = {"later": estimates}
    assert later.trust_within(config, plan, 1100.0, logs.append) is config and "skipped" not in plan
    assert later.trust_within(config, plan, None, logs.append) is config
    curves_only = later.trust_within(config, plan, 1030.0, logs.append)   # 30 s: the curves (20 s) but no sanity
    assert curves_only.trust.sanity_sample == 0 and curves_only.trust.sample == config.trust.sample
    assert plan["skipped"] == [logs[-1].split("budget: ")[1]] and logs[-1].startswith("  budget: trust sanity checks")
    assert later.trust_within(config, plan, 1015.0, logs.append) is None and plan["skipped"][-1].startswith("trust: ")
    assert not later.over_budget("internals", plan, 1040.0, logs.append)
    assert later.over_budget("internals", plan, 1030.0, logs.append) and plan["skipped"][-1].startswith("internals: ")
    off = resolve(None, ["out=/tmp/unused", "trust.enabled=false"])
    assert later.trust_within(off, {"later": estimates}, None, logs.append) is None
