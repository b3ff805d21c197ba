"""The report of a healed run (#23): the Healing section against the plain search in OUT/plain,
healed recommendations labelled, and the drop-vs-speedup plot's points (sets failing the per-task
guard hollow, never on a Pareto front; healed and plain series)."""

import json
import shutil

import pytest

from blockprune.healing.heal import DEFAULT_RIDGE

from blockprune import api, report
from blockprune.report import healing as heal_report, latency as latency_report, plots
from blockprune.analysis.advice import by_k, recommendations
from blockprune.report.text import fmt_set, pct
from blockprune.runs.store import Store

T = 0.05


def cand(removed, mean, tasks, upper95=None, ci95=None):
    """A hand-built analysis candidate: tasks = {name: (drop, lo, hi)}."""
    return {"removed": list(removed), "mean_drop": mean, "std_drop": 0.0, "ci95": ci95 or [mean - 0.01, mean + 0.01],
            "upper95": mean + 0.01 if upper95 is None else upper95, "upper80": mean,
            "drops": {t: d for t, (d, _, _) in tasks.items()},
            "task_ci95": {t: [lo, hi] for t, (_, lo, hi) in tasks.items()}}


def speed(d, lo=None, hi=None):
    return {"decode": d, "ideal": 1.5, "decode_paired": {"min": lo or d - 0.02, "median": d, "max": hi or d + 0.02}}


# ---- which points are on the front, which are hollow (no model) ------------------------------
def test_sets_failing_the_guard_are_hollow_and_never_on_the_front():
    ok = {"a": (0.01, 0.0, 0.02), "b": (0.01, 0.0, 0.03)}
    cands = [cand([1], 0.01, ok, ci95=[0.0, 0.02]),
             # the fastest and lowest on average, but task b is significantly above the tolerance
             cand([2], 0.005, {"a": (-0.09, -0.12, -0.06), "b": (0.10, 0.08, 0.12)}),
             cand([1, 2], 0.04, {"a": (0.04, 0.02, 0.06), "b": (0.04, 0.01, 0.07)}),
             cand([3], 0.0, ok)]  # not measured: no point
    speeds = {(1,): speed(1.2, 1.15, 1.3), (2,): speed(1.5), (1, 2): speed(1.4)}
    pts = {tuple(p["removed"]): p for p in plots.speedup_points(cands, speeds, T)}
    assert set(pts) == {(), (1,), (2,), (1, 2)}
    assert [k for k, p in pts.items() if not p["guard"]] == [(2,)]
    # [2] would dominate [1] and [1, 2] (lower drop, faster): excluded, the others make the front
    assert {k for k, p in pts.items() if p["front"]} == {(), (1,), (1, 2)}
    assert pts[(1,)]["ci95"] == [0.0, 0.02] and pts[(1,)]["speedup_range"] == [1.15, 1.3]  # the error bars
    # a set passing the guard that another passing set dominates stays off the front (and filled)
    worse = cand([4], 0.03, ok)
    pts = {tuple(p["removed"]): p for p in plots.speedup_points(cands + [worse], {**speeds, (4,): speed(1.1)}, T)}
    assert pts[(4,)]["guard"] and not pts[(4,)]["front"]


def test_speedup_series_healed_and_plain(tmp_path):
    ok = {"a": (0.01, 0.0, 0.02)}
    healed = [cand([1], 0.01, ok), cand([1, 2], 0.02, ok)]
    plain = {"candidates": [cand([1], 0.03, ok), cand([3], 0.02, {"a": (0.2, 0.1, 0.3)})]}
    speeds = {(1,): speed(1.2), (1, 2): speed(1.5)}
    series = plots.speedup_series(healed, speeds, T, True, plain, {(3,): speed(1.25)})
    assert list(series) == ["healed", "plain"]
    by = {name: {tuple(p["removed"]): p for p in pts} for name, pts in series.items()}
    assert by["healed"][(1,)]["drop"] == 0.01 and by["plain"][(1,)]["drop"] == 0.03  # the plain run's drops
    assert by["plain"][(1,)]["speedup"] == 1.2  # the same set, the same speed
    assert not by["plain"][(3,)]["guard"] and not by["plain"][(3,)]["front"]
    assert list(plots.speedup_series(healed, speeds, T)) == ["measured"]
    assert plots.plot_drop_vs_speedup(series, T, tmp_path / "p.png") and (tmp_path / "p.png").stat().st_size > 0
    assert not plots.plot_drop_vs_speedup({"measured": plots.speedup_points(healed, {}, T)}, T, tmp_path / "q.png")
    assert not (tmp_path / "q.png").exists()


