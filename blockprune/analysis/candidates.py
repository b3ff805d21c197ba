"""Cross-task analysis of a run's store: `cross_dataset_analysis.json` and `SUMMARY.md`.

Every candidate in a blockprune store is scored on every task, so each candidate's mean drop is
over the same tasks. Two drops per task are kept side by side (see `blockprune.tasks.scores`):
`drops`, of the task's ranking score (`--rank-by`; by default the lowest-variance faithful one:
p_gold, gold_logprob, perplexity, kl), which the mean, the intervals and the recommendations use;
and `metric_drops`, of the thresholded metric people report (acc, exact_match, perplexity; for a
KL task the perplexity of its text).
`std_drop` is the sample standard deviation over tasks (ddof=1; 0 with one task).

Intervals: per task and of the mean, from the paired bootstrap (`stats.bootstrap`), with the
bootstrap standard error of every task's drop kept for sample-size planning.
"""

from __future__ import annotations

import numpy as np

from ..tasks import scores
from . import stats
from ..tasks.kinds import get_kind, kind_of_metric
from .format import cell, fmt_set
from ..runs.store import Store

ANALYSIS_FILE = "cross_dataset_analysis.json"
SUMMARY_FILE = "SUMMARY.md"


class AnalysisError(Exception):
    pass


def rank_scores(store: Store) -> tuple[dict[str, str], list[str]]:
    """({task: ranking score}, notes) for a store. A store written before per-sample signals were
    kept (or lacking one) falls back, per task, to the thresholded metric, with a note saying so."""
    settings = store.run_info["settings"]
    tasks = settings["tasks"]
    kinds = {t: _kind(info).name for t, info in tasks.items()}
    wanted = settings.get("rank_by") or scores.resolve_rank_by(None, kinds)
    chosen, notes = {}, []
    for t in tasks:
        name = wanted.get(t) or get_kind(kinds[t]).default_score
        dense = store.results.get(((), t))
        have = dense["per_sample"] if dense else {}
        if dense is not None and any(f not in have for f in scores.get(name).fields()):
            fallback = get_kind(kinds[t]).metric
            notes.append(f"{t}: the store has no per-sample {', '.join(f for f in scores.get(name).fields() if f not in have)} "
                         f"(written before blockprune kept it), so it is ranked by {fallback} instead of {name}")
            name = fallback
        chosen[t] = name
    return chosen, notes


def _kind(info: dict):
    """A run.json task's kind (by its metric in a run.json written before the kind was kept)."""
    return get_kind(info["kind"]) if info.get("kind") else kind_of_metric(info["metric"])


def _task_drops(store: Store, key, name: str, score: str, base: tuple) -> tuple[float, float]:
    """(drop, value) of `score` for a candidate on a task, against the dense per-sample `base`."""
    cand = stats.per_sample_arrays(store.columns(key, name)[1], score)
    value = float(scores.get(score).value(cand[0].sum(), cand[1].sum()))
    return stats.point_drop(score, base, cand), value


