"""The Healing section of a healed run's report (`--heal linear`, `blockprune.healing.heal`).

Inputs: the run's run.json (`settings["heal"]`: method, ridge, calibration record; the top-level
`healing`: `Healing.describe()`, with the blocks whose runs stay plain and why), its analysis and
recommendations, and OUT/plain when present: the plain (unhealed) search of the same tasks on the
same samples, whose store also holds the plain scores of the healed run's best sets.

What it says: how the maps were fitted; which runs stay plain; per k the best healed set against
the same set deleted plainly and against plain deletion's own best set, each with its mean drop
and 95% interval; and one key finding: how many blocks the healed balanced advice removes within
the tolerance against the plain advice at the same tolerance, and, when healing does not remove
more, what stops the next k (the task failing the guard, or the mean's upper bound and the task
with the largest drop).
"""

from __future__ import annotations

from pathlib import Path

from ..analysis import advice, stats
from ..analysis import candidates as analysis_mod
from ..analysis.advice import by_k
from ..runs.outputs import PLAIN_DIR
from ..analysis.format import set_names, units_named
from .text import fmt_set, pct
from ..runs.store import Store, StoreError

LEVEL = "balanced"  # the advice the key finding compares


def heal_settings(run_info: dict) -> dict | None:
    """The run's healing settings (run.json settings["heal"]), None for a plain run."""
    return (run_info.get("settings") or {}).get("heal") or None


def load_plain(directory: str | Path, replicates: int, run_info: dict) -> tuple[dict | None, str | None]:
    """(analysis of OUT/plain, None) or (None, why it is not compared): absent, unreadable, or
    scored on other tasks or samples than the healed run."""
    d = Path(directory) / PLAIN_DIR
    if not (d / "run.json").exists():
        return None, "absent"
    try:
        theirs = Store.existing_settings(d)["tasks"]
        mine = run_info["settings"]["tasks"]
        if set(mine) != set(theirs):
            return None, "tasks"
        if any(mine[t].get("sample_ids") != theirs[t].get("sample_ids") for t in mine):
            return None, "samples"
        a = analysis_mod.build(Store.open_existing(d), replicates)
    except (StoreError, analysis_mod.AnalysisError, OSError, ValueError) as exc:
        return None, f"unreadable: {exc}"
    if not a["candidates"]:
        return None, "empty"
    a["replicates"] = replicates
    return a, None


def _brief(c: dict | None) -> dict | None:
    return None if c is None else {"removed": c["removed"], "mean_drop": c["mean_drop"], "ci95": c["ci95"],
                                   "upper95": c.get("upper95"), "task_ci95": c.get("task_ci95", {})}


def per_k(a: dict, plain: dict | None) -> list[dict]:
    """Per k: the best healed set, that set's plain scores (when OUT/plain holds them), and the best
    plain set, each as {removed, mean_drop, ci95, ...} or None."""
    groups = by_k(a["candidates"])
    plain_groups = by_k(plain["candidates"]) if plain else {}
    plain_of = {tuple(c["removed"]): c for c in plain["candidates"]} if plain else {}
    rows = []
    for k in sorted(set(groups) | set(plain_groups)):
        best = groups[k][0] if k in groups else None
        rows.append({"k": k, "healed": _brief(best),
                     "healed_plain": _brief(plain_of.get(tuple(best["removed"]))) if best else None,
                     "plain": _brief(plain_groups[k][0]) if k in plain_groups else None})
    return rows


def binding(groups: dict[int, list[dict]], k: int, tolerance: float) -> dict:
    """What keeps the balanced advice from k + 1 blocks: the best set of that size fails the guard
    (the task whose lower bound is highest above the tolerance), or its mean's one-sided upper
    bound is above the tolerance (with the task of the largest drop); or no such set was scored."""
    nxt = k + 1
    if nxt not in groups:
        return {"k": nxt, "reason": "not_scored"}
    c = groups[nxt][0]
    failing = {t: lo for t, (lo, _) in c["task_ci95"].items() if lo > tolerance}
    if failing:
        task = max(failing, key=failing.get)
        return {"k": nxt, "removed": c["removed"], "reason": "guard", "task": task, "drop": c["drops"][task],
                "lower": failing[task]}
    task = max(c["drops"], key=c["drops"].get)
    return {"k": nxt, "removed": c["removed"], "reason": "mean", "mean_drop": c["mean_drop"], "upper95": c["upper95"],
            "task": task, "drop": c["drops"][task]}


