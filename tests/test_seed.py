"""blockprune.report.replaced (and replaced_report): reading the replaced system's result files and reproducing
its recommendation rules (`report --replaced-system`; the file keeps its old name, tests import its fixtures).

Every expected number below is written by hand (the arithmetic is in the comments), not computed
with the module under test.
"""

import json
import math

import pytest

from blockprune.report import replaced, replaced_report
from blockprune.report.replaced import ReplacedError

FILE = "exp3_accuracy_sensitivity_v2_results.json"

# ---- fixture builders ------------------------------------------------------------------------------
# Main fixture: 4 "datasets" over a 6-block model (blocks 0..5):
#   alpha/val (single split -> "alpha"), beta/test + beta/val (two splits -> "beta/test", "beta/val"),
#   gamma/val (-> "gamma", written in PERCENT units: baseline 80.0).
BASELINES = {"alpha": 0.50, "beta/test": 0.60, "beta/val": 0.70, "gamma": 0.80}
# drops per removed set per dataset (fractions); accuracy = baseline - drop
DROPS = {
    # k = 1: every dataset scored blocks 0..4; block 5 only on gamma
    (0,): {"alpha": 0.60, "beta/test": 0.70, "beta/val": 0.50, "gamma": 0.60},
    (1,): {"alpha": 0.04, "beta/test": 0.02, "beta/val": 0.06, "gamma": 0.04},
    (2,): {"alpha": 0.02, "beta/test": 0.04, "beta/val": 0.00, "gamma": 0.02},
    (3,): {"alpha": 0.05, "beta/test": 0.03, "beta/val": 0.07, "gamma": 0.05},
    (4,): {"alpha": 0.10, "beta/test": 0.10, "beta/val": 0.10, "gamma": 0.10},
    (5,): {"gamma": 0.40},
    # k = 2
    (2, 5): {"alpha": 0.001},                              # tiny drop but 1 dataset: excluded
    (1, 2): {"beta/test": -0.01, "beta/val": -0.03},       # negative mean drop: excluded
    (2, 3): {"alpha": 0.00, "gamma": 0.02},
    (1, 3): {"alpha": 0.03, "beta/test": 0.05, "gamma": 0.04},
    (2, 4): {"alpha": 0.06, "beta/test": 0.08, "beta/val": 0.04, "gamma": 0.06},
    (1, 4): {"alpha": 0.10, "beta/test": 0.12, "beta/val": 0.08, "gamma": 0.14},
    # k = 3 (no kept superset of [2, 3]: [2, 3, 5] has 1 dataset, [1, 2, 3] a negative mean)
    (2, 3, 5): {"alpha": 0.00},
    (1, 2, 3): {"beta/test": -0.01, "beta/val": -0.01},
    (2, 4, 5): {"alpha": 0.06, "gamma": 0.08},
    (1, 3, 4): {"alpha": 0.08, "beta/test": 0.10, "beta/val": 0.09},
    (1, 2, 4): {"alpha": 0.10, "beta/test": 0.14, "beta/val": 0.12, "gamma": 0.16},
    (0, 1, 2): {"alpha": 0.80, "beta/val": 0.90},
    # k = 4
    (1, 2, 4, 5): {"alpha": 0.20, "gamma": 0.24},
    (1, 2, 3, 4): {"alpha": 0.25, "beta/test": 0.27, "beta/val": 0.29},
    (0, 1, 2, 4): {"beta/test": 0.90},
    (1, 3, 4, 5): {"gamma": 0.15},
}
DIRS = {"alpha": ("alpha", "val"), "beta/test": ("beta", "test"), "beta/val": ("beta", "val"), "gamma": ("gamma", "val")}


def write_result(path, baseline, rows, percent=False):
    """rows: (removed, drop) pairs; accuracy = baseline - drop; percent: write x 100."""
    s = 100.0 if percent else 1.0
    summary = [{"removed_block_indices": list(r), "accuracy": round((baseline - d) * s, 10),
                "accuracy_drop": round(d * s, 10), "step": len(r)} for r, d in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"baseline_accuracy": round(baseline * s, 10), "summary": summary}), encoding="utf-8")