def build(store: Store, replicates: int = stats.DEFAULT_REPLICATES) -> dict:
    """The analysis dict from a store (no model, no re-scoring).

    Per candidate: per-task scores (thresholded metric and ranking score) and drops, the mean
    drop over tasks with its 95% interval and one-sided 95%/80% upper bounds, every task's 95%
    interval and bootstrap standard error; a per-block single-removal table. The replicates are
    kept (not serialised) under `_replicates` (mean) and `_task_replicates` for the report.
    """
    info = store.run_info
    settings = info["settings"]
    tasks = settings["tasks"]  # name -> {spec, kind, metric, higher_is_better, n, sample_ids}
    names = list(tasks)
    if not names:
        raise AnalysisError("the run has no tasks")
    if not all(store.has((), t) for t in names):
        raise AnalysisError(f"{store.dir}: the dense baseline is not scored yet; rerun the search to resume it")
    rank_by, notes = rank_scores(store)
    metric_of = {t: _kind(tasks[t]).shown for t in names}
    baseline = {t: store.get((), t)["value"] for t in names}
    dense = {(t, sc): stats.per_sample_arrays(store.columns((), t)[1], sc)
             for t in names for sc in {rank_by[t], metric_of[t]}}
    rank_baseline = {t: _task_drops(store, (), t, rank_by[t], dense[t, rank_by[t]])[1] for t in names}
    candidates = []
    for key in store.candidates():
        if not key or not all(store.has(key, t) for t in names):
            continue  # the baseline, or a candidate interrupted between tasks
        drops, rank_values, metric_drops = {}, {}, {}
        for t in names:
            drops[t], rank_values[t] = _task_drops(store, key, t, rank_by[t], dense[t, rank_by[t]])
            metric_drops[t] = _task_drops(store, key, t, metric_of[t], dense[t, metric_of[t]])[0]
        d = np.array(list(drops.values()))
        candidates.append({
            "removed": list(key),
            "scores": {t: store.get(key, t)["value"] for t in names},
            "rank_scores": rank_values,
            "drops": drops,
            "metric_drops": metric_drops,
            "mean_drop": float(d.mean()),
            "metric_mean_drop": float(np.mean(list(metric_drops.values()))),
            "std_drop": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
            "min_drop": float(d.min()),
            "max_drop": float(d.max()),
            "num_tasks": len(d),
        })
    candidates.sort(key=lambda c: (len(c["removed"]), c["mean_drop"], c["removed"]))
    keys = [tuple(c["removed"]) for c in candidates]
    task_reps = stats.bootstrap(store, keys, rank_by, replicates)
    reps = np.mean([task_reps[t] for t in names], axis=0) if keys else np.zeros((0, replicates))
    for i, c in enumerate(candidates):
        c["ci95"] = list(stats.interval(reps[i]))
        c["upper95"] = stats.upper(reps[i], 0.95)
        c["upper80"] = stats.upper(reps[i], 0.80)
        c["se"] = float(np.std(reps[i], ddof=1)) if replicates > 1 else 0.0
        c["task_ci95"] = {t: list(stats.interval(task_reps[t][i])) for t in names}
        c["task_se"] = {t: float(np.std(task_reps[t][i], ddof=1)) for t in names}
    eliminated = _partial(store, tasks, rank_by, replicates)
    warnings = _dense_zero(tasks, names, baseline, rank_baseline, rank_by, metric_of)
    incomplete = _incomplete(store, names)
    if incomplete:
        warnings.insert(0, incomplete["message"])
    per_block = []
    for c in candidates + eliminated:
        if len(c["removed"]) == 1:
            per_block.append({"block": c["removed"][0], "mean_drop": c["mean_drop"], "ci95": c["ci95"],
                              "drops": c["drops"], **({"samples": c["samples"]} if "samples" in c else {})})
    per_block.sort(key=lambda b: b["block"])
    for rank, b in enumerate(sorted(per_block, key=lambda b: b["mean_drop"]), 1):
        b["rank"] = rank
    return {
        "model": settings["model"],
        "num_blocks": settings["num_blocks"],
        "units": settings.get("units", "blocks"),  # what a set removes (blockprune.models.units)
        "method": settings.get("method"),
        "drop_definition": ("per task, the drop of its ranking score: relative quality loss 1 - q/q_dense "
                            "(q = accuracy, p_gold, exact match, or the per-token geometric-mean probability "
                            "exp(-NLL) for perplexity and gold_logprob); for kl the KL itself (nats/token)"),
        "std_definition": "sample standard deviation over tasks (ddof=1)",
        "rank_by": rank_by,
        "notes": notes,
        "warnings": warnings,
        "complete": incomplete is None,
        **({"missing": incomplete["missing"]} if incomplete else {}),
        "tasks": {
            t: {
                "spec": tasks[t]["spec"],
                "kind": tasks[t].get("kind"),
                "metric": tasks[t]["metric"],
                "rank_score": rank_by[t],
                "shown": metric_of[t],
                "higher_is_better": tasks[t]["higher_is_better"],
                "baseline": baseline[t],
                "rank_baseline": rank_baseline[t],
                "n": tasks[t]["n"],
                **({"available": tasks[t]["available"]} if "available" in tasks[t] else {}),
            }
            for t in names
        },
        "ci_definition": (f"paired bootstrap over samples ({replicates} replicates): 95% percentile interval, "
                          "per task and of the mean over tasks; upper95/upper80: one-sided upper bounds of the mean"),
        "per_block": per_block,
        "candidates": candidates,
        "eliminated": eliminated,
        "work": _work(store, tasks, names, len(eliminated)),
        "_replicates": dict(zip(keys, reps)),
        "_task_replicates": {k: {t: task_reps[t][i] for t in names} for i, k in enumerate(keys)},
    }


