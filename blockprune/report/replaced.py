"""Read the result files of the system blockprune replaces and apply that system's own rules.

(Its files are not the RNG `--seed`: this is `blockprune report --replaced-system ROOT`.)

The older system ran a beam search separately on each dataset and wrote, per dataset and split,
`<root>/<dataset>/<split>/exp3_accuracy_sensitivity_v2_results.json`:

    {"baseline_accuracy": 0.75,
     "summary": [{"removed_block_indices": [4], "accuracy": 0.73, "accuracy_drop": 0.02, "step": 1}, ...]}

Values are fractions; a file whose `baseline_accuracy` is > 1 holds percentages (all of its
accuracy values are divided by 100). Each `<dataset>/<split>` is one "dataset", named `<dataset>`
when the dataset has one split and `<dataset>/<split>` otherwise.

`reference_analysis` reproduces that system's recommendation rules exactly:

* every removed-block set (a sorted tuple) is aggregated over the datasets that scored it: mean and
  POPULATION std (ddof=0) of `accuracy_drop`, number of datasets n, mean `accuracy`; a set listed
  twice in one dataset's summary counts once (the first entry);
* independent best per k: only sets scored on >= 2 datasets with mean drop >= 0, sorted by mean
  drop (ties by block ids); best = first; top 5; when the best rests on fewer than all datasets, a
  note names the set with the largest n among the top 5 (ties: smaller mean drop);
* stepwise path: step 1 = best single; step k = the best filtered set of size k containing step
  k-1's set, else the independent best of size k; incremental drop = mean drop(k) - mean drop(k-1)
  (step 1: its own mean drop, i.e. from nothing removed);
* recommendations: conservative = steps 1 and 2; aggressive = the two best 4-block sets (or of the
  largest k present); balanced = among the top 5 3-block sets the one scored on the most datasets
  (ties: lower mean drop);
* key findings: least important block; blocks whose single removal costs >= 20% on average (over
  every single-block set, whatever its n); middle-block candidates (the top 5 single blocks except
  the first and last block); whether a combination beats the best single removal; whether the
  incremental drops of the stepwise path are non-decreasing.

`blockprune.report.replaced_report.our_view` says what blockprune's own rules say about the same numbers:
blockprune only compares sets scored on every dataset, with the sample std (ddof=1) and a 95%
interval of the mean across datasets; that module also renders and writes the report.

Text fields: `note`, `text` (findings and recommendations) are in the reference's Chinese wording,
with `note_en` / `text_en` beside them; our_view's `verdict` is English, `verdict_zh` Chinese.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .text import fmt_set, pct
from ..analysis.stats import fmean, fstd


RESULT_FILE = "exp3_accuracy_sensitivity_v2_results.json"
RECOMMENDATIONS_FILE = "pruning_recommendations.json"
ANALYSIS_FILE = "cross_dataset_analysis.json"
MIN_DATASETS = 2          # reference filter: a set must be scored on at least this many datasets
CRITICAL = 0.20           # reference: a single removal costing this much (mean drop) must never be done
TOP = 5
AGGRESSIVE_K = 4
BALANCED_K = 3
SET_KEYS = ("removed", "mean_drop", "std_drop", "num_datasets", "mean_accuracy", "datasets")


class ReplacedError(Exception):
    """Result files of the replaced system that cannot be used (one-line message naming the file and the problem)."""


@dataclass
class ReplacedRow:
    removed: tuple[int, ...]
    accuracy: float
    accuracy_drop: float
    step: int | None = None


@dataclass
class ReplacedResults:
    root: Path
    datasets: list[str]
    baselines: dict[str, float]
    rows: dict[str, list[ReplacedRow]]
    files: dict[str, Path] = field(default_factory=dict)
    percent: dict[str, bool] = field(default_factory=dict)


# ---- loading -----------------------------------------------------------------------------------
def _number(value, path: Path, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ReplacedError(f"{path}: field '{name}' is not a finite number: {value!r}")
    return float(value)


def _load_file(path: Path) -> tuple[float, list[ReplacedRow], bool]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ReplacedError(f"{path}: corrupt JSON (not UTF-8: {exc.reason})") from None
    except OSError as exc:
        raise ReplacedError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReplacedError(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ReplacedError(f"{path}: corrupt JSON (expected an object, got {type(obj).__name__})")
    for name in ("baseline_accuracy", "summary"):
        if name not in obj:
            raise ReplacedError(f"{path}: missing field '{name}'")
    baseline = _number(obj["baseline_accuracy"], path, "baseline_accuracy")
    summary = obj["summary"]
    if not isinstance(summary, list):
        raise ReplacedError(f"{path}: field 'summary' is not a list")
    if not summary:
        raise ReplacedError(f"{path}: empty summary")
    percent = baseline > 1.0
    scale = 100.0 if percent else 1.0
    rows: list[ReplacedRow] = []
    seen: set[tuple[int, ...]] = set()
    for i, entry in enumerate(summary):
        where = f"summary[{i}]"
        if not isinstance(entry, dict):
            raise ReplacedError(f"{path}: {where} is not an object")
        for name in ("removed_block_indices", "accuracy", "accuracy_drop"):
            if name not in entry:
                raise ReplacedError(f"{path}: missing field '{where}.{name}'")
        blocks = entry["removed_block_indices"]
        if not isinstance(blocks, list) or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in blocks):
            raise ReplacedError(f"{path}: field '{where}.removed_block_indices' is not a list of block indices")
        acc = _number(entry["accuracy"], path, f"{where}.accuracy") / scale
        drop = _number(entry["accuracy_drop"], path, f"{where}.accuracy_drop") / scale
        step = entry.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise ReplacedError(f"{path}: field '{where}.step' is not an integer: {step!r}")
        key = tuple(sorted(set(blocks)))
        if not key or key in seen:  # nothing removed (the dense model), or a repeat: the first entry counts
            continue
        seen.add(key)
        rows.append(ReplacedRow(key, acc, drop, step))
    return baseline / scale, rows, percent


def load_replaced(root: str | Path) -> ReplacedResults:
    """Read every `<root>/<dataset>/<split>/exp3_accuracy_sensitivity_v2_results.json` (sorted by name)."""
    root = Path(root)
    if not root.is_dir():
        raise ReplacedError(f"seed directory not found: {root}")
    found: dict[str, list[tuple[str, Path]]] = {}
    for ds in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for split in sorted(p for p in ds.iterdir() if p.is_dir() and not p.name.startswith(".")):
            f = split / RESULT_FILE
            if f.is_file():
                found.setdefault(ds.name, []).append((split.name, f))
    if not found:
        raise ReplacedError(f"no result files found: no {root}/<dataset>/<split>/{RESULT_FILE}")
    data = ReplacedResults(root=root, datasets=[], baselines={}, rows={})
    for ds, splits in found.items():
        for split, f in splits:
            name = ds if len(splits) == 1 else f"{ds}/{split}"
            baseline, rows, percent = _load_file(f)
            data.datasets.append(name)
            data.baselines[name] = baseline
            data.rows[name] = rows
            data.files[name] = f
            data.percent[name] = percent
    return data


# ---- aggregation -------------------------------------------------------------------------------
def aggregate(data: ReplacedResults) -> list[dict]:
    """Every removed-block set with the reference's statistics (population std), plus the per-dataset
    drops and accuracies; sorted by (k, mean drop, block ids)."""
    per: dict[tuple[int, ...], dict[str, ReplacedRow]] = {}
    for ds in data.datasets:
        for row in data.rows[ds]:
            per.setdefault(row.removed, {})[ds] = row
    out = []
    for key, by_ds in per.items():
        drops = [r.accuracy_drop for r in by_ds.values()]
        out.append({
            "removed": list(key), "k": len(key), "mean_drop": fmean(drops), "std_drop": fstd(drops),
            "num_datasets": len(by_ds), "mean_accuracy": fmean([r.accuracy for r in by_ds.values()]),
            "datasets": list(by_ds), "drops": {d: r.accuracy_drop for d, r in by_ds.items()},
            "accuracies": {d: r.accuracy for d, r in by_ds.items()},
        })
    out.sort(key=lambda c: (c["k"], c["mean_drop"], c["removed"]))
    return out


def _entry(c: dict) -> dict:
    return {k: (list(c[k]) if isinstance(c[k], list) else c[k]) for k in SET_KEYS}


# ---- formatting ----------------------------------------------------------------------------------
def label(removed) -> str:
    """'Block 4' for a single block, '[2, 10]' for a set (the reference's style)."""
    return f"Block {removed[0]}" if len(removed) == 1 else fmt_set(removed)


def remove_label(removed) -> str:
    return f"Block {removed[0]}" if len(removed) == 1 else f"Blocks {fmt_set(removed)}"


# ---- the reference's analysis ------------------------------------------------------------------
def reference_analysis(data: ReplacedResults, num_blocks: int | None = None) -> dict:
    """The older system's recommendations, by its rules (see the module docstring).

    num_blocks: the model's block count (for "first and last block"); default: largest index seen + 1."""
    sets = aggregate(data)
    N = len(data.datasets)
    if num_blocks is None:
        num_blocks = max((b for c in sets for b in c["removed"]), default=-1) + 1
    max_k = max((c["k"] for c in sets), default=0)
    kept: dict[int, list[dict]] = {}
    for c in sets:  # sorted by (k, mean drop, ids)
        if c["num_datasets"] >= MIN_DATASETS and c["mean_drop"] >= 0:
            kept.setdefault(c["k"], []).append(c)

    independent: dict[int, dict] = {}
    for k in range(1, max_k + 1):
        cs = kept.get(k, [])
        if not cs:
            independent[k] = {"best": None, "top5": [], "note": None, "note_en": None, "robust_alternative": None}
            continue
        best, top = cs[0], cs[:TOP]
        note = note_en = alt = None
        if best["num_datasets"] < N:
            robust = max(top, key=lambda c: c["num_datasets"])  # first of the max: lowest mean drop
            if robust is not best:
                alt = _entry(robust)
                note = (f"虽然 {label(best['removed'])} 的平均下降最小，但只在 {best['num_datasets']} 个数据集上测试。"
                        f"如果需要更稳健的选择，可以考虑 {label(robust['removed'])}"
                        f"（{robust['num_datasets']} 个数据集，下降 {pct(robust['mean_drop'])}）。")
                note_en = (f"{label(best['removed'])} has the smallest mean drop but was tested on only "
                           f"{best['num_datasets']} datasets. For a more robust choice, consider "
                           f"{label(robust['removed'])} ({robust['num_datasets']} datasets, drop {pct(robust['mean_drop'])}).")
            else:
                note = (f"{label(best['removed'])} 只在 {best['num_datasets']} 个数据集上测试，"
                        f"Top 5 中没有在更多数据集上测试的选择。")
                note_en = (f"{label(best['removed'])} was tested on only {best['num_datasets']} of {N} datasets, "
                           f"and no top-5 choice was tested on more.")
        independent[k] = {"best": _entry(best), "top5": [_entry(c) for c in top], "note": note, "note_en": note_en,
                          "robust_alternative": alt}

    # stepwise path
    path: list[dict] = []
    prev: dict | None = None
    for k in range(1, max_k + 1):
        cs = kept.get(k, [])
        if not cs:
            break
        pick = None
        if prev is not None:
            pick = next((c for c in cs if set(prev["removed"]) < set(c["removed"])), None)
        extends = prev is None or pick is not None
        pick = pick or cs[0]
        added = sorted(set(pick["removed"]) - set(prev["removed"] if prev else []))
        path.append({"step": k, **_entry(pick), "cumulative_drop": pick["mean_drop"],
                     "incremental_drop": pick["mean_drop"] - (prev["mean_drop"] if prev else 0.0),
                     "extends_previous": extends, "added_blocks": added, "note": None, "note_en": None})
        prev = pick
    if len(path) >= 2:  # the reference's remark on a step whose increment stands out
        j = max(range(1, len(path)), key=lambda i: path[i]["incremental_drop"])
        inc = path[j]["incremental_drop"]
        others = [s["incremental_drop"] for i, s in enumerate(path) if i != j]
        if inc > 0 and inc > 2 * max(others):
            s = path[j]
            blocks = ", ".join(str(b) for b in s["added_blocks"])
            which = f"Block {blocks}" if len(s["added_blocks"]) == 1 else f"Blocks {blocks}"
            s["note"] = (f"Step {s['step']} 的增量下降较大（{pct(inc)}），说明移除第 {s['step']} 个 block"
                         f"（{which}）的影响较大。")
            s["note_en"] = (f"Step {s['step']} has a large incremental drop ({pct(inc)}): removing block number "
                            f"{s['step']} ({which}) has a large effect.")

    recs = _recommendations(independent, kept, path, list(data.datasets))
    findings = _findings(sets, kept, independent, path, N, num_blocks)
    return {"source": str(data.root), "datasets": list(data.datasets), "num_datasets": N, "num_blocks": num_blocks,
            "baselines": dict(data.baselines),
            "rules": {"min_datasets": MIN_DATASETS, "min_mean_drop": 0.0, "std": "population (ddof=0)", "top": TOP,
                      "critical_drop": CRITICAL},
            "independent_best": independent, "stepwise": path, "recommendations": recs, "key_findings": findings}


def _rec(c: dict, strategy: str, text: str, text_en: str, names: list[str]) -> dict:
    N = len(names)
    r = {"strategy": strategy, "k": len(c["removed"]), **_entry(c), "text": text, "text_en": text_en,
         "all_datasets": c["num_datasets"] == N, "note": None, "note_en": None}
    if c["num_datasets"] < N:
        missing = ", ".join(d for d in names if d not in c["datasets"])
        r["note"] = f"注意：未在全部 {N} 个数据集上验证（缺少 {missing}），结论的稳健性不足。"
        r["note_en"] = f"Caution: not verified on all {N} datasets (missing {missing}), so less robust."
    return r


def _recommendations(independent: dict, kept: dict, path: list[dict], names: list[str]) -> dict:
    N = len(names)
    cons, aggr, bal = [], [], []
    if path:
        s = path[0]
        n = s["num_datasets"]
        if n == N:
            t = f"准确率下降仅 {pct(s['mean_drop'])}，在所有 {N} 个数据集上验证，结果最稳健。"
            te = f"accuracy drops only {pct(s['mean_drop'])}, verified on all {N} datasets: the most robust result."
        else:
            t = f"准确率下降仅 {pct(s['mean_drop'])}，在 {n} 个数据集上验证。"
            te = f"accuracy drops only {pct(s['mean_drop'])}, verified on {n} datasets."
        cons.append(_rec(s, "conservative", t, te, names))
    if len(path) >= 2:
        s = path[1]
        n = s["num_datasets"]
        where = f"所有 {N}" if n == N else f" {n}"
        where_en = f"all {N}" if n == N else f"{n}"
        cons.append(_rec(s, "conservative",
                         f"准确率下降 {pct(s['mean_drop'])}，在{where} 个数据集上验证，增量下降仅 {pct(s['incremental_drop'])}。",
                         f"accuracy drops {pct(s['mean_drop'])}, verified on {where_en} datasets; the incremental drop "
                         f"is only {pct(s['incremental_drop'])}.", names))
    if kept:
        k = AGGRESSIVE_K if AGGRESSIVE_K in kept else max(kept)
        for i, c in enumerate(kept[k][:2]):
            n = c["num_datasets"]
            if n == N:
                t, te = (f"准确率下降 {pct(c['mean_drop'])}，在所有 {N} 个数据集上验证。",
                         f"accuracy drops {pct(c['mean_drop'])}, verified on all {N} datasets.")
            elif i == 0:
                t, te = (f"准确率下降 {pct(c['mean_drop'])}，但只在 {n} 个数据集上测试。",
                         f"accuracy drops {pct(c['mean_drop'])}, but was tested on only {n} datasets.")
            else:
                t, te = (f"准确率下降 {pct(c['mean_drop'])}，在 {n} 个数据集上测试。",
                         f"accuracy drops {pct(c['mean_drop'])}, tested on {n} datasets.")
            aggr.append(_rec(c, "aggressive", t, te, names))
    if BALANCED_K in kept:
        top = kept[BALANCED_K][:TOP]
        c = max(top, key=lambda c: c["num_datasets"])  # first of the max n: the lowest mean drop
        n = c["num_datasets"]
        where = f"所有 {N}" if n == N else f" {n}"
        where_en = f"all {N}" if n == N else f"{n}"
        bal.append(_rec(c, "balanced",
                        f"准确率下降 {pct(c['mean_drop'])}，在{where} 个数据集上测试，是移除 {BALANCED_K} 个 blocks 中测试最充分的。",
                        f"accuracy drops {pct(c['mean_drop'])}, tested on {where_en} datasets: the most thoroughly "
                        f"tested choice among the {BALANCED_K}-block sets.", names))
    return {"conservative": cons, "aggressive": aggr, "balanced": bal}


def _findings(sets: list[dict], kept: dict, independent: dict, path: list[dict], N: int, num_blocks: int) -> list[dict]:
    out: list[dict] = []
    best1 = independent.get(1, {}).get("best")
    if best1:
        b, n = best1["removed"][0], best1["num_datasets"]
        where = f"在所有 {N} 个数据集上测试" if n == N else f"只在 {n} 个数据集上测试"
        where_en = f"tested on all {N} datasets" if n == N else f"tested on only {n} of {N} datasets"
        out.append({"kind": "least_important_block", "block": b, "mean_drop": best1["mean_drop"],
                    "std_drop": best1["std_drop"], "num_datasets": n,
                    "text": f"**Block {b} 是最不重要的单个 block**：{where}，平均下降仅 {pct(best1['mean_drop'])}，"
                            f"标准差为 {pct(best1['std_drop'])}。",
                    "text_en": f"**Block {b} is the least important single block**: {where_en}, mean drop only "
                               f"{pct(best1['mean_drop'])}, std {pct(best1['std_drop'])}."})
    # blocks that must never go: every single-block set, whatever its n
    crit = sorted((c for c in sets if c["k"] == 1 and c["mean_drop"] >= CRITICAL), key=lambda c: c["removed"])
    if crit:
        def one(c, zh):
            b, d, n = c["removed"][0], f"{100 * c['mean_drop']:.1f}%", c["num_datasets"]
            extra = "" if n == N else (f"（{n} 个数据集）" if zh else f" ({n} of {N} datasets)")
            return (f"移除 Block {b} 会导致平均准确率下降 {d}{extra}" if zh
                    else f"removing block {b} costs {d}{extra}")
        blocks = [c["removed"][0] for c in crit]
        head = (f"Block {blocks[0]}" if len(blocks) == 1 else "Blocks " + ", ".join(map(str, blocks)))
        out.append({"kind": "critical_blocks", "blocks": blocks,
                    "detail": [{"block": c["removed"][0], "mean_drop": c["mean_drop"], "num_datasets": c["num_datasets"]}
                               for c in crit],
                    "text": f"**{head} 至关重要**：" + "，".join(one(c, True) for c in crit) + "，绝对不能移除。",
                    "text_en": f"**{head} must never go**: " + "; ".join(one(c, False) for c in crit) + "."})
    else:
        out.append({"kind": "critical_blocks", "blocks": [], "detail": [],
                    "text": f"**没有至关重要的单个 block**：没有单个 block 的移除会导致平均准确率下降 {100 * CRITICAL:.0f}% 以上。",
                    "text_en": f"**No single block is critical**: no single removal costs {100 * CRITICAL:.0f}% or more on average."})
    if independent.get(1, {}).get("top5"):
        last = num_blocks - 1
        mids = sorted(c["removed"][0] for c in independent[1]["top5"] if c["removed"][0] not in (0, last))
        if mids:
            ids = ", ".join(map(str, mids))
            out.append({"kind": "middle_block_candidates", "blocks": mids,
                        "text": f"**中间层 blocks ({ids}) 相对不重要**：这些 blocks 的移除对准确率影响较小，适合作为剪枝候选。",
                        "text_en": f"**Middle blocks ({ids}) matter relatively little**: removing them costs little "
                                   f"accuracy, so they are pruning candidates."})
    if best1:
        better = sorted((c for k, cs in kept.items() if k >= 2 for c in cs if c["mean_drop"] < best1["mean_drop"]),
                        key=lambda c: (c["mean_drop"], c["k"], c["removed"]))
        b1 = best1["removed"][0]
        if better:
            c = better[0]
            caveat = "，但测试数据集较少" if c["num_datasets"] < best1["num_datasets"] else ""
            caveat_en = ", but it was tested on fewer datasets" if c["num_datasets"] < best1["num_datasets"] else ""
            out.append({"kind": "combination_beats_single", "value": True, "best_single": b1,
                        "sets": [c["removed"] for c in better], "example": _entry(c),
                        "text": f"**组合移除可能比单 block 移除更好**：例如 {fmt_set(c['removed'])} 的平均下降"
                                f"（{pct(c['mean_drop'])}）比单独移除 Block {b1}（{pct(best1['mean_drop'])}）还要小{caveat}。",
                        "text_en": f"**Removing a combination can beat removing a single block**: e.g. the mean drop of "
                                   f"{fmt_set(c['removed'])} ({pct(c['mean_drop'])}) is smaller than removing Block {b1} "
                                   f"alone ({pct(best1['mean_drop'])}){caveat_en}."})
        else:
            out.append({"kind": "combination_beats_single", "value": False, "best_single": b1, "sets": [],
                        "example": None,
                        "text": f"**没有组合移除优于单 block 移除**：没有多 block 组合的平均下降小于单独移除 Block {b1}"
                                f"（{pct(best1['mean_drop'])}）。",
                        "text_en": f"**No combination beats the best single removal**: no multi-block set has a smaller "
                                   f"mean drop than removing Block {b1} alone ({pct(best1['mean_drop'])})."})
    if len(path) >= 2:
        inc = [s["incremental_drop"] for s in path]
        grows = all(b >= a for a, b in zip(inc, inc[1:]))
        chain = " → ".join(pct(x) for x in inc)
        last = path[-1]["step"]
        if grows:
            t = (f"**逐步移除的增量影响递增**：从 Step 1 到 Step {last}，每一步的增量影响逐渐增大（{chain}），"
                 f"说明 blocks 之间存在依赖关系。")
            te = (f"**Incremental drops grow along the stepwise path**: from Step 1 to Step {last} each step costs at "
                  f"least as much as the previous one ({chain}), a sign that the blocks depend on each other.")
        else:
            t = f"**逐步移除的增量影响并非单调递增**：从 Step 1 到 Step {last} 的增量依次为 {chain}。"
            te = f"**Incremental drops do not grow monotonically along the stepwise path**: from Step 1 to Step {last} they are {chain}."
        out.append({"kind": "incremental_drops_grow", "value": grows, "increments": inc, "text": t, "text_en": te})
    return out
