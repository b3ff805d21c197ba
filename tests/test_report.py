"""Report statistics and rules on hand-built stores (numbers checked by hand)."""

import json
import math

import numpy as np
import pytest

from blockprune.analysis import advice, stats
from blockprune import cli, report
from blockprune.analysis import build
from blockprune.runs.store import Store

SETTINGS = {"model": "toy", "num_blocks": 4, "method": "beam", "beam_width": 2, "max_remove": 2, "seed": 0,
            "samples": None, "ppl_window": 4, "protected": [], "min_depth": 1, "dtype": "float32"}


def make_store(tmp_path, records, tasks):
    # a task has as many samples as its dense record holds (the store refuses records of another length)
    size = {r["task"]: len(next(iter(r["per_sample"].values()))) for r in records if not r["removed"]}
    st = Store(tmp_path, {**SETTINGS, "tasks": {n: {"spec": f"jsonl:{n}.jsonl", "metric": m, "higher_is_better": m != "perplexity",
                                                    "n": size.get(n, 10), "sample_ids": [str(i) for i in range(size.get(n, 10))],
                                                    "kind": "perplexity" if m == "perplexity" else "multiple_choice"}
                                                for n, m in tasks.items()}})
    st.append(records)
    return st


def acc_record(removed, task, correct):
    return {"removed": removed, "task": task, "value": float(np.mean(correct)), "per_sample": {"correct": correct}}


def ppl_record(removed, task, nll_per_window):
    nll = list(map(float, nll_per_window))
    return {"removed": removed, "task": task, "value": math.exp(sum(nll) / (5 * len(nll))),
            "per_sample": {"nll": nll, "ntok": [5.0] * len(nll)}}


BASE = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]  # 5/10


def test_drops_std_and_a_candidate_equal_to_dense(tmp_path):
    recs = [acc_record([], "a", BASE), ppl_record([], "p", [10, 10]),
            acc_record([1], "a", [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]),  # 4/10: drop 1 - 0.4/0.5 = 0.2
            ppl_record([1], "p", [15, 15]),  # mean NLL 2 -> 3 per token: drop 1 - e^-3/e^-2 = 1 - e^-1
            acc_record([2], "a", BASE), ppl_record([2], "p", [10, 10])]  # identical to dense
    a = build(make_store(tmp_path, recs, {"a": "acc", "p": "perplexity"}), replicates=200)
    c1, c2 = a["candidates"]
    assert c1["removed"] == [2] and c1["mean_drop"] == 0 and c1["ci95"] == [0.0, 0.0]
    d = [0.2, 1 - math.exp(-1)]  # 0.2, 0.63212
    assert c2["drops"]["a"] == pytest.approx(0.2) and c2["drops"]["p"] == pytest.approx(d[1])
    assert c2["mean_drop"] == pytest.approx(0.41606, abs=1e-5)  # (0.2 + 0.63212) / 2
    assert c2["std_drop"] == pytest.approx(0.30556, abs=1e-5)  # |0.63212 - 0.2| / sqrt(2), ddof=1
    assert c2["ci95"][0] <= c2["mean_drop"] <= c2["ci95"][1]
    # per-task intervals are paired: a candidate equal to dense has [0, 0]; one whose correct
    # answers are a subset of dense's never gains in any resample; perplexity is worse on every window
    assert c1["task_ci95"] == {"a": [0.0, 0.0], "p": [0.0, 0.0]}
    assert c2["task_ci95"]["a"][0] >= 0 and c2["task_ci95"]["p"] == pytest.approx([d[1], d[1]])
    assert a["rank_by"] == {"a": "acc", "p": "perplexity"}  # old-format records: acc, with a note
    assert any("ranked by acc instead of p_gold" in n for n in a["notes"])


def test_paired_bootstrap_is_paired():
    # a candidate that loses exactly one sample: every resample gives drop >= 0 (paired), and
    # the spread is that of one flipped sample among 10
    class S:
        def get(self, key, task):
            return {"per_sample": {"correct": BASE if key == () else [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]}}

    reps = stats.bootstrap(S(), [(1,)], {"a": "acc"}, replicates=500)["a"][0]
    assert (reps >= 0).all() and reps.max() <= 1
    assert 0.05 < reps.mean() < 0.35


def test_compare_and_interval():
    rng = np.random.default_rng(0)
    a = rng.normal(0.10, 0.01, 1000)
    assert stats.compare(a, a + 0.05)["significant"]
    assert not stats.compare(a, a + rng.normal(0, 0.05, 1000))["significant"]
    lo, hi = stats.interval(np.arange(1001.0))
    assert (lo, hi) == pytest.approx((25.0, 975.0))


