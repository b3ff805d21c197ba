"""The recommendation report of a run: which blocks to remove per budget, how sure, what never to touch.

Inputs: the run's store (every candidate scored on every task). Outputs, in the run directory:
`cross_dataset_analysis.json`, `pruning_recommendations.json`, `REPORT.md` (or `REPORT.zh.md`
with lang="zh") and PNG plots under `plots/`. Everything is written to temporary names and
renamed, so a failure leaves the previous report (or none), never half of one.

Rules (documented in the report itself):
* best per k: lowest mean drop over tasks of the ranking scores (ties by block ids); top 5 per k.
* stepwise path, recommendations (with a per-task guard) and what the samples cannot decide, with
  the samples that would: `blockprune.advice`.
* held-out check: when the run has a `validation.json` (`blockprune validate`), every
  recommendation's drops on samples the search never used, flagged when they leave its interval.
* critical blocks: single removals whose lower 95% bound is >= 20%.
* interactions: sets of k >= 2 whose drop differs from the sum of their single drops with a 95%
  interval that excludes 0.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import advice, latency, stats
from . import analysis as analysis_mod
from .advice import by_k, recommendations, stepwise
from .rundir import chmod_like_user
from .store import Store, atomic_write_json, atomic_write_text

RECOMMENDATIONS_FILE = "pruning_recommendations.json"
VALIDATION_FILE = "validation.json"
CRITICAL = 0.20
DEFAULT_TOLERANCE = advice.DEFAULT_TOLERANCE


class ReportError(Exception):
    pass


def _key(c: dict) -> tuple[int, ...]:
    return tuple(c["removed"])


def key_findings(a: dict, groups: dict[int, list[dict]], path: list[dict]) -> list[dict]:
    reps = a["_replicates"]
    tasks = list(a["tasks"])
    singles = sorted(a["per_block"], key=lambda b: b["mean_drop"])
    out: list[dict] = []
    if singles:
        critical = [b for b in singles if b["ci95"][0] >= CRITICAL]
        out.append({"kind": "critical_blocks", "blocks": [b["block"] for b in critical],
                    "detail": [{"block": b["block"], "mean_drop": b["mean_drop"], "ci95": b["ci95"]} for b in critical]})
        out.append({"kind": "safest_blocks", "blocks": [b["block"] for b in singles[:3]],
                    "detail": [{"block": b["block"], "mean_drop": b["mean_drop"], "ci95": b["ci95"]} for b in singles[:3]]})
        best_single = singles[0]
        better = [c for k, cs in groups.items() if k >= 2 for c in cs if c["mean_drop"] < best_single["mean_drop"]]
        out.append({"kind": "combinations_beat_singles", "value": bool(better),
                    "sets": [c["removed"] for c in better[:5]], "best_single": best_single["block"]})
        single_of = {b["block"]: (b["block"],) for b in singles if "samples" not in b}  # racing-dropped ones are partial
        inter = []
        for k, cs in groups.items():
            if k < 2:
                continue
            for c in cs:
                if all(b in single_of for b in c["removed"]):
                    diff = reps[_key(c)] - sum(reps[(b,)] for b in c["removed"])
                    lo, hi = stats.interval(diff)
                    inter.append({"removed": c["removed"], "interaction": float(np.mean(diff)), "ci95": [lo, hi],
                                  "significant": lo > 0 or hi < 0})
        inter.sort(key=lambda x: -abs(x["interaction"]))
        out.append({"kind": "interactions", "significant": [x for x in inter if x["significant"]][:5],
                    "count_significant": sum(x["significant"] for x in inter), "count": len(inter)})
        if len(tasks) >= 2 and len(singles) >= 3:
            blocks = sorted(b["block"] for b in singles)
            table = {t: np.array([next(b for b in singles if b["block"] == blk)["drops"][t] for blk in blocks]) for t in tasks}
            pairs = {f"{x} ~ {y}": stats.spearman(table[x], table[y]) for i, x in enumerate(tasks) for y in tasks[i + 1:]}
            finite = [v for v in pairs.values() if np.isfinite(v)]
            pairs = {k: (v if np.isfinite(v) else None) for k, v in pairs.items()}
            out.append({"kind": "rank_agreement", "spearman": pairs, "mean": float(np.mean(finite)) if finite else None})
    if len(path) >= 3:
        inc = [s["incremental_drop"] for s in path]
        out.append({"kind": "incremental_drops_grow", "value": all(b >= a_ for a_, b in zip(inc, inc[1:])), "increments": inc})
    sig = {}
    for k, cs in groups.items():
        if len(cs) >= 2:
            sig[k] = {"best": cs[0]["removed"], "runner_up": cs[1]["removed"], **stats.compare(reps[_key(cs[0])], reps[_key(cs[1])])}
    out.append({"kind": "best_vs_runner_up", "per_k": sig})
    return out


# ---- text --------------------------------------------------------------------------------------
TEXT = {
    "en": {
        "title": "Block pruning recommendations: {model}",
        "overview": "Overview",
        "overview_text": ("{method} search over the {n} blocks of `{model}`; {c} candidate sets, every one scored on all "
                          "{t} tasks with the same samples. Each task is ranked by a score that uses every sample's full "
                          "signal (column 'ranked by'): a drop is its relative loss of quality vs the dense model "
                          "(1 - q/q_dense; q = expected accuracy p_gold, accuracy, or the per-token probability exp(-NLL) "
                          "behind perplexity and gold_logprob), and for kl the KL to the dense model itself (nats/token, "
                          "on the same scale for small values). Tables show the ranked drop and, in brackets, the drop of "
                          "the thresholded metric papers report (acc, exact_match). ± is the sample std over tasks "
                          "(ddof=1); 95% intervals come from a paired bootstrap over samples ({b} replicates)."),
        "tasks": "Tasks", "task": "task", "metric": "metric", "dense": "dense", "n": "samples", "ranked": "ranked by",
        "best": "Best set per number of removed blocks", "remove_k": "Remove {k} block{s}",
        "choice": "Best choice: remove {set}", "mean": "Mean drop", "ci": "95% interval",
        "range": "Range over tasks", "per_task": "Per task", "top5": "Top 5",
        "vs": "Best vs runner-up {r}: difference {d} (95% interval {lo} to {hi}), {verdict}.",
        "sig": "significant", "notsig": "not significant: treat them as equivalent",
        "none_k": "No candidate of this size was scored.",
        "step": "Stepwise path", "step_text": "Step k is the best set of size k that contains step k-1's set.",
        "incr": "incremental", "jump": "no scored set extends the previous step: best of this size taken",
        "rec": "Recommendations", "conservative": "Conservative", "balanced": "Balanced", "aggressive": "Aggressive",
        "rule": "Rule", "no_rec": "No set meets this rule.",
        "lat_title": "Measured speed", "lat_level": "recommendation", "lat_speedup": "measured speedup",
        "lat_ideal": "ideal L/(L-k)", "lat_prefill": "prefill speedup", "lat_none": "not measured",
        "lat_text": ("Decode speedup vs the dense model (per-token latency, greedy, with the KV cache: median over runs of the "
                     "dense/pruned ratio of adjacent runs, min–max in brackets; {backend}, "
                     "batch {batch}, prompt {prompt} + {gen} tokens, {reps} interleaved runs, {device}) from `latency.json`; "
                     "`plots/drop_vs_speedup.png` shows mean drop against it with the Pareto front."),
        "rule_conservative": "the largest k with a set whose every task's upper 95% bound is <= {t}",
        "rule_balanced": ("the largest k with a set whose one-sided 95% upper bound of the mean drop is <= {t} and no "
                          "task's lower 95% bound above {t}"),
        "rule_aggressive": ("the largest k with a set whose one-sided 80% upper bound of the mean drop is <= {t} and no "
                            "task's lower 95% bound above {t}"),
        "guard": ("Every rule first requires that no task's own drop is significantly above the tolerance, so a gain on "
                  "one task cannot hide a loss on another."),
        "task_ci": "per task [95% interval]",
        "guard_fail": ("✗ fails the per-task guard: {tasks} significantly above {t}, so no recommendation can "
                       "take this set (sets marked ✗ below likewise)"),
        "decide": "What the samples decide",
        "decide_text": ("For the best set of each size, every task's drop against the tolerance {t}: within (upper 95% bound "
                        "<= {t}), above (lower bound > {t}) or undecided. For an undecided task: how many samples would "
                        "make its interval decisive if the drop stayed where it is (from its paired bootstrap variance)."),
        "v_within": "within", "v_above": "above", "v_undecided": "undecided",
        "need": "needs about {m} samples (has {n}{avail})", "need_avail": ", {a} available",
        "need_inf": "sits on the tolerance: no sample size decides it",
        "cannot": "The samples cannot decide whether {set} is within {t}: {items}.",
        "held": "Held-out check", "held_text": ("The recommended sets and the dense model re-scored on samples of each task "
                                                 "that the search did not use ({where}). ⚠ marks a drop outside the "
                                                 "search's 95% interval."),
        "held_none": "Not run yet: `blockprune validate {out}` re-scores the recommendations on unused samples.",
        "held_search": "search", "held_out": "held-out",
        "held_flag": "⚠ a held-out drop leaves the search's interval (worse: above it, the advice was optimistic; better: below it)",
        "held_ok": "the held-out drops stay inside the search's intervals",
        "held_plain": ("{set}: {task} perplexity {dense} → {ppl} ({rise}) on {n} held-out windows, measured by plain "
                       "transformers with the blocks deleted"),
        "notes": "Notes", "warning": "Warning",
        "findings": "Key findings", "blocks": "Single-block removal",
        "partial_note": ("† dropped by racing after {n} samples per task (estimate on those samples; the exact search "
                         "`--exact` scores every set on all samples). {m} sets were dropped by racing in all."),
        "block": "block", "rank": "rank", "plots": "Plots", "files": "File locations", "usage": "How to reproduce",
        "f_critical": "Blocks that must never go: {items}.", "f_critical_none": "No single block is critical (no lower 95% bound >= {c}).",
        "f_crit_item": "removing block {b} costs {d} (95% interval {lo} to {hi})",
        "f_safe": "Safest single removals: {items}.",
        "f_combo_yes": "Combinations beat the best single removal (block {b}): {sets}.",
        "f_combo_no": "No combination beats the best single removal (block {b}).",
        "f_inter": "Interactions: {n} of {m} multi-block sets differ from the sum of their single drops (95% interval excludes 0){items}.",
        "f_rank": "Agreement of block importance across tasks (Spearman of single-block drops): mean {m}; {pairs}.",
        "f_grow_yes": "Incremental drops grow along the stepwise path: {inc}.",
        "f_grow_no": "Incremental drops do not grow monotonically along the stepwise path: {inc}.",
        "one_task": "Only one task: std over tasks and rank agreement are not defined.",
        "repro": "Regenerate this report from the store (no re-scoring) with `blockprune report {out}`; the search itself:",
        "f_files": {"REPORT": "this report", "pruning_recommendations.json": "recommendations, stepwise path, key findings",
                    "cross_dataset_analysis.json": "every candidate: scores, drops, mean ± std, 95% interval; single-block table",
                    "results.jsonl": "the store: per-sample scores of every (candidate, task)", "run.json": "settings and versions"},
    },
    "zh": {
        "title": "Block 剪枝建议：{model}",
        "overview": "概述",
        "overview_text": ("对 `{model}` 的 {n} 个 block 进行 {method} 搜索；共 {c} 个候选组合，每个组合都在全部 {t} 个任务的同一批样本上评估。"
                          "每个任务按利用每个样本完整信号的分数排序（“排序依据”列）：下降指其相对于完整模型的质量相对损失"
                          "（1 - q/q_dense；q 为期望准确率 p_gold、准确率，或困惑度与 gold_logprob 背后的每 token 概率 exp(-NLL)），"
                          "kl 任务的下降即相对完整模型的 KL 本身（nats/token，小值时与相对损失同一尺度）。表中给出排序分数的下降，"
                          "括号内为论文常报告的阈值指标（acc、exact_match）的下降。± 为跨任务的样本标准差（ddof=1）；"
                          "95% 区间来自对样本的配对 bootstrap（{b} 次重采样）。"),
        "tasks": "任务", "task": "任务", "metric": "指标", "dense": "完整模型", "n": "样本数", "ranked": "排序依据",
        "best": "独立最优策略", "remove_k": "移除 {k} 个 Block{s}",
        "choice": "最佳选择：移除 {set}", "mean": "平均下降", "ci": "95% 区间",
        "range": "跨任务范围", "per_task": "各任务", "top5": "Top 5 选择",
        "vs": "最佳与次佳 {r} 之差：{d}（95% 区间 {lo} 至 {hi}），{verdict}。",
        "sig": "差异显著", "notsig": "差异不显著，可视为等价",
        "none_k": "该数量下没有评估过的候选。",
        "step": "逐步剪枝策略", "step_text": "第 k 步为包含第 k-1 步组合的最佳 k-block 组合。",
        "incr": "增量下降", "jump": "没有评估过的组合包含上一步的组合：取该数量下的最佳组合",
        "rec": "建议", "conservative": "保守策略", "balanced": "平衡策略", "aggressive": "激进策略",
        "rule": "规则", "no_rec": "没有组合满足该规则。",
        "lat_title": "实测速度", "lat_level": "建议", "lat_speedup": "实测加速比",
        "lat_ideal": "理想值 L/(L-k)", "lat_prefill": "预填充加速比", "lat_none": "未测量",
        "lat_text": ("相对完整模型的解码加速比（每个 token 的延迟，贪心解码，使用 KV cache：相邻运行的完整/剪枝比值在各次运行上的中位数，"
                     "括号内为最小–最大；{backend}，batch {batch}，"
                     "提示 {prompt} + 生成 {gen} 个 token，{reps} 次交替运行，{device}），数据来自 `latency.json`；"
                     "`plots/drop_vs_speedup.png` 展示平均下降与实测加速比的关系，并标出 Pareto 前沿。"),
        "rule_conservative": "存在每个任务的 95% 区间上界都 <= {t} 的组合的最大 k",
        "rule_balanced": "存在平均下降单侧 95% 上界 <= {t}、且没有任务的 95% 区间下界高于 {t} 的组合的最大 k",
        "rule_aggressive": "存在平均下降单侧 80% 上界 <= {t}、且没有任务的 95% 区间下界高于 {t} 的组合的最大 k",
        "guard": "每条规则都先要求没有任何任务自身的下降显著高于容差，因此一个任务上的提升无法掩盖另一个任务上的损失。",
        "task_ci": "各任务 [95% 区间]",
        "guard_fail": "✗ 未通过逐任务检查：{tasks} 显著高于 {t}，任何建议都不会采用该组合（下表中标 ✗ 的组合同样如此）",
        "decide": "样本能判定什么",
        "decide_text": ("对每个数量下的最佳组合，逐个任务将下降与容差 {t} 比较：之内（95% 上界 <= {t}）、之上（下界 > {t}）或无法判定。"
                        "对无法判定的任务：若下降保持不变，需要多少样本才能使区间得出结论（由配对 bootstrap 方差估算）。"),
        "v_within": "之内", "v_above": "之上", "v_undecided": "无法判定",
        "need": "约需 {m} 个样本（现有 {n}{avail}）", "need_avail": "，可用 {a}",
        "need_inf": "恰在容差上：任何样本量都无法判定",
        "cannot": "样本无法判定 {set} 是否在 {t} 之内：{items}。",
        "held": "留出样本检验", "held_text": "用搜索未使用的各任务样本重新评估推荐组合与完整模型（{where}）。⚠ 表示下降超出搜索的 95% 区间。",
        "held_none": "尚未运行：`blockprune validate {out}` 会在未使用的样本上重新评估推荐组合。",
        "held_search": "搜索", "held_out": "留出",
        "held_flag": "⚠ 留出样本上的下降超出搜索的区间（worse：高于区间，建议偏乐观；better：低于区间）",
        "held_ok": "留出样本上的下降均在搜索的区间之内",
        "held_plain": "{set}：{task} 困惑度 {dense} → {ppl}（{rise}），{n} 个留出窗口，用删除 block 后的普通 transformers 测得",
        "notes": "说明", "warning": "警告",
        "findings": "关键发现", "blocks": "单个 Block 移除",
        "partial_note": ("† 在每个任务 {n} 个样本后被 racing 淘汰（基于这些样本的估计；精确搜索 `--exact` 会在全部样本上评估每个组合）。"
                         "共有 {m} 个组合被 racing 淘汰。"),
        "block": "block", "rank": "排名", "plots": "图表", "files": "文件位置", "usage": "使用方法",
        "f_critical": "绝对不能移除的 blocks：{items}。", "f_critical_none": "没有关键的单个 block（没有 95% 区间下界 >= {c}）。",
        "f_crit_item": "移除 Block {b} 会导致下降 {d}（95% 区间 {lo} 至 {hi}）",
        "f_safe": "最安全的单个移除：{items}。",
        "f_combo_yes": "组合移除优于最佳单 block 移除（Block {b}）：{sets}。",
        "f_combo_no": "没有组合优于最佳单 block 移除（Block {b}）。",
        "f_inter": "交互效应：{m} 个多 block 组合中有 {n} 个的下降与其单 block 下降之和不同（95% 区间不含 0）{items}。",
        "f_rank": "各任务间 block 重要性的一致性（单 block 下降的 Spearman 相关）：平均 {m}；{pairs}。",
        "f_grow_yes": "逐步移除的增量影响递增：{inc}。",
        "f_grow_no": "逐步移除的增量影响并非单调递增：{inc}。",
        "one_task": "只有一个任务：跨任务标准差和排名一致性无定义。",
        "repro": "从存储重新生成本报告（不重新评估）：`blockprune report {out}`；搜索本身：",
        "f_files": {"REPORT": "本报告", "pruning_recommendations.json": "推荐结果、逐步路径、关键发现",
                    "cross_dataset_analysis.json": "全部候选：分数、下降、均值 ± 标准差、95% 区间；单 block 表",
                    "results.jsonl": "存储：每个（候选, 任务）的逐样本分数", "run.json": "设置与版本"},
    },
}


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def fmt_set(removed) -> str:
    return "[" + ", ".join(str(b) for b in removed) + "]"


def shown_note(c: dict, t: str, tasks: dict) -> str:
    """` (acc 8.33%)`: the shown metric's drop when the task is ranked by another score."""
    shown = tasks[t].get("shown", tasks[t]["metric"])
    if tasks[t]["rank_score"] != shown and t in c.get("metric_drops", {}):
        return f" ({shown} {pct(c['metric_drops'][t])})"
    return ""


