"""The recommendation report of a run: which blocks to remove per budget, how sure, what never to touch.

Inputs: the run's store (every candidate scored on every task). Outputs, in the run directory:
`cross_dataset_analysis.json`, `pruning_recommendations.json`, `REPORT.md` (or `REPORT.zh.md`
with lang="zh") and PNG plots under `plots/`. Everything is written to temporary names and
renamed, so a failure leaves the previous report (or none), never half of one.

Rules (documented in the report itself):
* best per k: lowest mean drop over tasks of the ranking scores (ties by block ids); top 5 per k.
* stepwise path, recommendations (with a per-task guard) and what the samples cannot decide, with
  the samples that would: `blockprune.analysis.advice`.
* held-out check: when the run has a `validation.json` (`blockprune validate`), every
  recommendation's drops on samples the search never used, flagged when they leave its interval.
* critical blocks: single removals whose lower 95% bound is >= 20%.
* interactions: sets of k >= 2 whose drop differs from the sum of their single drops with a 95%
  interval that excludes 0.
* healed runs (`--heal linear`): a Healing section against the plain search in OUT/plain
  (`blockprune.report.healing`); the plots draw sets failing the guard hollow, never on a front.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..analysis import advice, stats
from . import budgets as budget_report, generation as gen_report, healing as heal_report, latency as latency_report, text as report_text
from .heldout import held_out_flags, held_out_verdicts, validation_lines  # noqa: F401
from ..analysis import candidates as analysis_mod
from ..analysis.advice import by_k, recommendations, stepwise
from ..analysis.format import naming, set_names
from ..runs.outputs import VALIDATION_FILE
from .plots import PLOTS, plot_all, plot_drop_vs_speedup, speedup_series
from .text import TEXT, cell, fmt_set, pct  # noqa: F401  (the report's words, en and zh; how it writes numbers)
from ..runs.rundir import TempDir, chmod_like_user
from ..runs.store import Store

RECOMMENDATIONS_FILE = "pruning_recommendations.json"
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
    gen = gen_report.finding(a, groups)
    return out + ([gen] if gen else [])


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
         "| k | removed | " + " | ".join(map(cell, decisions[0]["tasks"])) + " |" if decisions else "",
         "|" + " --- |" * (2 + len(decisions[0]["tasks"])) if decisions else ""]
    undecided = []
    for d in decisions:
        cells = []
        for name, e in d["tasks"].items():
            said = f"{T['v_' + e['verdict']]} ({pct(e['drop'])})"
            if e["verdict"] == "undecided":
                m = e.get("samples_needed")
                need = T["need_inf"] if m is None else T["need"].format(
                    m=m, n=e["n"], avail=T["need_avail"].format(a=e["available"]) if "available" in e else "")
                said += f": {need}"
                undecided.append((d, name, need))
            cells.append(said)
        L.append(f"| {d['k']} | {fmt_set(d['removed'])} | " + " | ".join(cells) + " |")
    L.append("")
    for d in decisions:
        items = [f"{name} {need}" for dd, name, need in undecided if dd is d]
        if items and d["verdict"] == "undecided":
            L += [T["cannot"].format(set=fmt_set(d["removed"]), t=pct(t), items="; ".join(items)), ""]
    return L


UNIT_WORDS = {"attention": "attention layer", "mlp": "MLP", "sublayers": "unit"}


def units_text(T: dict, units: str, lang: str) -> dict:
    """The report's words for a search by halves: "Remove 4 attention layers", not "4 blocks" (English;
    the Chinese report names units by their ids, 17a / 17m)."""
    if units == "blocks" or lang != "en":
        return T
    word = UNIT_WORDS[units]
    return {**T, "best": f"Best set per number of removed {word}s", "remove_k": f"Remove {{k}} {word}{{s}}",
            "blocks": f"Single-{word} removal", "block": word,
            "overview_text": T["overview_text"].replace("over the {n} blocks of", f"over the {word}s of the {{n}} blocks of"),
            **{k: T[k].replace("block{Ks}", f"{word}{{Ks}}") for k in ("heal_more", "heal_not_more")},
            "heal_plain_none": "Every unit can fold a map: only a run starting at the first unit stays plain (nothing before it).",
            "heal_text": T["heal_text"].replace("each removed run of blocks", "each removed run of units").replace(
                "the MLP output projection of the block before the run",
                "the output projection (attention's o_proj or MLP's down_proj) of the unit before the run")}


def render(a: dict, recs: dict, path: list[dict], findings: list[dict], lang: str, out: Path, command: str,
           decisions: list[dict] | None = None, validation: dict | None = None, cluster: list | None = None,
           plots_dir: Path | None = None, heal: dict | None = None, store: Store | None = None,
           budget: dict | None = None) -> str:
    """REPORT.md's text; `heal`: the healing bundle of a healed run (`heal_report.bundle`); `store`:
    the run's (generated texts)."""
    T = units_text(TEXT[lang], a.get("units", "blocks"), lang)
    tasks = a["tasks"]
    groups = by_k(a["candidates"])
    L = [f"# {T['title'].format(model=a['model'])}", ""]
    L += [f"> ⚠ **{T['warning']}**: {w}\n" for w in a.get("warnings", [])]
    L += [f"## {T['overview']}", "",
         T["overview_text"].format(method=a["method"], n=a["num_blocks"], model=a["model"], c=len(a["candidates"]),
                                   t=len(tasks), b=a.get("replicates", stats.DEFAULT_REPLICATES)), ""]
    L += [T["heal_overview"], ""] if heal else []
    if len(tasks) < 2:
        L += [T["one_task"], ""]
    L += [f"| {T['task']} | {T['metric']} | {T['dense']} | {T['ranked']} | {T['dense']} | {T['n']} |",
          "| --- | --- | --- | --- | --- | --- |"]
    L += [f"| {cell(n)} | {t['metric']} | {t['baseline']:.4g} | {t['rank_score']} | {t['rank_baseline']:.4g} | {t['n']} |"
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
        L += [f"**{T['top5']}**:", "", f"| # | removed | {T['mean']} ± std | {T['ci']} | " + " | ".join(map(cell, tasks)) + " |",
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
    L += [""] + heal_report.section_lines(heal, T, out)
    L += [f"## {T['rec']}", "", T["guard"], ""]
    tag = f" {T['heal_tag']}" if heal else ""
    for level in advice.LEVELS:
        r = recs[level]
        L += [f"### {T[level]}", "", f"- **{T['rule']}**: {T['rule_' + level].format(t=pct(recs['tolerance']))}"]
        if r["k"]:
            L += [f"- **{fmt_set(r['removed'])}**{tag} (k = {r['k']}): {pct(r['mean_drop'])} ± {pct(r['std_drop'])}, "
                  f"{T['ci']} {pct(r['ci95'][0])} – {pct(r['ci95'][1])}; " +
                  "; ".join(f"{t} {pct(d)} ({pct(r['task_ci95'][t][0])} – {pct(r['task_ci95'][t][1])})"
                            for t, d in r["drops"].items())]
        else:
            L.append(f"- {T['no_rec']}")
        L.append("")
    L += decision_lines(decisions, recs["tolerance"], T)
    L += budget_report.section_lines(budget, validation)
    L += validation_lines(recs, validation, T, out)
    L += gen_report.sample_lines(a, store, list(dict.fromkeys(tuple(recs[lv]["removed"]) for lv in advice.LEVELS
                                                               if recs[lv]["k"])), T)
    L += latency_lines(recs, T, out, a, budget)
    L += report_text.cluster_lines(cluster, T)
    L += [f"## {T['findings']}", ""]
    for i, line in enumerate(finding_lines(findings, T), 1):
        L.append(f"{i}. {line}")
    if a["per_block"]:
        L += ["", f"## {T['blocks']}", "", f"| {T['block']} | {T['rank']} | {T['mean']} | {T['ci']} | " + " | ".join(map(cell, tasks)) + " |",
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
        if ((plots_dir or out / "plots") / f"{name}.png").exists():
            L.append(f"![{name}](plots/{name}.png)")
    L += ["", f"## {T['files']}", ""]
    report_name = "REPORT.zh.md" if lang == "zh" else "REPORT.md"
    for f, what in T["f_files"].items():
        L.append(f"- `{report_name if f == 'REPORT' else f}`: {what}")
    L.append(f"- `plots/`: {', '.join(p + '.png' for p in PLOTS)}")
    L += [f"- `plain/`: {T['f_plain']}"] if heal and not heal.get("plain_note") else []
    L += ["", f"## {T['usage']}", "", T["repro"].format(out=out), "", "```bash", command, "```", ""]
    return "\n".join(L)


def latency_sets(directory: str | Path, tolerance: float, analysis: dict | None = None,
                 recs: dict | None = None, plain: dict | None = None) -> list[tuple[int, ...]]:
    """The sets whose speed the report's latency table shows: the best set per k and the three
    recommendations (`analysis`, `recs`: the run's, when the caller has them; else built from its store);
    for a healed run also OUT/plain's (`heal_report.plain_sets`; `plain`: its analysis)."""
    a = analysis if analysis is not None else analysis_mod.build(Store.open_existing(Path(directory)))
    groups = by_k(a["candidates"])
    sets = advice.report_sets(groups, recs if recs is not None else recommendations(groups, tolerance))
    return sets + [x for x in heal_report.plain_sets(directory, tolerance, plain) if x not in sets]


def latency_lines(recs: dict, T: dict, out: Path, a: dict, budget: dict | None = None) -> list[str]:
    """The recommendations with their measured speedup, when the run has a latency.json (else nothing)."""
    speed = latency_report.load_speedups(out, a["model"])
    if not speed:
        return []
    first = next(iter(speed.values()))
    L = [f"### {T['lat_title']}", "", T["lat_text"].format(backend=first["backend"], batch=first["batch"],
                                                          **latency_report.load_settings(out)), "",
         f"| {T['lat_level']} | removed | k | {T['mean']} | {T['lat_speedup']} | "
         f"{T['lat_ideal'] if a.get('units', 'blocks') == 'blocks' else 'predicted from unit times'} | {T['lat_prefill']} |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
    for level in advice.LEVELS:
        r = recs[level]
        if not r["k"]:
            L.append(f"| {T[level]} | — | 0 | — | — | — | — |")
            continue
        m = speed.get(tuple(r["removed"]))
        guess = budget_report.predicted(budget, r["removed"]) if a.get("units", "blocks") != "blocks" else None
        ideal = guess[0] if guess else a["num_blocks"] / (a["num_blocks"] - r["k"])  # halves: from measured unit times
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
        elif kind == "healing":
            lines.append(heal_report.finding_line(f, T))
        elif kind == "generation_falls_faster":
            lines += [x.removeprefix("- ") for x in gen_report.finding_lines(f, T)]
        elif kind == "incremental_drops_grow":
            inc = " → ".join(pct(x) for x in f["increments"])
            lines.append(T["f_grow_yes" if f["value"] else "f_grow_no"].format(inc=inc))
    return lines


# ---- writing ----------------------------------------------------------------------------------
def command_of(info: dict, out: Path) -> str:
    """The search command that reproduces a run, every value shell-quoted (a path with spaces, `;` or `$`)."""
    from shlex import quote as q

    s = info["settings"]
    parts = ["blockprune search", f"--model {q(str(s['model']))}"] + [f"--task {q(str(t['spec']))}"
                                                                     for t in s["tasks"].values()]
    parts += [f"--method {q(str(s['method']))}", f"--beam-width {s['beam_width']}", f"--max-remove {s['max_remove']}"]
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
        parts.append("--sets " + q(";".join(",".join(map(str, x)) for x in s["sets"])))
    if s.get("heal"):
        cal = s["heal"].get("calibration") or {}
        parts.append(f"--heal {q(str(s['heal']['method']))} --ridge {s['heal']['ridge']}"
                     + (f" --calibration {q(str(cal['spec']) + '#' + str(cal['n']))}" if cal.get("spec") else ""))
    parts += [f"--min-depth {s['min_depth']}", f"--dtype {q(str(s['dtype']))}", f"--out {q(str(out))}"]
    return " \\\n    ".join(parts)


def run_tolerance(directory: str | Path, store: Store | None = None) -> float:
    """The tolerance a run was searched with (recorded in run.json), else the default (`store`: the
    run's, when the caller has opened it)."""
    try:
        return float((store or Store.open_existing(Path(directory))).run_info.get("tolerance", DEFAULT_TOLERANCE))
    except (TypeError, ValueError):
        return DEFAULT_TOLERANCE


def check_options(lang: str, tolerance: float) -> None:
    if lang not in TEXT:
        raise ReportError(f"unknown language {lang!r}: choose en or zh")
    if not 0 < tolerance < 1:
        raise ReportError("--tolerance must be between 0 and 1 (a relative drop, e.g. 0.05)")


def build_analysis(directory: str | Path, replicates: int = stats.DEFAULT_REPLICATES,
                   store: Store | None = None) -> dict:
    """The run's analysis, refused when no candidate is complete (`store`: the run's, when the
    caller has it open: the search's, or the entry point's)."""
    store = store if store is not None else Store.open_existing(Path(directory))
    with naming(store.run_info.get("settings", {}).get("units")):
        a = analysis_mod.build(store, replicates)
    a["replicates"] = replicates
    if not a["candidates"]:
        raise ReportError(f"{directory}: no candidate is scored on every task yet; rerun the search to resume it")
    return a


def load_validation(directory: Path) -> dict | None:
    try:
        return json.loads((Path(directory) / VALIDATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_report(directory: str | Path, lang: str = "en", tolerance: float | None = None,
                 replicates: int = stats.DEFAULT_REPLICATES, analysis: dict | None = None,
                 store: Store | None = None, recs: dict | None = None, plain: dict | None = None) -> dict:
    """The report of a run, its sets written by the units it searched (`17a`, `19m` for halves)."""
    store = store if store is not None else Store.open_existing(Path(directory))
    with naming(store.run_info.get("settings", {}).get("units")):
        return _write_report(directory, lang, tolerance, replicates, analysis, store, recs, plain)


def _write_report(directory: str | Path, lang: str = "en", tolerance: float | None = None,
                  replicates: int = stats.DEFAULT_REPLICATES, analysis: dict | None = None,
                  store: Store | None = None, recs: dict | None = None, plain: dict | None = None) -> dict:
    """(Re)generate every report file of a run directory from its store; `tolerance` None: the one
    the run was searched with. `store`, `analysis`, `recs` (the recommendations at `tolerance`):
    the run's, when the caller has them (the search passes its own: nothing is read or computed twice);
    `plain`: a healed run's OUT/plain analysis, when the caller has it (else built from OUT/plain)."""
    directory = Path(directory)
    store = store if store is not None else Store.open_existing(directory)
    if tolerance is None:
        tolerance = run_tolerance(directory, store)
    check_options(lang, tolerance)
    a = analysis if analysis is not None else build_analysis(directory, replicates, store)
    groups = by_k(a["candidates"])
    path = stepwise(groups)
    recs = recs if recs is not None else recommendations(groups, tolerance)
    decisions = advice.decisions(groups, a["tasks"], tolerance)
    findings = key_findings(a, groups, path)
    validation = load_validation(directory)
    heal, plain = heal_report.of_run(directory, store.run_info, a, recs, plain, a.get("replicates", replicates))
    budget = budget_report.of_run(directory, store.run_info, a)  # costs.json and the --budget choices
    findings += [heal["finding"]] if heal and heal["finding"] else []
    best = {k: {"best": cs[0], "top5": cs[:5]} for k, cs in groups.items()}
    units = a.get("units", "blocks")
    if units != "blocks":  # each recommended set also by name (its "removed" holds unit indices: 2b, 2b+1)
        recs = {level: {**r, "names": set_names(r["removed"])} if isinstance(r, dict) and "removed" in r else r
                for level, r in recs.items()}
    rec_json = {"model": a["model"], **({"units": units} if units != "blocks" else {}),
                "tolerance": tolerance, "rank_by": a["rank_by"], "independent_best": best,
                "stepwise": path, "recommendations": recs, "decisions": decisions, "key_findings": findings,
                **({"held_out": {"flagged": held_out_flags(recs, validation),
                                 "verdicts": held_out_verdicts(recs, validation), "sets": validation["sets"],
                                 "tasks": validation["tasks"]}} if validation else {}),
                **({"healing": heal} if heal else {}), **budget_report.json_of(budget)}
    # Everything is written into a temporary folder of ours first (plots and files, in full), then
    # moved into place: a full disk or an error leaves the old report as it was. The caller holds
    # the run's lock, so a `.plots-*` folder here is what a killed report of an older blockprune
    # left behind (a link of that name is not ours and is left alone); `rundir.TempDir` reclaims
    # the folders of killed reports of this one.
    for stale in directory.glob(".plots-*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    command = command_of(store.run_info, directory)
    with TempDir(directory) as tmp:
        chmod_like_user(tmp.new, directory=True)
        plot_all(a, path, tmp.new, tolerance)
        budget_report.plot(budget, a, plain, tmp.new)
        speed = latency_report.load_speedups(directory, a["model"])
        if speed:
            plain_speed = plain and latency_report.load_speedups(directory / heal_report.PLAIN_DIR, a["model"])
            plot_drop_vs_speedup(speedup_series(a["candidates"], speed, tolerance, heal is not None, plain, plain_speed),
                                 tolerance, tmp.new / "drop_vs_speedup.png")
        texts = {
            analysis_mod.ANALYSIS_FILE: json.dumps(analysis_mod.public(a), indent=2, sort_keys=False) + "\n",
            RECOMMENDATIONS_FILE: json.dumps(rec_json, indent=2, sort_keys=False) + "\n",
            analysis_mod.SUMMARY_FILE: analysis_mod.summary_markdown(a),
            ("REPORT.zh.md" if lang == "zh" else "REPORT.md"): render(
                a, recs, path, findings, lang, directory, command, decisions, validation,
                store.run_info.get("cluster"), plots_dir=tmp.new, heal=heal, store=store, budget=budget),
        }
        for name, text in texts.items():
            chmod_like_user(tmp.write_text(name, text))
        tmp.commit(directory / "plots")
        tmp.commit_files(directory, texts)
    return rec_json