def _dense_zero(tasks: dict, names: list[str], baseline: dict, rank_baseline: dict, rank_by: dict,
                metric_of: dict) -> list[str]:
    """Tasks on which the dense model scores 0: a relative drop from 0 is 0 whatever the candidate does."""
    out = []
    for t in names:
        if not tasks[t]["higher_is_better"]:
            continue
        if rank_baseline[t] == 0:
            out.append(f"{t}: the dense model's {rank_by[t]} is 0, so every drop on it is 0% and it cannot rank "
                       "anything; remove the task or rank it by another score (--rank-by)")
        elif baseline[t] == 0 and metric_of[t] != rank_by[t]:
            out.append(f"{t}: the dense model's {tasks[t]['metric']} is 0, so its {tasks[t]['metric']} drops are 0% "
                       f"and say nothing; the ranking uses {rank_by[t]} (dense {rank_baseline[t]:.3g})")
    return out


def _incomplete(store: Store, names: list[str]) -> dict | None:
    """None for a finished search (or a store too old to say); else which planned sets lack records."""
    if store.done or not store.tracked:
        return None
    missing = set(store.missing())
    for key in store.candidates():  # whole on some tasks, nothing at all on others
        if not all(store.has(key, t) or (key, t) in store.parts for t in names):
            missing.add(key)
    missing = sorted(missing, key=lambda k: (len(k), k))
    shown = ", ".join(fmt_set(k) for k in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    message = ("the search has not finished (interrupted, or still running): "
               + (f"{len(missing)} planned set(s) have no complete record: {shown}" if missing
                  else "no planned set lacks a record, but later steps were never planned")
               + "; rerun the search command to resume it")
    return {"missing": [list(k) for k in missing], "message": message}


def _work(store: Store, tasks: dict, names: list[str], eliminated: int) -> dict:
    work = {"block_rows": 0, "naive_block_rows": 0, "block_tokens": 0, "naive_block_tokens": 0,
            "head_positions": 0, "naive_head_positions": 0, "reused_block_rows": 0}
    for w in store.work:
        for k in work:
            work[k] += int(w.get(k, 0))
    for name, (run, naive) in {"block_ratio": ("block_rows", "naive_block_rows"),
                               "token_ratio": ("block_tokens", "naive_block_tokens"),
                               "head_ratio": ("head_positions", "naive_head_positions")}.items():
        work[name] = round(work[run] / work[naive], 4) if work[naive] else None
    # racing: candidate-samples scored vs scoring every candidate seen on every sample
    n_total = sum(t["n"] for t in tasks.values())
    seen_keys = [k for k in set(store.candidates()) | set(store.partial_candidates()) if k]
    scored = sum(tasks[t]["n"] if store.has(k, t) else len(store.columns(k, t)[0]) for k in seen_keys for t in names)
    work["racing"] = {"eliminated": eliminated, "candidate_samples": scored,
                      "exact_candidate_samples": len(seen_keys) * n_total,
                      "ratio": round(scored / (len(seen_keys) * n_total), 4) if seen_keys else None}
    return work


def _partial(store: Store, tasks: dict, rank_by: dict[str, str], replicates: int) -> list[dict]:
    """Candidates racing dropped after some samples: drops on the samples they were scored on
    (against the dense model on the same samples), with `samples` = how many per task."""
    out = []
    rng = np.random.default_rng(1)
    for key in store.partial_candidates():
        if not all(len(store.columns(key, t)[0]) for t in tasks):
            continue
        drops, reps, samples = {}, np.zeros(replicates), {}
        for t in tasks:
            cols, per = store.columns(key, t)
            base_idx, base_per = store.columns((), t)
            at = np.searchsorted(base_idx, cols)  # the dense model is scored on every sample
            cand = stats.per_sample_arrays(per, rank_by[t])
            base = stats.per_sample_arrays({f: v[at] for f, v in base_per.items()}, rank_by[t])
            drops[t] = stats.point_drop(rank_by[t], base, cand)
            cand = (cand[0][None, :], cand[1][None, :])
            reps += stats.drop_replicates(rank_by[t], base, cand, stats.resample_counts(len(cols), replicates, rng))[0]
            samples[t] = len(cols)
        d = np.array(list(drops.values()))
        out.append({"removed": list(key), "drops": drops, "mean_drop": float(d.mean()),
                    "std_drop": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                    "ci95": list(stats.interval(reps / len(tasks))), "samples": samples})
    out.sort(key=lambda c: (len(c["removed"]), c["mean_drop"], c["removed"]))
    return out


def summary_markdown(analysis: dict) -> str:
    tasks = analysis["tasks"]
    lines = [
        f"# blockprune summary: {analysis['model']}",
        "",
        f"{analysis['num_blocks']} blocks{'' if analysis.get('units', 'blocks') == 'blocks' else ' (units: ' + analysis['units'] + ')'}, "
        f"method `{analysis['method']}`, {len(analysis['candidates'])} candidate sets, "
        f"each scored on all {len(tasks)} tasks.",
        "",
        "Drop = per task, the drop of its ranking score (relative quality loss 1 - q/q_dense; for kl the KL in "
        "nats/token); ± is the sample std over tasks. Each task cell: metric value (ranking-score drop).",
        "",
        "| task | metric | dense | ranked by | dense | n |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, t in tasks.items():
        lines.append(f"| {cell(name)} | {t['metric']} | {t['baseline']:.4g} | {t['rank_score']} | {t['rank_baseline']:.4g} | {t['n']} |")
    for note in analysis.get("notes", []):
        lines += ["", f"Note: {note}."]
    for warning in analysis.get("warnings", []):
        lines += ["", f"⚠ Warning: {warning}."]
    lines += ["", f"## Best set per number of removed {'blocks' if analysis.get('units', 'blocks') == 'blocks' else 'units'}", ""]
    header = "| k | removed | mean drop ± std | 95% interval | " + " | ".join(map(cell, tasks)) + " |"
    lines += [header, "|" + " --- |" * (4 + len(tasks))]
    by_k: dict[int, dict] = {}
    for c in analysis["candidates"]:
        by_k.setdefault(len(c["removed"]), c)  # sorted by mean drop within k
    for k, c in sorted(by_k.items()):
        per_task = " | ".join(f"{c['scores'][t]:.4g} ({c['drops'][t]:.2%})" for t in tasks)
        lines.append(f"| {k} | {fmt_set(c['removed'])} | {c['mean_drop']:.2%} ± {c['std_drop']:.2%} | "
                     f"{c['ci95'][0]:.2%} – {c['ci95'][1]:.2%} | {per_task} |")
    w = analysis["work"]
    if w.get("naive_block_rows"):
        lines += ["", f"Engine work vs one plain forward per candidate: {w['block_rows']:,} block-row evaluations "
                  f"vs {w['naive_block_rows']:,} ({w['block_ratio']:.2f}x); in tokens {w['token_ratio']:.2f}x; "
                  f"LM-head positions {w['head_ratio']:.2f}x."]
    r = w.get("racing") or {}
    if r.get("eliminated"):
        lines += ["", f"Racing dropped {r['eliminated']} sets early: {r['candidate_samples']:,} candidate-samples scored of "
                  f"{r['exact_candidate_samples']:,} for scoring every set on every sample ({r['ratio']:.2f}x)."]
    if w.get("reused_block_rows"):
        lines += ["", f"States kept across passes saved {w['reused_block_rows']:,} block-row evaluations."]
    lines += ["", "Full data: `cross_dataset_analysis.json`.", ""]
    return "\n".join(lines)


def public(analysis: dict) -> dict:
    return {k: v for k, v in analysis.items() if not k.startswith("_")}
