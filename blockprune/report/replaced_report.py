"""blockprune's report on the replaced system's result files: `blockprune report --replaced-system ROOT`.

`blockprune.report.replaced` reads the files and applies that system's own rules; this module adds what
blockprune's rules say about the same numbers (`our_view`: only sets scored on every dataset are
compared, with the sample std and a 95% interval of the mean across datasets, from
`blockprune.analysis.stats`), renders both in the reference's layout (words in `report_text.REPLACED_TEXT`)
and writes the three files.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..runs import outputs, rundir
from ..analysis import stats
from .replaced import (ANALYSIS_FILE, MIN_DATASETS, RECOMMENDATIONS_FILE, ReplacedError, ReplacedResults, aggregate,
                       label, load_replaced, reference_analysis, remove_label)
from .text import REPLACED_TEXT, fmt_set, pct


def our_view(data: ReplacedResults, ref: dict) -> dict:
    """What blockprune's rules say about the same numbers: only sets scored on every dataset are
    compared, with the sample std (ddof=1) and a 95% interval of the mean over datasets."""
    sets = aggregate(data)
    N = len(data.datasets)
    names = list(data.datasets)
    method = "t" if stats.student_t() is not None else "normal"
    complete: dict[int, list[dict]] = {}
    for c in sets:
        if c["num_datasets"] == N:
            xs = [c["drops"][d] for d in names]
            ci = stats.mean_interval95(xs)
            complete.setdefault(c["k"], []).append({
                "removed": list(c["removed"]), "mean_drop": c["mean_drop"], "std_drop": stats.fstd(xs, 1), "ci95": ci,
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
def _plural(k: int) -> str:
    return "" if k == 1 else "s"


def render_markdown(ref: dict, ours: dict, lang: str = "en", out_dir: str | Path | None = None) -> str:
    """The reference's report layout (in its wording for zh, an English rendering for en), followed by
    a section on what blockprune's rules say."""
    if lang not in REPLACED_TEXT:
        raise ValueError(f"lang must be 'en' or 'zh', not {lang!r}")
    T = REPLACED_TEXT[lang]
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
        L += [f"**{T['best'].format(what=remove_label(b['removed']))}**", "",
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
        L += [f"### {T['step'].format(k=k, s=_plural(k))}", "", f"**{T['choice'].format(what=remove_label(s['removed']))}**", "",
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
            what = remove_label(r["removed"])
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
    cmd = f"blockprune report --replaced-system {ref['source']}"
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
def cross_dataset_analysis(data: ReplacedResults) -> dict:
    """Every aggregated set with its statistics (reference schema, plus k and the per-dataset values)."""
    return {"datasets": list(data.datasets), "num_datasets": len(data.datasets), "baselines": dict(data.baselines),
            "percent_input": dict(data.percent), "files": {d: str(p) for d, p in data.files.items()},
            "std": "population (ddof=0)", "sets": aggregate(data)}


def write_replaced_report(root: str | Path, out_dir: str | Path, lang: str = "en") -> list[Path]:
    """Analyse the replaced system's results under `root` and write `pruning_recommendations.json`,
    `cross_dataset_analysis.json` and `REPORT.md` (`REPORT.zh.md` for lang="zh") into `out_dir`.
    `out_dir` goes through blockprune's output rules (`outputs.claim`: new, empty or an earlier report of
    these; never a search run, a user's files, or `root` itself) and is locked while it is
    written. Everything is computed, then written in full, before any file is replaced: on an error
    (ReplacedError, a full disk) the files there are as they were."""
    
    if lang not in REPLACED_TEXT:
        raise ValueError(f"lang must be 'en' or 'zh', not {lang!r}")
    inputs = [("the seed root", root), ("blockprune's cache", str(outputs.cache_root()))]
    try:
        out = outputs.claim(out_dir, "replaced-report", inputs=inputs)
    except outputs.PathError as exc:
        raise ReplacedError(str(exc)) from None
    data = load_replaced(root)
    ref = reference_analysis(data)
    ours = our_view(data, ref)
    texts = {
        RECOMMENDATIONS_FILE: json.dumps({**ref, "blockprune_view": ours}, indent=2, ensure_ascii=False) + "\n",
        ANALYSIS_FILE: json.dumps(cross_dataset_analysis(data), indent=2, ensure_ascii=False) + "\n",
        ("REPORT.zh.md" if lang == "zh" else "REPORT.md"): render_markdown(ref, ours, lang, out_dir=Path(out_dir)),
    }
    try:
        with rundir.lock(out, "write a report in", marker=RECOMMENDATIONS_FILE):
            outputs.claim(out, "replaced-report", inputs=inputs)  # again, now that no one else can write it
            written = rundir.write_files(out, texts)
    except outputs.PathError as exc:
        raise ReplacedError(str(exc)) from None
    return [Path(out_dir) / p.name for p in written]