def task_cell(c: dict, t: str, tasks: dict) -> str:
    """A task's ranked drop, with the shown metric's drop in brackets when it is another score."""
    return pct(c["drops"][t]) + shown_note(c, t, tasks)


def guard_failures(c: dict, t: float) -> list[str]:
    return [name for name, (lo, _) in c["task_ci95"].items() if lo > t]


def decision_lines(decisions: list[dict], t: float, T: dict) -> list[str]:
    L = [f"### {T['decide']}", "", T["decide_text"].format(t=pct(t)), "",
         "| k | removed | " + " | ".join(decisions[0]["tasks"]) + " |" if decisions else "",
         "|" + " --- |" * (2 + len(decisions[0]["tasks"])) if decisions else ""]
    undecided = []
    for d in decisions:
        cells = []
        for name, e in d["tasks"].items():
            cell = f"{T['v_' + e['verdict']]} ({pct(e['drop'])})"
            if e["verdict"] == "undecided":
                m = e.get("samples_needed")
                need = T["need_inf"] if m is None else T["need"].format(
                    m=m, n=e["n"], avail=T["need_avail"].format(a=e["available"]) if "available" in e else "")
                cell += f": {need}"
                undecided.append((d, name, need))
            cells.append(cell)
        L.append(f"| {d['k']} | {fmt_set(d['removed'])} | " + " | ".join(cells) + " |")
    L.append("")
    for d in decisions:
        items = [f"{name} {need}" for dd, name, need in undecided if dd is d]
        if items and d["verdict"] == "undecided":
            L += [T["cannot"].format(set=fmt_set(d["removed"]), t=pct(t), items="; ".join(items)), ""]
    return L