def cands(*rows):
    return [{"removed": list(r), "mean_drop": m, "std_drop": 0.0, "ci95": [lo, hi], "drops": {"t": m}}
            for r, m, lo, hi in rows]


def test_stepwise_follows_the_previous_set_and_falls_back():
    groups = advice.by_k(cands(((3,), 0.01, 0, 0.02), ((1,), 0.02, 0, 0.04),
                               ((1, 2), 0.03, 0, 0.05), ((2, 3), 0.04, 0, 0.06),
                               ((0, 1, 2), 0.10, 0, 0.2)))
    path = advice.stepwise(groups)
    assert [p["removed"] for p in path] == [[3], [2, 3], [0, 1, 2]]  # [1,2] is better but lacks block 3
    assert [p["extends_previous"] for p in path] == [True, True, False]  # no scored 3-set contains [2, 3]
    assert [round(p["incremental_drop"], 6) for p in path] == [0.01, 0.03, 0.06]


def run_dir(tmp_path):
    rng = np.random.default_rng(1)
    recs = [acc_record([], "a", BASE), ppl_record([], "p", [10, 11]), acc_record([], "b", BASE)]
    for s in [[0], [1], [2], [3], [0, 1], [1, 2], [1, 3]]:
        bad = 0 in s
        recs.append(acc_record(s, "a", [0] * 10 if bad else [int(x) for x in rng.permutation(BASE)]))
        recs.append(acc_record(s, "b", [0] * 10 if bad else [int(x) for x in rng.permutation(BASE)]))
        recs.append(ppl_record(s, "p", [40, 40] if bad else [10 + len(s), 11 + len(s)]))
    make_store(tmp_path, recs, {"a": "acc", "p": "perplexity", "b": "acc"})
    return tmp_path


def test_report_files_and_findings(tmp_path):
    d = run_dir(tmp_path)
    recs = report.write_report(d, replicates=200)
    for f in ["REPORT.md", "pruning_recommendations.json", "cross_dataset_analysis.json", "SUMMARY.md",
              "plots/ranking.png", "plots/single_block_heatmap.png", "plots/stepwise.png", "plots/drop_distribution.png"]:
        assert (d / f).exists(), f
    critical = next(f for f in recs["key_findings"] if f["kind"] == "critical_blocks")
    assert critical["blocks"] == [0]
    a = json.loads((d / "cross_dataset_analysis.json").read_text())
    assert all("ci95" in c for c in a["candidates"]) and [b["block"] for b in a["per_block"]] == [0, 1, 2, 3]
    text = (d / "REPORT.md").read_text()
    assert "Blocks that must never go: removing block 0 costs" in text
    p = json.loads((d / "pruning_recommendations.json").read_text())
    assert set(p) >= {"independent_best", "stepwise", "recommendations", "key_findings"}
    assert set(p["recommendations"]) >= {"conservative", "balanced", "aggressive"}


def test_chinese_report(tmp_path):
    d = run_dir(tmp_path)
    assert cli.main(["report", str(d), "--lang", "zh"]) == 0
    text = (d / "REPORT.zh.md").read_text()
    for heading in ["## 概述", "## 独立最优策略", "## 逐步剪枝策略", "## 建议", "### 保守策略", "### 平衡策略", "### 激进策略",
                    "## 关键发现", "## 文件位置", "## 使用方法", "绝对不能移除"]:
        assert heading in text, heading