def build_main(root):
    for ds, (d, split) in DIRS.items():
        rows = [(r, drops[ds]) for r, drops in DROPS.items() if ds in drops]
        if ds == "alpha":
            rows.append(((2,), 0.50))          # a repeat of [2]: the first entry (0.02) counts
        if ds == "beta/test":
            rows.insert(0, ((), 0.0))          # the dense model (step 0): ignored
            rows.append(((4, 2), 0.99))        # [2, 4] again, unsorted: the first entry (0.08) counts
        write_result(root / d / split / FILE, BASELINES[ds], rows, percent=(ds == "gamma"))
    return root


@pytest.fixture
def main_root(tmp_path):
    return build_main(tmp_path / "seed")


@pytest.fixture
def analysis(main_root):
    data = replaced.load_replaced(main_root)
    ref = replaced.reference_analysis(data)
    return data, ref, replaced_report.our_view(data, ref)


def build_small(root):
    """2 datasets, 4 blocks, every set on both: increments grow, no combination beats the best single."""
    drops = {(0,): (0.50, 0.50), (1,): (0.01, 0.03), (2,): (0.03, 0.05), (3,): (0.15, 0.17),
             (1, 2): (0.05, 0.07), (0, 1): (0.60, 0.60), (1, 2, 3): (0.15, 0.17)}
    for i, name in enumerate(("x", "y")):
        write_result(root / name / "test" / FILE, 0.9, [(r, d[i]) for r, d in drops.items()])
    return root


# ---- loading -------------------------------------------------------------------------------------
def test_load_names_units_and_duplicates(main_root):
    data = replaced.load_replaced(main_root)
    assert data.datasets == ["alpha", "beta/test", "beta/val", "gamma"]
    assert data.percent == {"alpha": False, "beta/test": False, "beta/val": False, "gamma": True}
    assert data.baselines["gamma"] == pytest.approx(0.80)           # 80.0 / 100
    gamma = {r.removed: r for r in data.rows["gamma"]}
    assert gamma[(5,)].accuracy_drop == pytest.approx(0.40)         # 40.0 / 100
    assert gamma[(5,)].accuracy == pytest.approx(0.40)              # (80 - 40) / 100
    alpha = [r for r in data.rows["alpha"] if r.removed == (2,)]
    assert len(alpha) == 1 and alpha[0].accuracy_drop == pytest.approx(0.02)  # first entry kept
    bt = data.rows["beta/test"]
    assert all(r.removed for r in bt)                               # dense row skipped
    assert [r.accuracy_drop for r in bt if r.removed == (2, 4)] == [pytest.approx(0.08)]


def test_aggregate_population_std(main_root):
    sets = {tuple(c["removed"]): c for c in replaced.aggregate(replaced.load_replaced(main_root))}
    b2 = sets[(2,)]
    # drops .02 .04 .00 .02: mean .02; population var = (0 + .0004 + .0004 + 0) / 4 = .0002
    assert b2["mean_drop"] == pytest.approx(0.02)
    assert b2["std_drop"] == pytest.approx(math.sqrt(0.0002))       # 0.014142
    # accuracies .48 .56 .70 .78 (gamma from percent): mean 2.52 / 4
    assert b2["mean_accuracy"] == pytest.approx(0.63)
    assert b2["num_datasets"] == 4
    # [1, 3]: .03 .05 .04 -> mean .04, population var (.0001 + .0001 + 0) / 3
    assert sets[(1, 3)]["std_drop"] == pytest.approx(math.sqrt(0.0002 / 3))  # 0.0081650
    assert sets[(1, 3)]["datasets"] == ["alpha", "beta/test", "gamma"]
    # [2, 4] in beta/test listed twice: first (.08) kept -> .06 .08 .04 .06, mean .06
    assert sets[(2, 4)]["mean_drop"] == pytest.approx(0.06)
    assert sets[(1, 2)]["mean_drop"] == pytest.approx(-0.02)        # (-.01 - .03) / 2


