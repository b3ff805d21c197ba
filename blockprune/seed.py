"""Read the result files of the system blockprune replaces and report on them.

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

`our_view` says what blockprune's own rules say about the same numbers: blockprune only compares
sets scored on every dataset, with the sample std (ddof=1) and a 95% interval of the mean across
datasets.

Text fields: `note`, `text` (findings and recommendations) are in the reference's Chinese wording,
with `note_en` / `text_en` beside them; our_view's `verdict` is English, `verdict_zh` Chinese.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path


RESULT_FILE = "exp3_accuracy_sensitivity_v2_results.json"
RECOMMENDATIONS_FILE = "pruning_recommendations.json"
ANALYSIS_FILE = "cross_dataset_analysis.json"
MIN_DATASETS = 2          # reference filter: a set must be scored on at least this many datasets
CRITICAL = 0.20           # reference: a single removal costing this much (mean drop) must never be done
TOP = 5
AGGRESSIVE_K = 4
BALANCED_K = 3
SET_KEYS = ("removed", "mean_drop", "std_drop", "num_datasets", "mean_accuracy", "datasets")


class SeedError(Exception):
    """Seed result files that cannot be used (one-line message naming the file and the problem)."""


@dataclass
class SeedRow:
    removed: tuple[int, ...]
    accuracy: float
    accuracy_drop: float
    step: int | None = None


@dataclass
class SeedData:
    root: Path
    datasets: list[str]
    baselines: dict[str, float]
    rows: dict[str, list[SeedRow]]
    files: dict[str, Path] = field(default_factory=dict)
    percent: dict[str, bool] = field(default_factory=dict)


# ---- loading -----------------------------------------------------------------------------------
def _number(value, path: Path, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise SeedError(f"{path}: field '{name}' is not a finite number: {value!r}")
    return float(value)


def _load_file(path: Path) -> tuple[float, list[SeedRow], bool]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SeedError(f"{path}: corrupt JSON (not UTF-8: {exc.reason})") from None
    except OSError as exc:
        raise SeedError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SeedError(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise SeedError(f"{path}: corrupt JSON (expected an object, got {type(obj).__name__})")
    for name in ("baseline_accuracy", "summary"):
        if name not in obj:
            raise SeedError(f"{path}: missing field '{name}'")
    baseline = _number(obj["baseline_accuracy"], path, "baseline_accuracy")
    summary = obj["summary"]
    if not isinstance(summary, list):
        raise SeedError(f"{path}: field 'summary' is not a list")
    if not summary:
        raise SeedError(f"{path}: empty summary")
    percent = baseline > 1.0
    scale = 100.0 if percent else 1.0
    rows: list[SeedRow] = []
    seen: set[tuple[int, ...]] = set()
    for i, entry in enumerate(summary):
        where = f"summary[{i}]"
        if not isinstance(entry, dict):
            raise SeedError(f"{path}: {where} is not an object")
        for name in ("removed_block_indices", "accuracy", "accuracy_drop"):
            if name not in entry:
                raise SeedError(f"{path}: missing field '{where}.{name}'")
        blocks = entry["removed_block_indices"]
        if not isinstance(blocks, list) or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in blocks):
            raise SeedError(f"{path}: field '{where}.removed_block_indices' is not a list of block indices")
        acc = _number(entry["accuracy"], path, f"{where}.accuracy") / scale
        drop = _number(entry["accuracy_drop"], path, f"{where}.accuracy_drop") / scale
        step = entry.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise SeedError(f"{path}: field '{where}.step' is not an integer: {step!r}")
        key = tuple(sorted(set(blocks)))
        if not key or key in seen:  # nothing removed (the dense model), or a repeat: the first entry counts
            continue
        seen.add(key)
        rows.append(SeedRow(key, acc, drop, step))
    return baseline / scale, rows, percent


def load_seed(root: str | Path) -> SeedData:
    """Read every `<root>/<dataset>/<split>/exp3_accuracy_sensitivity_v2_results.json` (sorted by name)."""
    root = Path(root)
    if not root.is_dir():
        raise SeedError(f"seed directory not found: {root}")
    found: dict[str, list[tuple[str, Path]]] = {}
    for ds in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for split in sorted(p for p in ds.iterdir() if p.is_dir() and not p.name.startswith(".")):
            f = split / RESULT_FILE
            if f.is_file():
                found.setdefault(ds.name, []).append((split.name, f))
    if not found:
        raise SeedError(f"no result files found: no {root}/<dataset>/<split>/{RESULT_FILE}")
    data = SeedData(root=root, datasets=[], baselines={}, rows={})
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
def _mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs)


def _pstd(xs: list[float]) -> float:
    m = _mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / len(xs))


def _sstd(xs: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    m = _mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def aggregate(data: SeedData) -> list[dict]:
    """Every removed-block set with the reference's statistics (population std), plus the per-dataset
    drops and accuracies; sorted by (k, mean drop, block ids)."""
    per: dict[tuple[int, ...], dict[str, SeedRow]] = {}
    for ds in data.datasets:
        for row in data.rows[ds]:
            per.setdefault(row.removed, {})[ds] = row
    out = []
    for key, by_ds in per.items():
        drops = [r.accuracy_drop for r in by_ds.values()]
        out.append({
            "removed": list(key), "k": len(key), "mean_drop": _mean(drops), "std_drop": _pstd(drops),
            "num_datasets": len(by_ds), "mean_accuracy": _mean([r.accuracy for r in by_ds.values()]),
            "datasets": list(by_ds), "drops": {d: r.accuracy_drop for d, r in by_ds.items()},
            "accuracies": {d: r.accuracy for d, r in by_ds.items()},
        })
    out.sort(key=lambda c: (c["k"], c["mean_drop"], c["removed"]))
    return out


def _entry(c: dict) -> dict:
    return {k: (list(c[k]) if isinstance(c[k], list) else c[k]) for k in SET_KEYS}


# ---- formatting helpers ------------------------------------------------------------------------
def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def fmt_set(removed) -> str:
    return "[" + ", ".join(str(b) for b in removed) + "]"


def label(removed) -> str:
    """'Block 4' for a single block, '[2, 10]' for a set (the reference's style)."""
    return f"Block {removed[0]}" if len(removed) == 1 else fmt_set(removed)


def _remove_label(removed) -> str:
    return f"Block {removed[0]}" if len(removed) == 1 else f"Blocks {fmt_set(removed)}"


# ---- the reference's analysis ------------------------------------------------------------------
def reference_analysis(data: SeedData, num_blocks: int | None = None) -> dict:
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


# ---- blockprune's view ---------------------------------------------------------------------------
def _student_t():
    try:
        from scipy.stats import t as student_t
    except ImportError:  # pragma: no cover - scipy is a dependency
        return None
    return student_t


def interval95(xs: list[float]) -> list[float] | None:
    """95% interval of the mean of `xs`: Student t (df = n - 1) with scipy, else the normal approximation."""
    n = len(xs)
    if n < 2:
        return None
    student_t = _student_t()
    q = float(student_t.ppf(0.975, n - 1)) if student_t is not None else 1.959963984540054
    m, h = _mean(xs), q * _sstd(xs) / math.sqrt(n)
    return [m - h, m + h]


def our_view(data: SeedData, ref: dict) -> dict:
    """What blockprune's rules say about the same numbers: only sets scored on every dataset are
    compared, with the sample std (ddof=1) and a 95% interval of the mean over datasets."""
    sets = aggregate(data)
    N = len(data.datasets)
    names = list(data.datasets)
    method = "t" if _student_t() is not None else "normal"
    complete: dict[int, list[dict]] = {}
    for c in sets:
        if c["num_datasets"] == N:
            xs = [c["drops"][d] for d in names]
            ci = interval95(xs)
            complete.setdefault(c["k"], []).append({
                "removed": list(c["removed"]), "mean_drop": c["mean_drop"], "std_drop": _sstd(xs), "ci95": ci,
                "num_datasets": N, "mean_accuracy": c["mean_accuracy"], "drops": {d: c["drops"][d] for d in names}})
    interval_desc = ("95% t-interval of the mean over datasets (scipy.stats.t, df = N - 1)" if method == "t" else
                     "95% normal approximation of the mean over datasets (mean ± 1.96·s/√N; scipy not available)")

    flags = []

    def flag(where: str, c: dict | None):
        if not c:
            return
        flags.append({"where": where, "removed": list(c["removed"]), "num_datasets": c["num_datasets"], "of": N,
                      "partial": c["num_datasets"] < N, "datasets": list(c["datasets"]),
                      "missing": [d for d in names if d not in c["datasets"]]})

    for k, ib in ref["independent_best"].items():
        flag(f"independent_best[{k}]", ib["best"])
    for level in ("conservative", "aggressive", "balanced"):
        for i, r in enumerate(ref["recommendations"][level]):
            flag(f"{level}[{i}]", r)

    per_k = {}
    for k, ib in ref["independent_best"].items():
        cs = complete.get(int(k), [])
        best = cs[0] if cs else None
        rb = ib["best"]
        if best:
            bs = f"{fmt_set(best['removed'])} ({pct(best['mean_drop'])} ± " + \
                 (pct(best["std_drop"]) if best["std_drop"] is not None else "n/a") + ")"
            bs_zh = f"{fmt_set(best['removed'])}（{pct(best['mean_drop'])} ± " + \
                    (pct(best["std_drop"]) if best["std_drop"] is not None else "n/a") + "）"
        if rb is None:
            head = f"k={k}: the reference ranks no set of this size (none scored on >= {MIN_DATASETS} datasets with a non-negative mean drop)"
            head_zh = f"k={k}：参考系统在该数量下没有可选组合（没有在至少 {MIN_DATASETS} 个数据集上评估且平均下降非负的组合）"
        elif rb["num_datasets"] < N:
            head = f"k={k}: the reference's best {fmt_set(rb['removed'])} rests on {rb['num_datasets']} of {N} datasets"
            head_zh = f"k={k}：参考系统的最佳 {fmt_set(rb['removed'])} 只基于 {N} 个数据集中的 {rb['num_datasets']} 个"
        else:
            head = f"k={k}: the reference's best {fmt_set(rb['removed'])} is scored on all {N} datasets"
            head_zh = f"k={k}：参考系统的最佳 {fmt_set(rb['removed'])} 在全部 {N} 个数据集上都有评估"
        agrees = bool(best and rb and best["removed"] == rb["removed"])
        if best is None:
            tail, tail_zh = (f"; no set of size {k} is scored on all {N}",
                             f"；没有任何 {k}-block 组合在全部 {N} 个数据集上都有评估")
        elif agrees:
            tail, tail_zh = (f" and is also the best set scored on all {N}: {bs}",
                             f"，也是在全部 {N} 个数据集上都有评估的最佳组合：{bs_zh}")
        else:
            why = " (the reference drops it for its negative mean drop)" if best["mean_drop"] < 0 else ""
            why_zh = "（参考系统因其平均下降为负而将其排除）" if best["mean_drop"] < 0 else ""
            tail, tail_zh = (f"; the best set scored on all {N} is {bs}{why}",
                             f"；在全部 {N} 个数据集上都有评估的最佳组合是 {bs_zh}{why_zh}")
        per_k[k] = {"k": int(k), "reference_best": rb["removed"] if rb else None,
                    "reference_best_num_datasets": rb["num_datasets"] if rb else None,
                    "num_complete": len(cs), "best_complete": best, "agrees": agrees,
                    "complete": cs, "verdict": head + tail, "verdict_zh": head_zh + tail_zh}
    return {"rules": ("blockprune compares only sets scored on every dataset; ± is the sample std over datasets "
                      "(ddof=1); " + interval_desc + "."),
            "rules_zh": ("blockprune 只比较在全部数据集上都有评估的组合；± 为跨数据集的样本标准差（ddof=1）；"
                         + ("95% 区间为跨数据集均值的 t 区间（scipy.stats.t，自由度 N-1）。" if method == "t" else
                            "95% 区间为跨数据集均值的正态近似（均值 ± 1.96·s/√N；scipy 不可用）。")),
            "num_datasets": N, "datasets": names, "std": "sample (ddof=1)", "interval_method": method,
            "interval": interval_desc, "flags": flags, "partial": [f for f in flags if f["partial"]], "per_k": per_k}


# ---- markdown ------------------------------------------------------------------------------------
TEXT = {
    "zh": {
        "overview": "概述",
        "overview_text": ("本文档提供了基于跨数据集 beam search 实验的 block 剪枝建议。根据要移除的 block 数量，提供了两种策略：\n"
                          "1. **独立最优策略**：每个数量级别的最佳组合（不考虑累积）\n"
                          "2. **逐步剪枝策略**：基于前一步结果逐步添加要移除的 blocks（贪心方法）"),
        "datasets_line": "数据集（{n} 个）：{names}",
        "independent": "独立最优策略", "remove_k": "移除 {k} 个 Block{s}",
        "best": "最佳选择：移除 {what}", "choice": "选择：移除 {what}",
        "mean_drop": "平均准确率下降", "n": "测试数据集数", "n_all": "{n} 个（所有数据集）", "n_some": "{n} 个",
        "mean_acc": "平均准确率", "datasets": "数据集", "top5": "Top 5 选择", "note": "注意",
        "none_k": "该数量下没有在至少 2 个数据集上测试且平均下降非负的组合。",
        "stepwise": "逐步剪枝策略（推荐）",
        "stepwise_text": "这种方法基于贪心策略，每一步都基于前一步的结果选择下一个要移除的 block。",
        "step": "Step {k}: 移除 {k} 个 Block{s}", "cum": "累积准确率下降", "inc": "增量下降", "inc_from": "（从 Step {p}）",
        "jump": "没有包含 Step {p} 组合的候选，取移除 {k} 个 blocks 的独立最优",
        "recs": "建议", "conservative": "保守策略（推荐用于生产环境）", "aggressive": "激进策略（追求更高压缩率）",
        "balanced": "平衡策略", "only": "只移除 {what}", "remove": "移除 {what}", "no_rec": "没有满足条件的组合。",
        "findings": "关键发现", "files": "文件位置", "f_recs": "推荐结果", "f_full": "完整分析", "f_report": "本报告",
        "usage": "使用方法", "u_gen": "# 生成推荐", "u_view": "# 查看推荐结果",
        "ours": "blockprune 规则的结论",
        "ours_partial": "以下参考结论只基于部分数据集：",
        "ours_none_partial": "参考系统的所有结论都基于全部数据集。",
        "ours_table": "| k | 全部数据集上的最佳组合 | 平均下降 ± 样本标准差 | 95% 区间 | 全部数据集上评估的组合数 |",
        "rests": "{where}：{set} 只基于 {n}/{N} 个数据集（缺少：{missing}）",
    },
    "en": {
        "overview": "Overview",
        "overview_text": ("This document gives block pruning recommendations based on cross-dataset beam search experiments. "
                          "Depending on how many blocks are to be removed, two strategies are given:\n"
                          "1. **Independent best strategy**: the best combination for each number of removed blocks "
                          "(not cumulative)\n"
                          "2. **Stepwise pruning strategy**: add blocks to remove step by step, building on the previous "
                          "step's result (greedy)"),
        "datasets_line": "Datasets ({n}): {names}",
        "independent": "Independent best strategy", "remove_k": "Remove {k} Block{s}",
        "best": "Best choice: remove {what}", "choice": "Choice: remove {what}",
        "mean_drop": "Mean accuracy drop", "n": "Datasets tested", "n_all": "{n} (all datasets)", "n_some": "{n}",
        "mean_acc": "Mean accuracy", "datasets": "Datasets", "top5": "Top 5 choices", "note": "Note",
        "none_k": "No set of this size was tested on at least 2 datasets with a non-negative mean drop.",
        "stepwise": "Stepwise pruning strategy (recommended)",
        "stepwise_text": "This approach is greedy: each step picks the next block to remove based on the previous step's result.",
        "step": "Step {k}: Remove {k} Block{s}", "cum": "Cumulative accuracy drop", "inc": "Incremental drop",
        "inc_from": " (from Step {p})",
        "jump": "no candidate contains Step {p}'s set; the independent best for {k} blocks is taken",
        "recs": "Recommendations", "conservative": "Conservative strategy (recommended for production)",
        "aggressive": "Aggressive strategy (for higher compression)", "balanced": "Balanced strategy",
        "only": "Remove only {what}", "remove": "Remove {what}", "no_rec": "No set meets this rule.",
        "findings": "Key findings", "files": "File locations", "f_recs": "Recommendations", "f_full": "Full analysis",
        "f_report": "This report",
        "usage": "Usage", "u_gen": "# Generate the recommendations", "u_view": "# View the recommendations",
        "ours": "What blockprune's rules say",
        "ours_partial": "These reference conclusions rest on only some of the datasets:",
        "ours_none_partial": "Every reference conclusion rests on all datasets.",
        "ours_table": "| k | best set scored on all datasets | mean drop ± sample std | 95% interval | sets scored on all datasets |",
        "rests": "{where}: {set} rests on {n}/{N} datasets (missing: {missing})",
    },
}


def _plural(k: int) -> str:
    return "" if k == 1 else "s"


def render_markdown(ref: dict, ours: dict, lang: str = "en", out_dir: str | Path | None = None) -> str:
    """The reference's report layout (in its wording for zh, an English rendering for en), followed by
    a section on what blockprune's rules say."""
    if lang not in TEXT:
        raise ValueError(f"lang must be 'en' or 'zh', not {lang!r}")
    T = TEXT[lang]
    zh = lang == "zh"
    N = ref["num_datasets"]
    note_key, text_key = ("note", "text") if zh else ("note_en", "text_en")
    L = ["# Exp3 Block Pruning Recommendations", "", f"## {T['overview']}", "", T["overview_text"], "",
         T["datasets_line"].format(n=N, names=", ".join(ref["datasets"])), "", f"## {T['independent']}", ""]

    def n_text(n):
        return T["n_all"].format(n=n) if n == N else T["n_some"].format(n=n)

    for k, ib in ref["independent_best"].items():
        k = int(k)
        L += [f"### {T['remove_k'].format(k=k, s=_plural(k))}", ""]
        b = ib["best"]
        if b is None:
            L += [T["none_k"], ""]
            continue
        L += [f"**{T['best'].format(what=_remove_label(b['removed']))}**", "",
              f"- **{T['mean_drop']}**: {pct(b['mean_drop'])} ± {pct(b['std_drop'])}",
              f"- **{T['n']}**: {n_text(b['num_datasets'])}",
              f"- **{T['mean_acc']}**: {pct(b['mean_accuracy'])}",
              f"- **{T['datasets']}**: {', '.join(b['datasets'])}", "", f"**{T['top5']}**：" if zh else f"**{T['top5']}**:"]
        for i, c in enumerate(ib["top5"], 1):
            L.append(f"{i}. {label(c['removed'])}: {pct(c['mean_drop'])} ± {pct(c['std_drop'])} ({c['num_datasets']} datasets)")
        L.append("")
        if ib.get(note_key):
            L += [f"**{T['note']}**{'：' if zh else ': '}{ib[note_key]}", ""]

    L += [f"## {T['stepwise']}", "", T["stepwise_text"], ""]
    for s in ref["stepwise"]:
        k = s["step"]
        L += [f"### {T['step'].format(k=k, s=_plural(k))}", "", f"**{T['choice'].format(what=_remove_label(s['removed']))}**", "",
              f"- **{T['mean_drop']}**: {pct(s['mean_drop'])} ± {pct(s['std_drop'])}",
              f"- **{T['n']}**: {n_text(s['num_datasets'])}",
              f"- **{T['cum']}**: {pct(s['cumulative_drop'])}"]
        if k > 1:
            L.append(f"- **{T['inc']}**{T['inc_from'].format(p=k - 1)}: {pct(s['incremental_drop'])}")
            if not s["extends_previous"]:
                L.append(f"- **{T['note']}**: {T['jump'].format(p=k - 1, k=k)}")
        L.append("")
    for s in ref["stepwise"]:
        if s.get(note_key):
            L += [f"**{T['note']}**{'：' if zh else ': '}{s[note_key]}", ""]

    L += [f"## {T['recs']}", ""]
    for level in ("conservative", "aggressive", "balanced"):
        L += [f"### {T[level]}", ""]
        recs = ref["recommendations"][level]
        if not recs:
            L += [T["no_rec"], ""]
            continue
        for i, r in enumerate(recs, 1):
            what = _remove_label(r["removed"])
            head = T["only"].format(what=what) if (level == "conservative" and i == 1) else T["remove"].format(what=what)
            line = f"{i}. **{head}**{'：' if zh else ': '}{r[text_key]}"
            if r.get(note_key):
                line += ("" if zh else " ") + r[note_key]
            L.append(line)
        L.append("")

    L += [f"## {T['findings']}", ""]
    for i, f in enumerate(ref["key_findings"], 1):
        L += [f"{i}. {f[text_key]}", ""]

    out = Path(out_dir) if out_dir is not None else None
    loc = (lambda name: str(out / name)) if out is not None else (lambda name: name)
    report_name = "REPORT.zh.md" if zh else "REPORT.md"
    L += [f"## {T['files']}", "",
          f"- **{T['f_recs']}**: `{loc(RECOMMENDATIONS_FILE)}`",
          f"- **{T['f_full']}**: `{loc(ANALYSIS_FILE)}`",
          f"- **{T['f_report']}**: `{loc(report_name)}`", ""]
    cmd = f"blockprune report --from-seed {ref['source']}"
    if out is not None:
        cmd += f" --out {out}"
    if zh:
        cmd += " --lang zh"
    L += [f"## {T['usage']}", "", "```bash", T["u_gen"], cmd, "", T["u_view"],
          f"cat {loc(RECOMMENDATIONS_FILE)} | jq", "```", ""]

    # blockprune's view
    L += [f"## {T['ours']}", "", ours["rules_zh"] if zh else ours["rules"], ""]
    for k, v in ours["per_k"].items():
        L.append(f"- {v['verdict_zh'] if zh else v['verdict']}")
    L.append("")
    partial = ours["partial"]
    if partial:
        L += [T["ours_partial"], ""]
        for f in partial:
            L.append("- " + T["rests"].format(where=f["where"], set=fmt_set(f["removed"]), n=f["num_datasets"], N=f["of"],
                                              missing=", ".join(f["missing"])))
    else:
        L.append(T["ours_none_partial"])
    L += ["", T["ours_table"], "| --- | --- | --- | --- | --- |"]
    for k, v in ours["per_k"].items():
        b = v["best_complete"]
        if b is None:
            L.append(f"| {k} | – | – | – | 0 |")
            continue
        std = pct(b["std_drop"]) if b["std_drop"] is not None else "n/a"
        ci = f"{pct(b['ci95'][0])} – {pct(b['ci95'][1])}" if b["ci95"] else "n/a"
        L.append(f"| {k} | {fmt_set(b['removed'])} | {pct(b['mean_drop'])} ± {std} | {ci} | {v['num_complete']} |")
    L.append("")
    return "\n".join(L)


# ---- writing -------------------------------------------------------------------------------------
def cross_dataset_analysis(data: SeedData) -> dict:
    """Every aggregated set with its statistics (reference schema, plus k and the per-dataset values)."""
    return {"datasets": list(data.datasets), "num_datasets": len(data.datasets), "baselines": dict(data.baselines),
            "percent_input": dict(data.percent), "files": {d: str(p) for d, p in data.files.items()},
            "std": "population (ddof=0)", "sets": aggregate(data)}


def write_seed_report(root: str | Path, out_dir: str | Path, lang: str = "en") -> list[Path]:
    """Analyse the seed results under `root` and write `pruning_recommendations.json`,
    `cross_dataset_analysis.json` and `REPORT.md` (`REPORT.zh.md` for lang="zh") into `out_dir`.
    `out_dir` goes through blockprune's output rules (`rundir.claim`: new, empty or an earlier seed
    report; never a search run, a user's files, or the seed root itself) and is locked while it is
    written. Everything is computed, then written in full, before any file is replaced: on an error
    (SeedError, a full disk) the files there are as they were."""
    from . import rundir

    if lang not in TEXT:
        raise ValueError(f"lang must be 'en' or 'zh', not {lang!r}")
    inputs = [("the seed root", root), ("blockprune's cache", str(rundir.cache_root()))]
    try:
        out = rundir.claim(out_dir, "seed-report", inputs=inputs)
    except rundir.PathError as exc:
        raise SeedError(str(exc)) from None
    data = load_seed(root)
    ref = reference_analysis(data)
    ours = our_view(data, ref)
    texts = {
        RECOMMENDATIONS_FILE: json.dumps({**ref, "blockprune_view": ours}, indent=2, ensure_ascii=False) + "\n",
        ANALYSIS_FILE: json.dumps(cross_dataset_analysis(data), indent=2, ensure_ascii=False) + "\n",
        ("REPORT.zh.md" if lang == "zh" else "REPORT.md"): render_markdown(ref, ours, lang, out_dir=Path(out_dir)),
    }
    try:
        with rundir.lock(out, "write a report in", marker=RECOMMENDATIONS_FILE):
            rundir.claim(out, "seed-report", inputs=inputs)  # again, now that no one else can write it
            written = rundir.write_files(out, texts)
    except rundir.PathError as exc:
        raise SeedError(str(exc)) from None
    return [Path(out_dir) / p.name for p in written]