def validation_lines(recs: dict, validation: dict | None, T: dict, out: Path) -> list[str]:
    L = [f"### {T['held']}", ""]
    if not validation:
        return L + [T["held_none"].format(out=out), ""]
    where = ", ".join(f"{t}: {v['n']}" for t, v in validation["tasks"].items())
    L += [T["held_text"].format(where=where), "",
          f"| {T['lat_level']} | removed | {T['mean']} ({T['held_search']}) | {T['mean']} ({T['held_out']}) | "
          + " | ".join(validation["tasks"]) + " |", "|" + " --- |" * (4 + len(validation["tasks"]))]
    for level in advice.LEVELS:
        r = recs[level]
        if not r["k"]:
            continue
        v = validation["sets"].get(",".join(map(str, r["removed"])))
        if v is None:
            L.append(f"| {T[level]} | {fmt_set(r['removed'])} | {pct(r['mean_drop'])} | {T['lat_none']} |"
                     + " |" * len(validation["tasks"]))
            continue
        flag = lambda x, lo, hi: " ⚠" if not lo <= x <= hi else ""  # noqa: E731
        cells = [f"{pct(r['drops'][t])} → {pct(v['drops'][t])}{flag(v['drops'][t], *r['task_ci95'][t])}"
                 for t in validation["tasks"]]
        L.append(f"| {T[level]} | {fmt_set(r['removed'])} | {pct(r['mean_drop'])} ({pct(r['ci95'][0])} – "
                 f"{pct(r['ci95'][1])}) | {pct(v['mean_drop'])}{flag(v['mean_drop'], *r['ci95'])} | " + " | ".join(cells) + " |")
    flags = held_out_flags(recs, validation)
    L += ["", T["held_flag"] + ": " + ", ".join(flags) + "." if flags else T["held_ok"] + ".", ""]
    for key, v in validation["sets"].items():
        for task, ppl in v.get("plain_perplexity", {}).items():
            dense = validation["dense"][task]["plain_perplexity"]
            L.append("- " + T["held_plain"].format(set=fmt_set(v["removed"]), task=task, dense=f"{dense:.2f}",
                                                   ppl=f"{ppl:.2f}", rise=pct(ppl / dense - 1), n=validation["tasks"][task]["n"]))
    return L + [""]