# ---- reference rules -----------------------------------------------------------------------------
def test_independent_best_filter_and_notes(analysis):
    _, ref, _ = analysis
    ib = ref["independent_best"]
    assert sorted(ib) == [1, 2, 3, 4]
    # k=1: [5] (1 dataset) is filtered; order by mean: 2 (.02), 1 (.04), 3 (.05), 4 (.10), 0 (.60)
    assert [c["removed"] for c in ib[1]["top5"]] == [[2], [1], [3], [4], [0]]
    assert ib[1]["best"]["num_datasets"] == 4 and ib[1]["note"] is None
    # k=2: [2, 5] (.001, 1 dataset) and [1, 2] (mean -.02) are filtered out
    assert [c["removed"] for c in ib[2]["top5"]] == [[2, 3], [1, 3], [2, 4], [1, 4]]
    best = ib[2]["best"]
    assert best["mean_drop"] == pytest.approx(0.01)                 # (.00 + .02) / 2
    assert best["std_drop"] == pytest.approx(0.01)                  # population: sqrt((.0001 + .0001) / 2)
    assert best["datasets"] == ["alpha", "gamma"]
    # robust alternative: max n in top 5 is 4, shared by [2, 4] (.06) and [1, 4] (.11): the smaller drop wins
    assert ib[2]["robust_alternative"]["removed"] == [2, 4]
    assert "如果需要更稳健的选择，可以考虑 [2, 4]（4 个数据集，下降 6.00%）" in ib[2]["note"]
    assert "[2, 3] 的平均下降最小，但只在 2 个数据集上测试" in ib[2]["note"]
    assert "consider [2, 4] (4 datasets, drop 6.00%)" in ib[2]["note_en"]
    # k=3: [2, 3, 5] (1 dataset) and [1, 2, 3] (mean -.01) filtered
    assert [c["removed"] for c in ib[3]["top5"]] == [[2, 4, 5], [1, 3, 4], [1, 2, 4], [0, 1, 2]]
    assert ib[3]["best"]["mean_drop"] == pytest.approx(0.07)        # (.06 + .08) / 2
    assert "可以考虑 [1, 2, 4]（4 个数据集，下降 13.00%）" in ib[3]["note"]  # (.10+.14+.12+.16)/4 = .13
    # k=4: [0, 1, 2, 4] and [1, 3, 4, 5] have 1 dataset each
    assert [c["removed"] for c in ib[4]["top5"]] == [[1, 2, 4, 5], [1, 2, 3, 4]]
    assert ib[4]["top5"][1]["mean_drop"] == pytest.approx(0.27)    # (.25 + .27 + .29) / 3
    assert ib[4]["top5"][1]["std_drop"] == pytest.approx(math.sqrt(0.0008 / 3))  # (.0004 + 0 + .0004) / 3
    assert "可以考虑 [1, 2, 3, 4]（3 个数据集，下降 27.00%）" in ib[4]["note"]
    assert set(ib[2]["best"]) == {"removed", "mean_drop", "std_drop", "num_datasets", "mean_accuracy", "datasets"}


def test_stepwise_with_fallback(analysis):
    _, ref, _ = analysis
    path = ref["stepwise"]
    assert [s["removed"] for s in path] == [[2], [2, 3], [2, 4, 5], [1, 2, 4, 5]]
    assert [s["extends_previous"] for s in path] == [True, True, False, True]  # step 3: no kept superset of [2, 3]
    # cumulative = mean drop; incremental: .02 - 0, .01 - .02, .07 - .01, .22 - .07
    assert [s["cumulative_drop"] for s in path] == pytest.approx([0.02, 0.01, 0.07, 0.22])
    assert [s["incremental_drop"] for s in path] == pytest.approx([0.02, -0.01, 0.06, 0.15])
    assert path[2]["added_blocks"] == [4, 5]
    assert path[3]["std_drop"] == pytest.approx(0.02)               # .20, .24: population std .02
    # step 4's increment .15 > 2 x the largest other (.06): the reference's remark
    assert path[3]["note"] == "Step 4 的增量下降较大（15.00%），说明移除第 4 个 block（Block 1）的影响较大。"
    assert all(s["note"] is None for s in path[:3])


