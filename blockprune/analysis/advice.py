"""The advice of a run: which sets to recommend, and where the samples cannot decide.

Inputs: the analysis (`blockprune.analysis.build`): per candidate, its mean drop over tasks with
a 95% interval and one-sided upper bounds, and every task's own drop with its 95% interval and
bootstrap standard error, all from the paired bootstrap of the ranking scores.

Rules, with tolerance t (a drop; default 5%). A mean over tasks can hide one task's real loss
behind another's lucky gain, so every rule starts with a per-task guard:

* guard: no task's own drop is significantly above t (every task's lower 95% bound <= t).
* conservative: the guard, and every task's upper 95% bound <= t (each task shown within t).
* balanced: the guard, and the one-sided 95% upper bound of the mean drop <= t.
* aggressive: the guard, and the one-sided 80% upper bound of the mean drop <= t (a set whose
  interval is wide does not qualify: its upper bound is far above its estimate).

Each level picks the largest k with a qualifying set, and there the qualifying set with the
lowest mean drop. None is a plain statement, not a fallback to a point estimate.

Decisions: for each k's best set, every task's drop is `within` t (upper bound <= t), `above`
(lower bound > t) or `undecided` (the interval holds t). For an undecided task the planned sample
size is `stats.samples_needed` from that task's bootstrap standard error: how many samples would
put its 95% interval clear of t, if the drop stayed where it is.
"""

from __future__ import annotations

from . import stats

DEFAULT_TOLERANCE = 0.05
LEVELS = ("conservative", "balanced", "aggressive")
RULES = {
    "conservative": "every task's upper 95% bound <= {t} (and the guard)",
    "balanced": "one-sided 95% upper bound of the mean drop <= {t}, and no task's lower 95% bound above {t}",
    "aggressive": "one-sided 80% upper bound of the mean drop <= {t}, and no task's lower 95% bound above {t}",
}


def by_k(candidates: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for c in candidates:  # already sorted by (k, mean drop, ids)
        out.setdefault(len(c["removed"]), []).append(c)
    return out


def stepwise(groups: dict[int, list[dict]]) -> list[dict]:
    """Step 1 = best single; step k = best set of size k containing step k-1's set, else the best
    of size k (marked as a jump)."""
    path: list[dict] = []
    prev: dict | None = None
    for k in sorted(groups):
        pick = None
        if prev is not None:
            pick = next((c for c in groups[k] if set(prev["removed"]) < set(c["removed"])), None)
        jump = pick is None and prev is not None
        pick = pick or groups[k][0]
        path.append({"k": k, "removed": pick["removed"], "mean_drop": pick["mean_drop"], "std_drop": pick["std_drop"],
                     "ci95": pick["ci95"], "incremental_drop": pick["mean_drop"] - (prev["mean_drop"] if prev else 0.0),
                     "extends_previous": not jump})
        prev = pick
    return path


def guard(c: dict, t: float) -> bool:
    """No task's drop is significantly above the tolerance."""
    return all(lo <= t for lo, _ in c["task_ci95"].values())


def qualifies(c: dict, level: str, t: float) -> bool:
    if not guard(c, t):
        return False
    if level == "conservative":
        return all(hi <= t for _, hi in c["task_ci95"].values()) and c["ci95"][1] <= t
    if level == "balanced":
        return c["upper95"] <= t
    if level == "aggressive":
        return c["upper80"] <= t
    raise ValueError(level)


def recommendations(groups: dict[int, list[dict]], tolerance: float) -> dict:
    t = tolerance
    out: dict = {"tolerance": t}
    for level in LEVELS:
        rule = RULES[level].format(t=f"{t:.1%}")
        pick = None
        for k in sorted(groups, reverse=True):
            ok = [c for c in groups[k] if qualifies(c, level, t)]
            if ok:
                pick = ok[0]  # groups are sorted by mean drop
                break
        if pick is None:
            out[level] = {"k": 0, "removed": [], "rule": rule, "note": f"no {level} set meets the rule"}
            continue
        out[level] = {"k": len(pick["removed"]), "removed": pick["removed"], "mean_drop": pick["mean_drop"],
                      "std_drop": pick["std_drop"], "ci95": pick["ci95"], "upper95": pick["upper95"],
                      "upper80": pick["upper80"], "drops": pick["drops"], "task_ci95": pick["task_ci95"],
                      "se": pick.get("se"), "task_se": pick.get("task_se", {}),
                      "metric_drops": pick.get("metric_drops", {}), "rule": rule}
    return out


def held_out_verdict(level: str, held: dict, t: float) -> dict:
    """Does the held-out check confirm a `level` recommendation? `held`: the set's drops on the
    held-out samples with their own intervals (ci95, upper95, upper80, task_ci95). 'confirmed': the
    level's rule holds there; 'contradicted': a task's held-out drop, or the mean's, is
    significantly above the tolerance; 'undecided': neither (too few held-out samples to say)."""
    if qualifies(held, level, t):
        return {"verdict": "confirmed"}
    above = sorted(name for name, (lo, _) in held["task_ci95"].items() if lo > t)
    if above or held["ci95"][0] > t:
        return {"verdict": "contradicted", "tasks_above": above, "mean_above": held["ci95"][0] > t}
    if level == "conservative":
        open_tasks = sorted(name for name, (_, hi) in held["task_ci95"].items() if hi > t)
        return {"verdict": "undecided", "tasks_open": open_tasks, "bound": max(held["ci95"][1], *(
            held["task_ci95"][n][1] for n in open_tasks)) if open_tasks else held["ci95"][1]}
    return {"verdict": "undecided", "tasks_open": [], "bound": held["upper95" if level == "balanced" else "upper80"]}


def task_verdict(lo: float, hi: float, t: float) -> str:
    return "within" if hi <= t else "above" if lo > t else "undecided"


def decisions(groups: dict[int, list[dict]], tasks: dict, tolerance: float) -> list[dict]:
    """Per k, the best set's verdict on every task against the tolerance, with sample-size plans."""
    out = []
    for k in sorted(groups):
        c = groups[k][0]
        per_task = {}
        for name, (lo, hi) in c["task_ci95"].items():
            verdict = task_verdict(lo, hi, tolerance)
            entry = {"drop": c["drops"][name], "ci95": [lo, hi], "verdict": verdict, "n": tasks[name]["n"]}
            if verdict == "undecided":
                entry["samples_needed"] = stats.samples_needed(tasks[name]["n"], c["task_se"][name], c["drops"][name],
                                                               tolerance)
                if "available" in tasks[name]:
                    entry["available"] = tasks[name]["available"]
            per_task[name] = entry
        verdicts = {e["verdict"] for e in per_task.values()}
        overall = "above" if "above" in verdicts else "undecided" if "undecided" in verdicts else "within"
        out.append({"k": k, "removed": c["removed"], "mean_drop": c["mean_drop"], "ci95": c["ci95"],
                    "verdict": overall, "tasks": per_task})
    return out


def report_sets(groups: dict[int, list[dict]], recs: dict) -> list[tuple[int, ...]]:
    """The sets the report names: the best per k and the recommendations."""
    sets = [tuple(cs[0]["removed"]) for _, cs in sorted(groups.items())]
    sets += [tuple(recs[level]["removed"]) for level in LEVELS if recs[level]["k"]]
    return list(dict.fromkeys(sets))