def held_out_flags(recs: dict, validation: dict | None) -> list[str]:
    """Recommendations whose held-out mean or task drop leaves the search's 95% interval, as
    `level (worse)` when a held-out drop is above its interval (the advice was optimistic), else
    `level (better)`."""
    out = []
    for level in advice.LEVELS:
        r = recs[level]
        v = (validation or {}).get("sets", {}).get(",".join(map(str, r["removed"]))) if r["k"] else None
        if v is None:
            continue
        pairs = [(v["mean_drop"], r["ci95"])] + [(v["drops"][t], r["task_ci95"][t]) for t in v["drops"] if t in r["task_ci95"]]
        if any(d > hi for d, (lo, hi) in pairs):
            out.append(f"{level} (worse)")
        elif any(d < lo for d, (lo, hi) in pairs):
            out.append(f"{level} (better)")
    return out


def render(a: dict, recs: dict, path: list[dict], findings: list[dict], lang: str, out: Path, command: str,
           decisions: list[dict] | None = None, validation: dict | None = None) -> str:
    T = TEXT[lang]
    tasks = a["tasks"]
    groups = by_k(a["candidates"])
    L = [f"# {T['title'].format(model=a['model'])}", ""]
    L += [f"> ⚠ **{T['warning']}**: {w}\n" for w in a.get("warnings", [])]
    L += [f"## {T['overview']}", "",
         T["overview_text"].format(method=a["method"], n=a["num_blocks"], model=a["model"], c=len(a["candidates"]),
                                   t=len(tasks), b=a.get("replicates", stats.DEFAULT_REPLICATES)), ""]
    if len(tasks) < 2:
        L += [T["one_task"], ""]
    L += [f"| {T['task']} | {T['metric']} | {T['dense']} | {T['ranked']} | {T['dense']} | {T['n']} |",
          "| --- | --- | --- | --- | --- | --- |"]
    L += [f"| {n} | {t['metric']} | {t['baseline']:.4g} | {t['rank_score']} | {t['rank_baseline']:.4g} | {t['n']} |"
          for n, t in tasks.items()]
    if a.get("notes"):
        L += ["", f"**{T['notes']}**:", ""] + [f"- {note}" for note in a["notes"]]
    L += ["", f"## {T['best']}", ""]
    sig = next(f for f in findings if f["kind"] == "best_vs_runner_up")["per_k"]
    for k in range(1, max(groups, default=0) + 1):
        L += [f"### {T['remove_k'].format(k=k, s='' if k == 1 else 's')}", ""]
        cs = groups.get(k)
        if not cs:
            L += [T["none_k"], ""]
            continue
        c = cs[0]
        L += [f"**{T['choice'].format(set=fmt_set(c['removed']))}**", "",
              f"- **{T['mean']}**: {pct(c['mean_drop'])} ± {pct(c['std_drop'])}",
              f"- **{T['ci']}**: {pct(c['ci95'][0])} – {pct(c['ci95'][1])}",
              f"- **{T['range']}**: {pct(c['min_drop'])} – {pct(c['max_drop'])}",
              f"- **{T['task_ci']}**: " + "; ".join(f"{t} {pct(c['drops'][t])} [{pct(c['task_ci95'][t][0])} – "
                                                    f"{pct(c['task_ci95'][t][1])}]{shown_note(c, t, tasks)}" for t in tasks)]
        if not advice.guard(c, recs["tolerance"]):
            L.append(f"- {T['guard_fail'].format(t=pct(recs['tolerance']), tasks=', '.join(guard_failures(c, recs['tolerance'])))}")
        L.append("")
        L += [f"**{T['top5']}**:", "", f"| # | removed | {T['mean']} ± std | {T['ci']} | " + " | ".join(tasks) + " |",
              "|" + " --- |" * (4 + len(tasks))]
        for i, x in enumerate(cs[:5], 1):
            mark = "" if advice.guard(x, recs["tolerance"]) else " ✗"
            L.append(f"| {i} | {fmt_set(x['removed'])}{mark} | {pct(x['mean_drop'])} ± {pct(x['std_drop'])} | "
                     f"{pct(x['ci95'][0])} – {pct(x['ci95'][1])} | " + " | ".join(task_cell(x, t, tasks) for t in tasks) + " |")
        if k in sig:
            s = sig[k]
            L += ["", T["vs"].format(r=fmt_set(s["runner_up"]), d=pct(s["difference"]), lo=pct(s["ci95"][0]),
                                     hi=pct(s["ci95"][1]), verdict=T["sig"] if s["significant"] else T["notsig"])]
        L.append("")
    L += [f"## {T['step']}", "", T["step_text"], "", f"| step | removed | {T['mean']} ± std | {T['ci']} | {T['incr']} |",
          "| --- | --- | --- | --- | --- |"]
    for s in path:
        mark = "" if s["extends_previous"] else " *"
        L.append(f"| {s['k']} | {fmt_set(s['removed'])}{mark} | {pct(s['mean_drop'])} ± {pct(s['std_drop'])} | "
                 f"{pct(s['ci95'][0])} – {pct(s['ci95'][1])} | {pct(s['incremental_drop'])} |")
    if any(not s["extends_previous"] for s in path[1:]):
        L += ["", f"\\* {T['jump']}"]
    L += ["", f"## {T['rec']}", "", T["guard"], ""]
    for level in advice.LEVELS:
        r = recs[level]
        L += [f"### {T[level]}", "", f"- **{T['rule']}**: {T['rule_' + level].format(t=pct(recs['tolerance']))}"]
        if r["k"]:
            L += [f"- **{fmt_set(r['removed'])}** (k = {r['k']}): {pct(r['mean_drop'])} ± {pct(r['std_drop'])}, "
                  f"{T['ci']} {pct(r['ci95'][0])} – {pct(r['ci95'][1])}; " +
                  "; ".join(f"{t} {pct(d)} ({pct(r['task_ci95'][t][0])} – {pct(r['task_ci95'][t][1])})"
                            for t, d in r["drops"].items())]
        else:
            L.append(f"- {T['no_rec']}")
        L.append("")
    L += decision_lines(decisions, recs["tolerance"], T)
    L += validation_lines(recs, validation, T, out)
    L += latency_lines(recs, T, out, a)
    L += [f"## {T['findings']}", ""]
    for i, line in enumerate(finding_lines(findings, T), 1):
        L.append(f"{i}. {line}")
    if a["per_block"]:
        L += ["", f"## {T['blocks']}", "", f"| {T['block']} | {T['rank']} | {T['mean']} | {T['ci']} | " + " | ".join(tasks) + " |",
              "|" + " --- |" * (4 + len(tasks))]
        for b in a["per_block"]:
            mark = "†" if "samples" in b else ""
            L.append(f"| {b['block']}{mark} | {b['rank']} | {pct(b['mean_drop'])} | {pct(b['ci95'][0])} – {pct(b['ci95'][1])} | "
                     + " | ".join(pct(b["drops"][t]) for t in tasks) + " |")
        partial = [b for b in a["per_block"] if "samples" in b]
        if partial:
            counts = sorted({m for b in partial for m in b["samples"].values()})
            L += ["", T["partial_note"].format(n="/".join(map(str, counts)), m=len(a.get("eliminated", [])))]
    L += ["", f"## {T['plots']}", ""]
    for name in PLOTS:
        if (out / "plots" / f"{name}.png").exists():
            L.append(f"![{name}](plots/{name}.png)")
    L += ["", f"## {T['files']}", ""]
    report_name = "REPORT.zh.md" if lang == "zh" else "REPORT.md"
    for f, what in T["f_files"].items():
        L.append(f"- `{report_name if f == 'REPORT' else f}`: {what}")
    L.append(f"- `plots/`: {', '.join(p + '.png' for p in PLOTS)}")
    L += ["", f"## {T['usage']}", "", T["repro"].format(out=out), "", "```bash", command, "```", ""]
    return "\n".join(L)