# ---- the key finding (no model) ---------------------------------------------------------------
def _recs(cands, t=T):
    return recommendations(by_k(cands), t)


def test_the_finding_names_what_stops_the_next_k():
    ok = {"a": (0.01, 0.0, 0.02), "b": (0.01, 0.0, 0.03)}
    one = cand([1], 0.01, ok)
    # both tasks fail the guard: b binds, its lower bound is the highest (a's drop is the larger)
    guard_fails = cand([1, 2], 0.065, {"a": (0.07, 0.052, 0.09), "b": (0.06, 0.055, 0.07)}, upper95=0.08)
    plain = [cand([1], 0.02, ok)]
    f = heal_report.finding({"candidates": [one, guard_fails]}, _recs([one, guard_fails]),
                            {"candidates": plain}, _recs(plain))
    assert (f["healed_k"], f["plain_k"], f["more"]) == (1, 1, False)
    assert f["binding"] == {"k": 2, "removed": [1, 2], "reason": "guard", "task": "b", "drop": 0.06, "lower": 0.055}
    text = heal_report.finding_line(f, report.TEXT["en"])
    assert "Healing removes 1 block within the tolerance 5.00%, plain deletion 1" in text
    assert "b's drop is 6.00% (95% lower bound 5.50%, above 5.00%)" in text
    mean_high = cand([1, 2], 0.045, {"a": (0.03, 0.0, 0.06), "b": (0.06, 0.03, 0.09)}, upper95=0.07)
    f = heal_report.finding({"candidates": [one, mean_high]}, _recs([one, mean_high]), {"candidates": plain}, _recs(plain))
    assert f["binding"]["reason"] == "mean" and f["binding"]["task"] == "b" and f["binding"]["upper95"] == 0.07
    assert "one-sided 95% upper bound 7.00%, above 5.00%; its largest task drop is b at 6.00%" in \
        heal_report.finding_line(f, report.TEXT["en"])
    f = heal_report.finding({"candidates": [one]}, _recs([one]), {"candidates": plain}, _recs(plain))
    assert f["binding"] == {"k": 2, "reason": "not_scored"}
    two = cand([1, 2], 0.02, ok)
    f = heal_report.finding({"candidates": [one, two]}, _recs([one, two]), {"candidates": plain}, _recs(plain))
    assert f["more"] and "binding" not in f
    assert heal_report.finding_line(f, report.TEXT["en"]) == (
        "Healing removes 2 blocks within the tolerance 5.00% where plain deletion removes 1 (balanced advice: "
        "healed [1, 2], plain [1]).")
    assert heal_report.finding({"candidates": [one]}, _recs([one]), None, None) is None
    assert "修复可移除 2 个 block" in heal_report.finding_line(f, report.TEXT["zh"])