def test_report_bad_input(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "run.json").write_text("{not json")
    assert cli.main(["report", str(tmp_path / "corrupt")]) == 2
    only_base = tmp_path / "base"
    make_store(only_base, [acc_record([], "a", BASE)], {"a": "acc"})
    assert cli.main(["report", str(only_base)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("blockprune: error:") for e in err)
    assert not (only_base / "REPORT.md").exists()


def test_one_task_run_says_std_is_undefined(tmp_path):
    recs = [acc_record([], "a", BASE), acc_record([1], "a", [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]),
            acc_record([2], "a", BASE)]
    make_store(tmp_path, recs, {"a": "acc"})
    report.write_report(tmp_path, replicates=100)
    assert "Only one task" in (tmp_path / "REPORT.md").read_text()


def test_held_out_verdicts_by_hand():
    # the search: [3] at 3% [1% - 5%] on the mean, task a 5% [0% - 6%] (se 1.5%), b 3% [2% - 4%]
    rec = {"k": 1, "removed": [3], "mean_drop": 0.03, "ci95": [0.01, 0.05], "se": 0.01, "drops": {"a": 0.05, "b": 0.03},
           "task_ci95": {"a": [0.0, 0.06], "b": [0.02, 0.04]}, "task_se": {"a": 0.015, "b": 0.005},
           "rule": "r"}
    none = {"k": 0, "removed": []}
    recs = {"tolerance": 0.10, "conservative": rec, "balanced": rec, "aggressive": rec}

    def held(mean, ci, up95, up80, a, a_ci, b=0.03, b_ci=(0.02, 0.04), se=0.01, a_se=0.015):
        return {"sets": {"3": {"mean_drop": mean, "ci95": list(ci), "se": se, "upper95": up95, "upper80": up80,
                               "drops": {"a": a, "b": b}, "task_ci95": {"a": list(a_ci), "b": list(b_ci)},
                               "task_se": {"a": a_se, "b": 0.005}}}}

    # a at 7%: outside the search's 0% - 6%, which the old rule flagged; but 7% - 5% = 2% is within
    # 1.96 * sqrt(1.5%^2 + 1.5%^2) = 4.2%, and every rule still holds held-out: confirmed, no shift
    agree = held(0.05, (0.03, 0.07), 0.068, 0.06, 0.07, (0.04, 0.095))
    v = report.held_out_verdicts(recs, agree)
    assert {lv: x["verdict"] for lv, x in v.items()} == {lv: "confirmed" for lv in ("conservative", "balanced", "aggressive")}
    assert all(x["shifted"] == {} for x in v.values()) and report.held_out_flags(recs, agree) == []
    # a at 15% [12% - 18%]: significantly above 10% (contradicted), and 10 points above the search's
    # 5% (> 1.96 * sqrt(1.5%^2 + 1.5%^2)): shifted above; the mean 9% - 3% = 6% > 1.96 * sqrt(2) * 1%
    worse = held(0.09, (0.07, 0.11), 0.105, 0.10, 0.15, (0.12, 0.18))
    v = report.held_out_verdicts(recs, worse)
    assert v["balanced"] == {"verdict": "contradicted", "tasks_above": ["a"], "mean_above": False,
                             "shifted": {"a": "above", "mean": "above"}}
    assert report.held_out_flags(recs, worse) == ["conservative (contradicted)", "balanced (contradicted)",
                                                  "aggressive (contradicted)"]
    # a at 9% [6% - 12%]: not significantly above 10%, not within it: conservative undecided;
    # balanced's mean bound 8% <= 10% and aggressive's 7%: both confirmed
    open_ = held(0.06, (0.04, 0.085), 0.08, 0.07, 0.09, (0.06, 0.12))
    v = report.held_out_verdicts(recs, open_)
    assert v["conservative"]["verdict"] == "undecided" and v["conservative"]["tasks_open"] == ["a"]
    assert v["balanced"]["verdict"] == v["aggressive"]["verdict"] == "confirmed"
    # the mean's 95% bound 11% > 10%: balanced undecided, aggressive's 80% bound 9.5% confirmed
    wide = held(0.07, (0.03, 0.12), 0.11, 0.095, 0.05, (0.02, 0.09), se=0.025)  # 4% < 1.96 * 2.7%: no shift
    v = report.held_out_verdicts(recs, wide)
    assert v["balanced"] == {"verdict": "undecided", "tasks_open": [], "bound": 0.11, "shifted": {}}
    assert v["aggressive"]["verdict"] == "confirmed"
    # an older validation.json without intervals; a level without a set; no validation at all
    old = {"sets": {"3": {"mean_drop": 0.03, "drops": {"a": 0.05, "b": 0.03}}}}
    assert report.held_out_flags(recs, old) == ["conservative (unknown)", "balanced (unknown)", "aggressive (unknown)"]
    assert report.held_out_verdicts({**recs, "conservative": none}, agree).keys() == {"balanced", "aggressive"}
    assert report.held_out_flags(recs, None) == []


def test_shift_is_the_difference_of_two_independent_estimates():
    # se of the difference: sqrt(0.03^2 + 0.04^2) = 0.05; 1.96 * 0.05 = 0.098
    assert stats.shift(0.10, 0.03, 0.199, 0.04) == "above"
    assert stats.shift(0.10, 0.03, 0.197, 0.04) is None
    assert stats.shift(0.10, 0.03, 0.001, 0.04) == "below"
    assert stats.shift(0.10, 0.03, 0.003, 0.04) is None


def test_both_languages_have_every_text():
    from blockprune.report.text import TEXT

    assert set(TEXT) == {"en", "zh"} and set(TEXT["en"]) == set(TEXT["zh"])