def finding(a: dict, recs: dict, plain: dict | None, plain_recs: dict | None) -> dict | None:
    """The key finding comparing the healed balanced advice with the plain one (None without OUT/plain)."""
    if plain is None or plain_recs is None:
        return None
    t = recs["tolerance"]
    healed, plain_rec = recs[LEVEL], plain_recs[LEVEL]
    out = {"kind": "healing", "level": LEVEL, "tolerance": t, "healed_k": healed["k"], "healed": healed["removed"],
           "plain_k": plain_rec["k"], "plain": plain_rec["removed"], "more": healed["k"] > plain_rec["k"]}
    if not out["more"]:
        out["binding"] = binding(by_k(a["candidates"]), healed["k"], t)
    return out


def bundle(run_info: dict, a: dict, recs: dict, plain: dict | None, note: str | None) -> dict:
    """Everything the section and pruning_recommendations.json say about healing."""
    plain_recs = advice.recommendations(by_k(plain["candidates"]), recs["tolerance"]) if plain else None
    return {"settings": heal_settings(run_info), "fit": run_info.get("healing") or {}, "per_k": per_k(a, plain),
            "plain_note": note, "plain_recommendations": plain_recs,
            "finding": finding(a, recs, plain, plain_recs)}


def of_run(directory: str | Path, run_info: dict, a: dict, recs: dict, plain: dict | None,
           replicates: int) -> tuple[dict | None, dict | None]:
    """(healing bundle, OUT/plain's analysis or None) of a healed run; (None, None) for a plain run.
    `plain`: OUT/plain's analysis when the caller has it (else built from OUT/plain)."""
    if not heal_settings(run_info):
        return None, None
    note = None
    if plain is None:
        plain, note = load_plain(directory, replicates, run_info)
    return bundle(run_info, a, recs, plain, note), plain


def plain_sets(directory: str | Path, tolerance: float, plain: dict | None = None) -> list[tuple[int, ...]]:
    """The sets the plain search's report would name (best per k, its recommendations), for a
    healed run with OUT/plain (`plain`: its analysis, else built), so the latency step measures
    the plain points of drop_vs_speedup.png too (a set's speed is the same healed or plain);
    [] for a plain run."""
    settings = Store.existing_settings(Path(directory))
    if not heal_settings({"settings": settings}):
        return []
    if plain is None:
        plain = load_plain(directory, stats.DEFAULT_REPLICATES, {"settings": settings})[0]
    if plain is None:
        return []
    groups = by_k(plain["candidates"])
    return advice.report_sets(groups, advice.recommendations(groups, tolerance))


def _drop(c: dict | None) -> str:
    return "—" if c is None else f"{pct(c['mean_drop'])} [{pct(c['ci95'][0])} – {pct(c['ci95'][1])}]"


def finding_line(f: dict, T: dict) -> str:
    words = {"K": f["healed_k"], "Ks": "" if f["healed_k"] == 1 else "s", "J": f["plain_k"], "t": pct(f["tolerance"]),
             "healed": fmt_set(f["healed"]) if f["healed_k"] else "—", "plain": fmt_set(f["plain"]) if f["plain_k"] else "—"}
    if f["more"]:
        return T["heal_more"].format(**words)
    b = f["binding"]
    if b["reason"] == "not_scored":
        why = T["heal_bind_none"].format(k=b["k"])
    elif b["reason"] == "guard":
        why = T["heal_bind_guard"].format(k=b["k"], set=fmt_set(b["removed"]), task=b["task"], d=pct(b["drop"]),
                                          lo=pct(b["lower"]), t=words["t"])
    else:
        why = T["heal_bind_mean"].format(k=b["k"], set=fmt_set(b["removed"]), m=pct(b["mean_drop"]), u=pct(b["upper95"]),
                                         t=words["t"], task=b["task"], d=pct(b["drop"]))
    return T["heal_not_more"].format(why=why, **words)