def latency_lines(recs: dict, T: dict, out: Path, a: dict) -> list[str]:
    """The recommendations with their measured speedup, when the run has a latency.json (else nothing)."""
    speed = latency.load_speedups(out, a["model"])
    if not speed:
        return []
    first = next(iter(speed.values()))
    L = [f"### {T['lat_title']}", "", T["lat_text"].format(backend=first["backend"], batch=first["batch"],
                                                          **latency.load_settings(out)), "",
         f"| {T['lat_level']} | removed | k | {T['mean']} | {T['lat_speedup']} | {T['lat_ideal']} | {T['lat_prefill']} |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
    for level in advice.LEVELS:
        r = recs[level]
        if not r["k"]:
            L.append(f"| {T[level]} | — | 0 | — | — | — | — |")
            continue
        m = speed.get(tuple(r["removed"]))
        ideal = a["num_blocks"] / (a["num_blocks"] - r["k"])
        measured = f"{m['decode']:.2f}x ({m['decode_paired']['min']:.2f}–{m['decode_paired']['max']:.2f})" if m else T["lat_none"]
        prefill = f"{m['prefill']:.2f}x" if m else "—"
        L.append(f"| {T[level]} | {fmt_set(r['removed'])} | {r['k']} | {pct(r['mean_drop'])} | {measured} | {ideal:.2f}x | {prefill} |")
    return L + [""]


def finding_lines(findings: list[dict], T: dict) -> list[str]:
    lines = []
    for f in findings:
        kind = f["kind"]
        if kind == "critical_blocks":
            if f["detail"]:
                items = "; ".join(T["f_crit_item"].format(b=d["block"], d=pct(d["mean_drop"]), lo=pct(d["ci95"][0]),
                                                          hi=pct(d["ci95"][1])) for d in f["detail"])
                lines.append(T["f_critical"].format(items=items))
            else:
                lines.append(T["f_critical_none"].format(c=pct(CRITICAL)))
        elif kind == "safest_blocks":
            lines.append(T["f_safe"].format(items=", ".join(f"{d['block']} ({pct(d['mean_drop'])})" for d in f["detail"])))
        elif kind == "combinations_beat_singles":
            key = "f_combo_yes" if f["value"] else "f_combo_no"
            lines.append(T[key].format(b=f["best_single"], sets=", ".join(fmt_set(s) for s in f["sets"])))
        elif kind == "interactions":
            items = "".join(f"; {fmt_set(x['removed'])} {'+' if x['interaction'] > 0 else ''}{pct(x['interaction'])}"
                            for x in f["significant"][:3])
            lines.append(T["f_inter"].format(n=f["count_significant"], m=f["count"], items=items))
        elif kind == "rank_agreement":
            pairs = ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in f["spearman"].items())
            lines.append(T["f_rank"].format(m="n/a" if f["mean"] is None else f"{f['mean']:.2f}", pairs=pairs))
        elif kind == "incremental_drops_grow":
            inc = " → ".join(pct(x) for x in f["increments"])
            lines.append(T["f_grow_yes" if f["value"] else "f_grow_no"].format(inc=inc))
    return lines