def test_recommendations_and_robustness_notes(analysis):
    _, ref, _ = analysis
    r = ref["recommendations"]
    assert [x["removed"] for x in r["conservative"]] == [[2], [2, 3]]
    assert r["conservative"][0]["note"] is None                     # 4 of 4 datasets
    assert "在所有 4 个数据集上验证，结果最稳健" in r["conservative"][0]["text"]
    assert r["conservative"][1]["note"] == "注意：未在全部 4 个数据集上验证（缺少 beta/test, beta/val），结论的稳健性不足。"
    assert "增量下降仅 -1.00%" in r["conservative"][1]["text"]
    assert [x["removed"] for x in r["aggressive"]] == [[1, 2, 4, 5], [1, 2, 3, 4]]
    assert all(x["note"] for x in r["aggressive"])                  # 2 and 3 of 4 datasets
    # balanced: among the kept k=3 top 5, the most datasets: [1, 2, 4] (n = 4)
    assert [x["removed"] for x in r["balanced"]] == [[1, 2, 4]]
    assert r["balanced"][0]["note"] is None
    assert r["balanced"][0]["mean_drop"] == pytest.approx(0.13)


def test_key_findings(analysis):
    _, ref, _ = analysis
    f = {x["kind"]: x for x in ref["key_findings"]}
    assert f["least_important_block"]["block"] == 2
    # must never go: over ALL single-block sets, even [5] with 1 dataset (mean .40); block 0 mean
    # (.60 + .70 + .50 + .60) / 4 = .60; block 4 (.10) is not
    assert f["critical_blocks"]["blocks"] == [0, 5]
    assert "移除 Block 0 会导致平均准确率下降 60.0%" in f["critical_blocks"]["text"]
    assert "移除 Block 5 会导致平均准确率下降 40.0%（1 个数据集）" in f["critical_blocks"]["text"]
    assert "removing block 0 costs 60.0%" in f["critical_blocks"]["text_en"]
    # middle candidates: top-5 singles {2, 1, 3, 4, 0} minus first (0) and last (5) block
    assert f["middle_block_candidates"]["blocks"] == [1, 2, 3, 4]
    # [2, 3] (.01) beats block 2 (.02); it has fewer datasets (2 < 4)
    assert f["combination_beats_single"]["value"] is True
    assert f["combination_beats_single"]["example"]["removed"] == [2, 3]
    assert "但测试数据集较少" in f["combination_beats_single"]["text"]
    # increments .02, -.01, .06, .15 do not grow monotonically
    assert f["incremental_drops_grow"]["value"] is False


def test_small_tree_grows_and_no_combination(tmp_path):
    data = replaced.load_replaced(build_small(tmp_path / "s"))
    ref = replaced.reference_analysis(data)
    assert data.datasets == ["x", "y"]
    f = {x["kind"]: x for x in ref["key_findings"]}
    # path [1] .02, [1, 2] .06, [1, 2, 3] .16 -> increments .02, .04, .10: non-decreasing
    assert [s["removed"] for s in ref["stepwise"]] == [[1], [1, 2], [1, 2, 3]]
    assert f["incremental_drops_grow"]["value"] is True
    assert f["incremental_drops_grow"]["increments"] == pytest.approx([0.02, 0.04, 0.10])
    assert f["combination_beats_single"]["value"] is False          # smallest k>=2 mean is .06 > .02
    assert f["critical_blocks"]["blocks"] == [0]                    # [3]: (.15 + .17) / 2 = .16 < .20
    assert ref["stepwise"][2]["note"] is not None                   # .10 > 2 x .04
    # all on both datasets: no robustness notes anywhere
    assert all(v["note"] is None for v in ref["independent_best"].values())
    assert all(x["note"] is None for xs in ref["recommendations"].values() for x in xs)
    assert ref["recommendations"]["aggressive"][0]["removed"] == [1, 2, 3]  # no k=4: the largest k present