# ---- a real healed search on the tiny model ---------------------------------------------------
@pytest.fixture(scope="module")
def healed(tiny_dir, jsonl_tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("healed") / "run"
    # block 0 protected: every candidate has a block before its runs, so healed and plain differ
    tasks = [f"jsonl:{jsonl_tasks / 'mc.jsonl'}#4", f"jsonl:{jsonl_tasks / 'ppl.jsonl'}#3"]
    res = api.run_search(model=str(tiny_dir), tasks=tasks, out=out, method="greedy", max_remove=2, protected=[0],
                         ppl_window=16, progress=False, latency=False, device="cpu", tolerance=0.9, heal="linear",
                         calibration="shakespeare/hamlet#48", held_out=True)
    return out, res.recommendations


def _row(text, k):
    """The Healing table's row for k."""
    section = text.split("## Healing")[1].split("## Recommendations")[0]
    return next(line for line in section.splitlines() if line.startswith(f"| {k} | "))


def test_the_healed_report_compares_with_the_plain_search(healed):
    out, recs = healed
    info = Store.open_existing(out).run_info
    assert info["settings"]["heal"]["method"] == "linear" and "plain_blocks" in info["healing"]
    text = (out / "REPORT.md").read_text()
    assert "## Healing" in text and "48 windows of 16 tokens from `shakespeare/hamlet`" in text
    assert ("| k | best healed set | healed mean drop [95% interval] | the same set plain | best plain set | "
            "its mean drop [95% interval] |") in text
    a, plain = report.build_analysis(out), report.build_analysis(out / "plain")
    of_plain = {tuple(c["removed"]): c for c in plain["candidates"]}
    cell = lambda c: f"{pct(c['mean_drop'])} [{pct(c['ci95'][0])} – {pct(c['ci95'][1])}]"  # noqa: E731
    differs = False
    for k, cs in by_k(a["candidates"]).items():
        best, best_plain = cs[0], by_k(plain["candidates"])[k][0]
        same = of_plain[tuple(best["removed"])]  # the baseline scores the healed best sets plainly
        assert _row(text, k) == (f"| {k} | {fmt_set(best['removed'])} | {cell(best)} | {cell(same)} | "
                                 f"{fmt_set(best_plain['removed'])} | {cell(best_plain)} |")
        differs = differs or same["mean_drop"] != best["mean_drop"]
    assert differs  # healing changed something: the columns are not one copied into the other
    # the key finding, with the plain advice at the same tolerance
    plain_recs = recommendations(by_k(plain["candidates"]), 0.9)
    K, J = recs["recommendations"]["balanced"]["k"], plain_recs["balanced"]["k"]
    finding = next(f for f in recs["key_findings"] if f["kind"] == "healing")
    assert (finding["healed_k"], finding["plain_k"]) == (K, J)
    assert f"Healing removes {K} block{'' if K == 1 else 's'} within the tolerance 90.00%" in text.split("## Key findings")[1]
    # healed recommendations are labelled; the held-out flags are the healed recommendations'
    balanced = recs["recommendations"]["balanced"]
    assert K >= 1 and f"- **{fmt_set(balanced['removed'])}** healed (k = {K}):" in text
    validation = report.load_validation(out)
    assert recs["held_out"]["flagged"] == report.held_out_flags(recs["recommendations"], validation)
    assert ",".join(map(str, balanced["removed"])) in validation["sets"]
    held = text.split("### Held-out check")[1].split("\n## ")[0]
    v = validation["sets"][",".join(map(str, balanced["removed"]))]
    assert (f"- {fmt_set(balanced['removed'])} healed: ppl perplexity {validation['dense']['ppl']['plain_perplexity']:.2f} → "
            f"{v['plain_perplexity']['ppl']:.2f}") in held
    assert f"deleted without its maps {v['unhealed_perplexity']['ppl']:.2f}" in held
    u = validation["unseen_text"]
    assert f"On a text the healing never saw (`{u['spec']}`, {u['windows']} windows" in held
    assert recs["healing"]["per_k"][0]["healed"]["removed"] == by_k(a["candidates"])[1][0]["removed"]
    assert f"--heal linear --ridge {DEFAULT_RIDGE} --calibration 'shakespeare/hamlet#48'" in text
    assert "- `plain/`:" in text


def test_the_plain_run_has_no_healing_section(healed):
    out, _ = healed
    text = (out / "plain" / "REPORT.md").read_text()
    assert "## Healing" not in text and " healed (k = " not in text and "--heal" not in text
    p = json.loads((out / "plain" / "pruning_recommendations.json").read_text())
    assert "healing" not in p and not [f for f in p["key_findings"] if f["kind"] == "healing"]


def test_without_plain_sibling_and_in_chinese(healed, tmp_path):
    out, _ = healed
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("plain", "*.lock", ".lock*"))
    recs = report.write_report(copy, tolerance=0.9, replicates=200)
    text = (copy / "REPORT.md").read_text()
    assert "## Healing" in text and "No plain run to compare with" in text
    assert _row(text, 1).endswith("| — | — | — |")
    assert recs["healing"]["plain_note"] == "absent" and not [f for f in recs["key_findings"] if f["kind"] == "healing"]
    assert "- `plain/`:" not in text
    report.write_report(copy, lang="zh", tolerance=0.9, replicates=200)
    zh = (copy / "REPORT.zh.md").read_text()
    assert "## 修复" in zh and "修复后最佳组合" in zh and " 已修复 (k = " in zh