# ---- plots ----------------------------------------------------------------------------------
PLOTS = ("ranking", "single_block_heatmap", "stepwise", "drop_distribution", "drop_vs_speedup")


def plot_all(a: dict, path: list[dict], directory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_k(a["candidates"])
    ks = sorted(groups)
    if ks:
        fig, axes = plt.subplots(1, len(ks), figsize=(4 * len(ks), 3.5), squeeze=False)
        for ax, k in zip(axes[0], ks):
            top = groups[k][:5]
            y = [100 * c["mean_drop"] for c in top]
            err = [[100 * (c["mean_drop"] - c["ci95"][0]) for c in top], [100 * (c["ci95"][1] - c["mean_drop"]) for c in top]]
            ax.bar(range(len(top)), y, yerr=np.clip(err, 0, None), capsize=3, color="tab:blue")
            ax.set_xticks(range(len(top)), [fmt_set(c["removed"]) for c in top], rotation=45, ha="right", fontsize=7)
            ax.set_title(f"k = {k}: top {len(top)}")
            ax.set_ylabel("mean drop (%), 95% CI")
        fig.tight_layout()
        fig.savefig(directory / "ranking.png", dpi=110)
        plt.close(fig)
    if a["per_block"]:
        tasks = list(a["tasks"])
        grid = np.array([[100 * b["drops"][t] for b in a["per_block"]] for t in tasks])
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(a["per_block"])), 1 + 0.5 * len(tasks)))
        im = ax.imshow(np.clip(grid, -50, 100), aspect="auto", cmap="magma_r")
        ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
        ax.set_xticks(range(len(a["per_block"])), [b["block"] for b in a["per_block"]], fontsize=7)
        ax.set_xlabel("removed block")
        ax.set_title("single-block drop per task (%, clipped to [-50, 100])")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(directory / "single_block_heatmap.png", dpi=110)
        plt.close(fig)
    if path:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        k = [s["k"] for s in path]
        m = np.array([100 * s["mean_drop"] for s in path])
        lo = np.array([100 * s["ci95"][0] for s in path])
        hi = np.array([100 * s["ci95"][1] for s in path])
        ax.plot(k, m, "o-", label="mean drop")
        ax.fill_between(k, lo, hi, alpha=0.25, label="95% CI")
        ax.bar(k, [100 * s["incremental_drop"] for s in path], alpha=0.4, color="tab:orange", label="incremental")
        ax.set_xlabel("blocks removed (stepwise)")
        ax.set_ylabel("drop (%)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(directory / "stepwise.png", dpi=110)
        plt.close(fig)
    if ks:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for k in ks:
            ax.hist([100 * c["mean_drop"] for c in groups[k]], bins=20, alpha=0.5, label=f"k = {k}")
        ax.set_xlabel("mean drop (%)")
        ax.set_ylabel("candidates")
        ax.legend()
        fig.tight_layout()
        fig.savefig(directory / "drop_distribution.png", dpi=110)
        plt.close(fig)


# ---- writing ----------------------------------------------------------------------------------
def command_of(info: dict, out: Path) -> str:
    s = info["settings"]
    parts = ["blockprune search", f"--model {s['model']}"] + [f"--task {t['spec']}" for t in s["tasks"].values()]
    parts += [f"--method {s['method']}", f"--beam-width {s['beam_width']}", f"--max-remove {s['max_remove']}"]
    if s.get("samples"):
        parts.append(f"--samples {s['samples']}")
    parts += [f"--seed {s['seed']}", f"--ppl-window {s['ppl_window']}"]
    if s.get("protected"):
        parts.append("--protect " + ",".join(map(str, s["protected"])))
    if s.get("racing") is False:
        parts.append("--exact")
    for name, value in s.get("evolution", {}).items():
        parts.append(f"--{name} {value}")
    if s.get("sets"):
        parts.append("--sets '" + ";".join(",".join(map(str, x)) for x in s["sets"]) + "'")
    parts += [f"--min-depth {s['min_depth']}", f"--dtype {s['dtype']}", f"--out {out}"]
    return " \\\n    ".join(parts)


def run_tolerance(directory: str | Path) -> float:
    """The tolerance a run was searched with (recorded in run.json), else the default."""
    try:
        return float(Store.open_existing(Path(directory)).run_info.get("tolerance", DEFAULT_TOLERANCE))
    except (TypeError, ValueError):
        return DEFAULT_TOLERANCE


def check_options(lang: str, tolerance: float) -> None:
    if lang not in TEXT:
        raise ReportError(f"unknown language {lang!r}: choose en or zh")
    if not 0 < tolerance < 1:
        raise ReportError("--tolerance must be between 0 and 1 (a relative drop, e.g. 0.05)")


def build_analysis(directory: str | Path, replicates: int = stats.DEFAULT_REPLICATES) -> dict:
    """The run's analysis, refused when no candidate is complete."""
    a = analysis_mod.build(Store.open_existing(Path(directory)), replicates)
    a["replicates"] = replicates
    if not a["candidates"]:
        raise ReportError(f"{directory}: no candidate is scored on every task yet; rerun the search to resume it")
    return a


def load_validation(directory: Path) -> dict | None:
    import json

    try:
        return json.loads((Path(directory) / VALIDATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_report(directory: str | Path, lang: str = "en", tolerance: float | None = None,
                 replicates: int = stats.DEFAULT_REPLICATES, analysis: dict | None = None) -> dict:
    """(Re)generate every report file of a run directory from its store (or a prebuilt `analysis`);
    `tolerance` None: the one the run was searched with."""
    directory = Path(directory)
    if tolerance is None:
        tolerance = run_tolerance(directory)
    check_options(lang, tolerance)
    store = Store.open_existing(directory)
    a = analysis if analysis is not None else build_analysis(directory, replicates)
    groups = by_k(a["candidates"])
    path = stepwise(groups)
    recs = recommendations(groups, tolerance)
    decisions = advice.decisions(groups, a["tasks"], tolerance)
    findings = key_findings(a, groups, path)
    validation = load_validation(directory)
    best = {k: {"best": cs[0], "top5": cs[:5]} for k, cs in groups.items()}
    rec_json = {"model": a["model"], "tolerance": tolerance, "rank_by": a["rank_by"], "independent_best": best,
                "stepwise": path, "recommendations": recs, "decisions": decisions, "key_findings": findings,
                **({"held_out": {"flagged": held_out_flags(recs, validation), "sets": validation["sets"],
                                 "tasks": validation["tasks"]}} if validation else {})}
    # plots into a temporary folder, swapped in whole; the caller holds the run's lock, so a
    # `.plots-*` folder already here is what a killed report left behind
    for stale in directory.glob(".plots-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".plots-", dir=directory))
    chmod_like_user(tmp, directory=True)
    try:
        plot_all(a, path, tmp)
        speed = latency.load_speedups(directory, a["model"])
        if speed:
            latency.plot_drop_vs_speedup(a["candidates"], speed, tmp / "drop_vs_speedup.png")
        final = directory / "plots"
        old = directory / ".plots-old"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    command = command_of(store.run_info, directory)
    atomic_write_json(directory / analysis_mod.ANALYSIS_FILE, analysis_mod.public(a))
    atomic_write_json(directory / RECOMMENDATIONS_FILE, rec_json)
    atomic_write_text(directory / analysis_mod.SUMMARY_FILE, analysis_mod.summary_markdown(a))
    atomic_write_text(directory / ("REPORT.zh.md" if lang == "zh" else "REPORT.md"),
                      render(a, recs, path, findings, lang, directory, command, decisions, validation))
    return rec_json