# ---- blockprune's view ---------------------------------------------------------------------------
def test_our_view_flags_and_sample_std(analysis):
    _, _, ours = analysis
    assert ours["std"] == "sample (ddof=1)" and ours["interval_method"] == "t"
    partial = {f["where"]: f for f in ours["partial"]}
    assert set(partial) == {"independent_best[2]", "independent_best[3]", "independent_best[4]", "conservative[1]",
                            "aggressive[0]", "aggressive[1]"}
    assert partial["independent_best[2]"]["missing"] == ["beta/test", "beta/val"]
    assert (partial["aggressive[1]"]["num_datasets"], partial["aggressive[1]"]["of"]) == (3, 4)
    k1 = ours["per_k"][1]
    assert k1["agrees"] and k1["best_complete"]["removed"] == [2]
    # sample std of .02 .04 .00 .02: sqrt(.0008 / 3) = 0.016330 (population would be 0.014142)
    assert k1["best_complete"]["std_drop"] == pytest.approx(math.sqrt(0.0008 / 3))
    # 95% t-interval: .02 -+ t(.975, df 3) * s / sqrt(4), t = 3.182446305284263
    h = 3.182446305284263 * math.sqrt(0.0008 / 3) / 2
    assert k1["best_complete"]["ci95"] == pytest.approx([0.02 - h, 0.02 + h])
    assert [c["removed"] for c in k1["complete"]] == [[2], [1], [3], [4], [0]]  # [5] not on all 4
    # k=2: sample std of .06 .08 .04 .06 = sqrt(.0008 / 3) = 1.63%
    assert ours["per_k"][2]["verdict"] == ("k=2: the reference's best [2, 3] rests on 2 of 4 datasets; "
                                           "the best set scored on all 4 is [2, 4] (6.00% ± 1.63%)")
    # k=3: [1, 2, 4]: .10 .14 .12 .16, mean .13, sample var (.0009 + .0001 + .0001 + .0009) / 3 -> 2.58%
    assert ours["per_k"][3]["verdict"] == ("k=3: the reference's best [2, 4, 5] rests on 2 of 4 datasets; "
                                           "the best set scored on all 4 is [1, 2, 4] (13.00% ± 2.58%)")
    assert ours["per_k"][4]["best_complete"] is None
    assert "no set of size 4 is scored on all 4" in ours["per_k"][4]["verdict"]
    assert "只基于 4 个数据集中的 2 个" in ours["per_k"][2]["verdict_zh"]


# ---- rendering and writing -------------------------------------------------------------------------
def test_render_zh_layout(analysis):
    _, ref, ours = analysis
    md = replaced_report.render_markdown(ref, ours, lang="zh")
    for h in ("## 概述", "## 独立最优策略", "## 逐步剪枝策略（推荐）", "## 建议", "## 关键发现", "## 文件位置", "## 使用方法",
              "## blockprune 规则的结论", "### 移除 1 个 Block", "### 移除 2 个 Blocks", "### 保守策略（推荐用于生产环境）",
              "### 激进策略（追求更高压缩率）", "### 平衡策略", "### Step 3: 移除 3 个 Blocks"):
        assert h in md, h
    assert "**最佳选择：移除 Block 2**" in md
    assert "**最佳选择：移除 Blocks [2, 3]**" in md
    assert "- **平均准确率下降**: 2.00% ± 1.41%" in md              # population std sqrt(.0002)
    assert "- **测试数据集数**: 4 个（所有数据集）" in md
    assert "- **测试数据集数**: 2 个" in md
    assert "1. Block 2: 2.00% ± 1.41% (4 datasets)" in md
    assert "1. [2, 3]: 1.00% ± 1.00% (2 datasets)" in md
    assert "2. [1, 3]: 4.00% ± 0.82% (3 datasets)" in md             # sqrt(.0002 / 3) = .00816
    assert "**注意**：" in md
    assert "- **增量下降**（从 Step 1）: -1.00%" in md
    assert "1. **只移除 Block 2**" in md
    assert "blockprune report --replaced-system" in md
    assert md.index("## 使用方法") < md.index("## blockprune 规则的结论")


def test_render_en(analysis):
    _, ref, ours = analysis
    md = replaced_report.render_markdown(ref, ours, lang="en")
    for h in ("## Overview", "## Independent best strategy", "## Stepwise pruning strategy (recommended)",
              "## Recommendations", "## Key findings", "## File locations", "## Usage", "## What blockprune's rules say"):
        assert h in md, h
    assert "1. [2, 3]: 1.00% ± 1.00% (2 datasets)" in md
    assert "removing block 0 costs 60.0%" in md
    assert "概述" not in md


