"""The held-out check's section of REPORT.md, and its verdicts for pruning_recommendations.json.

A recommendation is picked as the best of many sets on one sample of each task, so its drops there
are optimistic (the winner's curse) and the sample itself may be an easy or a hard one. The held-out
check (blockprune.measure.heldout) re-scores it on samples the search never used, with the held-out drops'
own paired-bootstrap intervals. Two questions are answered from that, never by comparing a held-out
point with the search's interval (which ignores the held-out sample's own noise and flags about one
agreeing check in six): does the recommendation's rule hold on the held-out samples
(`advice.held_out_verdict`: confirmed, contradicted or undecided), and does a held-out drop differ
from the search's by more than the two samples' noise allows (`stats.shift`, marked ⚠).
"""

from __future__ import annotations

from pathlib import Path

from ..analysis import advice, stats
from . import healing as heal_report
from .text import fmt_set, pct


def _key(removed) -> str:
    return ",".join(map(str, removed))


def _se(se: float | None, ci: list[float]) -> float:
    """A bootstrap standard error; from its 95% interval where an older record lacks it."""
    return float(se) if se is not None else (ci[1] - ci[0]) / (2 * stats.Z95)


def held_out_verdicts(recs: dict, validation: dict | None) -> dict:
    """{level: verdict} for every recommendation that was checked (advice.held_out_verdict, plus
    'shifted': the tasks, and 'mean', whose held-out drop differs from the search's beyond noise);
    'unknown' for a validation.json written before the held-out intervals existed."""
    out = {}
    t = recs["tolerance"]
    for level in advice.LEVELS:
        r = recs[level]
        v = (validation or {}).get("sets", {}).get(_key(r["removed"])) if r["k"] else None
        if v is None:
            continue
        if "ci95" not in v:
            out[level] = {"verdict": "unknown"}
            continue
        verdict = advice.held_out_verdict(level, v, t)
        shifted = {}
        for name in v["drops"]:
            if name in r["task_ci95"]:
                s = stats.shift(r["drops"][name], _se(r.get("task_se", {}).get(name), r["task_ci95"][name]),
                                v["drops"][name], v["task_se"][name])
                if s:
                    shifted[name] = s
        s = stats.shift(r["mean_drop"], _se(r.get("se"), r["ci95"]), v["mean_drop"], v["se"])
        if s:
            shifted["mean"] = s
        out[level] = {**verdict, "shifted": shifted}
    return out


def held_out_flags(recs: dict, validation: dict | None) -> list[str]:
    """The recommendations the held-out check does not confirm, as `level (verdict)`."""
    return [f"{level} ({v['verdict']})" for level, v in held_out_verdicts(recs, validation).items()
            if v["verdict"] != "confirmed"]


def _interval(point: float, ci) -> str:
    return f"{pct(point)} [{pct(ci[0])} – {pct(ci[1])}]"


def _verdict_line(level: str, r: dict, v: dict, verdict: dict, T: dict, t: float, out: Path) -> str:
    head = f"**{T[level]} {fmt_set(r['removed'])}: {T['held_v_' + verdict['verdict']]}**"
    if verdict["verdict"] == "confirmed":
        return f"- {head}: " + T["held_confirmed"].format(rule=r["rule"])
    if verdict["verdict"] == "unknown":
        return f"- {head}: " + T["held_unknown"].format(out=out)
    if verdict["verdict"] == "contradicted":
        what = [f"{n} {_interval(v['drops'][n], v['task_ci95'][n])}" for n in verdict["tasks_above"]]
        if verdict["mean_above"]:
            what.append(f"{T['mean']} {_interval(v['mean_drop'], v['ci95'])}")
        return f"- {head}: " + T["held_contradicted"].format(what="; ".join(what), t=pct(t))
    what = "; ".join(f"{n} {_interval(v['drops'][n], v['task_ci95'][n])}" for n in verdict["tasks_open"])
    return f"- {head}: " + T["held_undecided"].format(what=what or f"{T['mean']} {pct(verdict['bound'])}", t=pct(t),
                                                      out=out)


def validation_lines(recs: dict, validation: dict | None, T: dict, out: Path) -> list[str]:
    L = [f"### {T['held']}", ""]
    if not validation:
        return L + [T["held_none"].format(out=out), ""]
    t = recs["tolerance"]
    verdicts = held_out_verdicts(recs, validation)
    where = ", ".join(f"{name}: {v['n']}" for name, v in validation["tasks"].items())
    L += [T["held_text"].format(where=where), "",
          f"| {T['lat_level']} | removed | {T['mean']} ({T['held_search']}) | {T['mean']} ({T['held_out']}) | "
          + " | ".join(validation["tasks"]) + " |", "|" + " --- |" * (4 + len(validation["tasks"]))]
    lines = []
    for level in advice.LEVELS:
        r = recs[level]
        if not r["k"]:
            continue
        v = validation["sets"].get(_key(r["removed"]))
        if v is None:
            L.append(f"| {T[level]} | {fmt_set(r['removed'])} | {pct(r['mean_drop'])} | {T['lat_none']} |"
                     + " |" * len(validation["tasks"]))
            continue
        shifted = verdicts[level].get("shifted", {})
        mark = lambda name: f" ⚠ {T['held_' + shifted[name]]}" if name in shifted else ""  # noqa: E731
        held = lambda point, ci: _interval(point, ci) if ci else pct(point)  # noqa: E731
        cells = [f"{pct(r['drops'][n])} → {held(v['drops'][n], v.get('task_ci95', {}).get(n))}{mark(n)}"
                 for n in validation["tasks"]]
        L.append(f"| {T[level]} | {fmt_set(r['removed'])} | {_interval(r['mean_drop'], r['ci95'])} | "
                 f"{held(v['mean_drop'], v.get('ci95'))}{mark('mean')} | " + " | ".join(cells) + " |")
        lines.append(_verdict_line(level, r, v, verdicts[level], T, t, out))
    L += [""] + lines + [""]
    if any(v.get("shifted") for v in verdicts.values()):
        L += [T["held_shift"], ""]
    if "unseen_text" in validation or any("unhealed_perplexity" in v for v in validation["sets"].values()):
        return L + heal_report.heldout_lines(validation, T) + [""]  # a healed run's sets, healed and not
    for v in validation["sets"].values():
        for task, ppl in v.get("plain_perplexity", {}).items():
            dense = validation["dense"][task]["plain_perplexity"]
            L.append("- " + T["held_plain"].format(set=fmt_set(v["removed"]), task=task, dense=f"{dense:.2f}",
                                                   ppl=f"{ppl:.2f}", rise=pct(ppl / dense - 1), n=validation["tasks"][task]["n"]))
    return L + [""]