def heldout_lines(validation: dict, T: dict) -> list[str]:
    """The held-out check's perplexities of a healed run's sets by plain transformers: the folded
    pruned model and the same set deleted without its maps, on the held-out windows and on a text
    the healing never saw (heldout.unseen_text)."""
    L = []
    for v in validation["sets"].values():
        for task, ppl in v.get("plain_perplexity", {}).items():
            dense = validation["dense"][task]["plain_perplexity"]
            plain = v.get("unhealed_perplexity", {}).get(task)
            L.append("- " + T["heal_held_ppl"].format(
                set=fmt_set(v["removed"]), task=task, dense=f"{dense:.2f}", ppl=f"{ppl:.2f}", rise=pct(ppl / dense - 1),
                plain="—" if plain is None else f"{plain:.2f}", plain_rise="—" if plain is None else pct(plain / dense - 1),
                n=validation["tasks"][task]["n"]))
    u = validation.get("unseen_text")
    if u:
        d = u["dense"]
        items = "; ".join(T["heal_held_unseen_item"].format(set=fmt_set([int(b) for b in key.split(",") if b]),
                                                            healed=f"{x['healed']:.2f}", rise=pct(x["healed"] / d - 1),
                                                            plain=f"{x['plain']:.2f}", plain_rise=pct(x["plain"] / d - 1))
                          for key, x in u["sets"].items())
        L.append("- " + T["heal_held_unseen"].format(spec=u["spec"], n=u["windows"], dense=f"{d:.2f}", items=items,
                                                     searched=T["heal_held_searched"] if u.get("searched_on") else ""))
    return L


def _plain_mark(removed, plain_blocks: dict, T: dict) -> str:
    """' (scored plain)' for a set none of whose removed runs took a map (it starts at block 0, or
    the block before it cannot fold), ' (partly plain)' when some did not; '' when all are healed."""
    gone = set(int(b) for b in removed)
    starts = [b for b in gone if b - 1 not in gone]  # each removed run's first block
    plain = [b for b in starts if b == 0 or str(b - 1) in plain_blocks]
    if not plain:
        return ""
    return " " + (T["heal_set_plain"] if len(plain) == len(starts) else T["heal_set_partly_plain"])


def unit_label(unit: int) -> str:
    """`block 5`, or a half by name (`2m`) in a search by halves."""
    name = set_names([unit])[0]
    return f"block {name}" if units_named() == "blocks" else name


def section_lines(h: dict | None, T: dict, out: Path) -> list[str]:
    """The report's "Healing" section (nothing for a plain run)."""
    if not h:
        return []
    s, fit = h["settings"], h["fit"]
    ridge = s.get("ridge", fit.get("ridge"))
    L = [f"## {T['heal']}", "", T["heal_text"].format(method=s.get("method", "linear"), ridge=f"{ridge}"), ""]
    cal = s.get("calibration") or fit.get("calibration")
    if cal and cal.get("tasks"):
        tasks = ", ".join(T["heal_cal_task"].format(n=v.get("n", len(v.get("sample_ids", []))), task=k)
                          for k, v in cal["tasks"].items())
        L.append("- " + T["heal_cal_mix"].format(n=len(cal.get("sample_ids", [])), window=cal.get("window"),
                                                 spec=cal.get("spec"), tasks=tasks,
                                                 tokens=fit.get("tokens", cal.get("tokens"))))
    elif cal:
        L.append("- " + T["heal_cal"].format(n=cal.get("n", len(cal.get("sample_ids", []))), window=cal.get("window"),
                                             spec=cal.get("spec"), tokens=fit.get("tokens", cal.get("tokens"))))
    else:
        L.append("- " + T["heal_cal_none"])
    plain_blocks = fit.get("plain_blocks") or {}
    if plain_blocks:
        items = "; ".join(T["heal_plain_item"].format(b=unit_label(b), why=why) for b, why in
                          sorted(plain_blocks.items(), key=lambda x: int(x[0])))
        L.append("- " + T["heal_plain_blocks"].format(items=items))
    else:
        L.append("- " + T["heal_plain_none"])
    L.append("")
    note = h.get("plain_note")
    if note:
        key = {"absent": "heal_no_plain", "tasks": "heal_plain_tasks", "samples": "heal_plain_samples",
               "empty": "heal_plain_empty"}.get(note, "heal_plain_bad")
        L += [T[key].format(out=out, why=note.removeprefix("unreadable: ")), ""]
    L += [f"| k | {T['heal_best']} | {T['heal_mean']} | {T['heal_same']} | {T['heal_best_plain']} | {T['heal_its']} |",
          "| --- | --- | --- | --- | --- | --- |"]
    for r in h["per_k"]:
        healed, plain = r["healed"], r["plain"]
        shown = fmt_set(healed["removed"]) + _plain_mark(healed["removed"], plain_blocks, T) if healed else "—"
        L.append(f"| {r['k']} | {shown} | {_drop(healed)} | {_drop(r['healed_plain'])} | "
                 f"{fmt_set(plain['removed']) if plain else '—'} | {_drop(plain)} |")
    L += ["", T["heal_table_note"], ""]
    if h.get("finding"):
        L += [finding_line(h["finding"], T), ""]
    return L