@pytest.mark.parametrize("lang,report", [("en", "REPORT.md"), ("zh", "REPORT.zh.md")])
def test_write_seed_report(main_root, tmp_path, lang, report):
    out = tmp_path / "out" / "analysis"
    paths = replaced_report.write_replaced_report(main_root, out, lang=lang)
    assert sorted(p.name for p in paths) == sorted(["pruning_recommendations.json", "cross_dataset_analysis.json", report])
    left = sorted(p.name for p in out.iterdir() if p.name != ".blockprune.lock")  # the run-dir lock stays (#21)
    assert left == sorted(p.name for p in paths)  # no temp files left
    recs = json.loads((out / "pruning_recommendations.json").read_text(encoding="utf-8"))
    assert recs["num_datasets"] == 4 and "blockprune_view" in recs
    assert recs["independent_best"]["2"]["best"]["removed"] == [2, 3]
    full = json.loads((out / "cross_dataset_analysis.json").read_text(encoding="utf-8"))
    assert full["datasets"] == ["alpha", "beta/test", "beta/val", "gamma"]
    assert len(full["sets"]) == len(DROPS)
    assert f"blockprune report --replaced-system {main_root}" in (out / report).read_text(encoding="utf-8")


# ---- bad input -------------------------------------------------------------------------------------
def _assert_fails(root, out, match):
    with pytest.raises(ReplacedError, match=match) as exc:
        replaced_report.write_replaced_report(root, out)
    assert "\n" not in str(exc.value)
    assert not out.exists()


def test_missing_dir(tmp_path):
    _assert_fails(tmp_path / "nope", tmp_path / "out", "not found")


def test_no_files(tmp_path):
    (tmp_path / "seed" / "alpha" / "val").mkdir(parents=True)
    (tmp_path / "seed" / "alpha" / "val" / "other.json").write_text("{}")
    _assert_fails(tmp_path / "seed", tmp_path / "out", "no result files found")


def test_corrupt_json(main_root, tmp_path):
    bad = main_root / "gamma" / "val" / FILE
    bad.write_text('{"baseline_accuracy": 80.0, "summary": [', encoding="utf-8")
    _assert_fails(main_root, tmp_path / "out", r"corrupt JSON")
    with pytest.raises(ReplacedError) as exc:
        replaced.load_replaced(main_root)
    assert str(bad) in str(exc.value)


@pytest.mark.parametrize("obj,field", [
    ({"summary": [{"removed_block_indices": [1], "accuracy": 0.5, "accuracy_drop": 0.1, "step": 1}]}, "baseline_accuracy"),
    ({"baseline_accuracy": 0.6, "summary": [{"removed_block_indices": [1], "accuracy": 0.5, "step": 1}]},
     "summary[0].accuracy_drop"),
    ({"baseline_accuracy": 0.6}, "summary"),
])
def test_missing_field(main_root, tmp_path, obj, field):
    bad = main_root / "beta" / "val" / FILE
    bad.write_text(json.dumps(obj), encoding="utf-8")
    with pytest.raises(ReplacedError) as exc:
        replaced.load_replaced(main_root)
    assert str(bad) in str(exc.value) and f"missing field '{field}'" in str(exc.value)
    _assert_fails(main_root, tmp_path / "out", "missing field")


def test_empty_summary(main_root, tmp_path):
    (main_root / "alpha" / "val" / FILE).write_text('{"baseline_accuracy": 0.5, "summary": []}', encoding="utf-8")
    _assert_fails(main_root, tmp_path / "out", "empty summary")


def test_failure_keeps_previous_report(main_root, tmp_path):
    out = tmp_path / "out"
    replaced_report.write_replaced_report(main_root, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (main_root / "alpha" / "val" / FILE).write_text("not json", encoding="utf-8")
    with pytest.raises(ReplacedError):
        replaced_report.write_replaced_report(main_root, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_the_old_flag_from_seed_still_works(main_root, tmp_path, capsys):
    """`report --from-seed` (the old, hidden name of --replaced-system) writes the same files."""
    from blockprune import cli

    new, old = tmp_path / "new", tmp_path / "old"
    assert cli.main(["report", str(main_root), "--replaced-system", "--out", str(new)]) == 0
    assert cli.main(["report", str(main_root), "--from-seed", "--out", str(old)]) == 0
    for name in ("pruning_recommendations.json", "cross_dataset_analysis.json"):
        assert (new / name).read_bytes() == (old / name).read_bytes()
    # the report names its own directory (and the command, by its current name, that rewrites it)
    assert (new / "REPORT.md").read_text(encoding="utf-8") == (old / "REPORT.md").read_text(encoding="utf-8").replace(str(old), str(new))
    assert "--from-seed" not in cli.parser().format_help()