def test_the_healed_plot_has_both_series(healed, tmp_path):
    out, _ = healed
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.lock", ".lock*"))
    a, plain = report.build_analysis(copy, replicates=200), report.build_analysis(copy / "plain", replicates=200)
    sets = report.latency_sets(copy, 0.9, a, plain=plain)
    plain_best = [tuple(cs[0]["removed"]) for _, cs in sorted(by_k(plain["candidates"]).items())]
    assert set(plain_best) <= set(sets)  # the latency step measures the plain points too
    rows = [{"backend": "torch", "batch": 1, "removed": list(s), "k": len(s), "ideal": 6 / (6 - len(s)), "decode": 1.1 * len(s),
             "prefill": 1.1, "decode_paired": {"min": len(s), "median": 1.1 * len(s), "max": 1.2 * len(s)}} for s in sets]
    (copy / "latency.json").write_text(json.dumps({
        "model": a["model"], "device": "cpu", "machine": {"cpu": "test cpu", "torch_threads": 2},
        "settings": {"prompt_len": 64, "gen_len": 16, "reps": 5}, "speedups": rows}))
    report.write_report(copy, tolerance=0.9, replicates=200, plain=plain)
    assert (copy / "plots" / "drop_vs_speedup.png").stat().st_size > 0
    series = plots.speedup_series(a["candidates"], latency_report.load_speedups(copy, a["model"]), 0.9, True, plain)
    assert len(series["healed"]) > 1 and len(series["plain"]) > 1
    for name, analysis in (("healed", a), ("plain", plain)):
        drops = {tuple(c["removed"]): c["mean_drop"] for c in analysis["candidates"]}
        assert all(p["drop"] == drops[tuple(p["removed"])] for p in series[name][1:])


def test_a_plain_sibling_on_other_samples_is_not_compared(healed, tmp_path):
    out, _ = healed
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.lock", ".lock*"))
    info = json.loads((copy / "plain" / "run.json").read_text())
    info["settings"]["tasks"]["mc"]["sample_ids"] = info["settings"]["tasks"]["mc"]["sample_ids"][::-1]
    (copy / "plain" / "run.json").write_text(json.dumps(info))
    recs = report.write_report(copy, tolerance=0.9, replicates=200)
    assert recs["healing"]["plain_note"] == "samples" and recs["healing"]["plain_recommendations"] is None
    assert f"`{copy}/plain` is not compared: its tasks score other samples" in (copy / "REPORT.md").read_text()


def test_the_section_names_the_runs_that_stay_plain():
    h = {"settings": {"method": "linear", "ridge": 0.01, "calibration": None},
         "fit": {"tokens": 900, "plain_blocks": {"11": "its MLP output passes through a norm", "3": "no projection"}},
         "per_k": [{"k": 1, "healed": {"removed": [4], "mean_drop": 0.01, "ci95": [0.0, 0.02]}, "healed_plain": None,
                    "plain": None}], "plain_note": "absent", "finding": None}
    text = "\n".join(heal_report.section_lines(h, report.TEXT["en"], "OUT"))
    assert ("Runs that stay plain (scored as plain deletion): after block 3: no projection; after block 11: its MLP output "
            "passes through a norm; a run starting at block 0 always does") in text
    assert "Calibration: not recorded in run.json." in text and "ridge 0.01 times" in text
    # block 3 cannot fold, so [4] was scored plain, and says so (#29)
    assert "| 1 | [4] (scored plain: no run took a map) | 1.00% [0.00% – 2.00%] | — | — | — |" in text and "`OUT/plain` is absent" in text
    assert heal_report.section_lines(None, report.TEXT["en"], "OUT") == []
