"""Cross-task analysis of a run's store: `cross_dataset_analysis.json` and `SUMMARY.md`.

Every candidate in a blockprune store is scored on every task, so each candidate's mean drop is
over the same tasks. Drops are relative quality losses (see `tasks.relative_drop`); `std_drop`
is the sample standard deviation over tasks (ddof=1; 0 with one task).
"""

from __future__ import annotations

import numpy as np

from . import stats
from .store import Store
from .tasks import relative_drop

ANALYSIS_FILE = "cross_dataset_analysis.json"
SUMMARY_FILE = "SUMMARY.md"


class AnalysisError(Exception):
    pass


def build(store: Store, replicates: int = stats.DEFAULT_REPLICATES) -> dict:
    """The analysis dict from a store (no model, no re-scoring).

    Adds to each candidate `ci95`, the paired-bootstrap 95% interval of its mean drop, and a
    per-block single-removal table. The bootstrap replicates are kept (not serialised) under
    the key `_replicates` for the report's comparisons.
    """
    info = store.run_info
    settings = info["settings"]
    tasks = settings["tasks"]  # name -> {spec, metric, higher_is_better, n, sample_ids}
    names = list(tasks)
    if not names:
        raise AnalysisError("the run has no tasks")
    if not all(store.has((), t) for t in names):
        raise AnalysisError(f"{store.dir}: the dense baseline is not scored yet; rerun the search to resume it")
    baseline = {t: store.get((), t)["value"] for t in names}
    candidates = []
    for key in store.candidates():
        if not key or not all(store.has(key, t) for t in names):
            continue  # the baseline, or a candidate interrupted between tasks
        scores = {t: store.get(key, t)["value"] for t in names}
        drops = {t: relative_drop(tasks[t]["metric"], baseline[t], scores[t]) for t in names}
        d = np.array(list(drops.values()))
        candidates.append({
            "removed": list(key),
            "scores": scores,
            "drops": drops,
            "mean_drop": float(d.mean()),
            "std_drop": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
            "min_drop": float(d.min()),
            "max_drop": float(d.max()),
            "num_tasks": len(d),
        })
    candidates.sort(key=lambda c: (len(c["removed"]), c["mean_drop"], c["removed"]))
    keys = [tuple(c["removed"]) for c in candidates]
    reps = stats.bootstrap_mean_drops(store, keys, tasks, replicates) if keys else np.zeros((0, replicates))
    for c, r in zip(candidates, reps):
        c["ci95"] = list(stats.interval(r))
    eliminated = _partial(store, tasks, baseline, replicates)
    per_block = []
    for c in candidates + eliminated:
        if len(c["removed"]) == 1:
            per_block.append({"block": c["removed"][0], "mean_drop": c["mean_drop"], "ci95": c["ci95"],
                              "drops": c["drops"], **({"samples": c["samples"]} if "samples" in c else {})})
    per_block.sort(key=lambda b: b["block"])
    for rank, b in enumerate(sorted(per_block, key=lambda b: b["mean_drop"]), 1):
        b["rank"] = rank
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
    scored = sum(tasks[t]["n"] if store.has(k, t) else len(store.samples_of(k, t))
                 for k in set(store.candidates()) | set(store.partial_candidates()) if k for t in names)
    seen = len([k for k in set(store.candidates()) | set(store.partial_candidates()) if k])
    work["racing"] = {"eliminated": len(eliminated), "candidate_samples": scored, "exact_candidate_samples": seen * n_total,
                      "ratio": round(scored / (seen * n_total), 4) if seen else None}
    return {
        "model": settings["model"],
        "num_blocks": settings["num_blocks"],
        "method": settings.get("method"),
        "drop_definition": "relative quality loss 1 - q/q_dense; q = accuracy, exact match, or 1/perplexity",
        "std_definition": "sample standard deviation over tasks (ddof=1)",
        "tasks": {
            t: {
                "spec": tasks[t]["spec"],
                "metric": tasks[t]["metric"],
                "higher_is_better": tasks[t]["higher_is_better"],
                "baseline": baseline[t],
                "n": tasks[t]["n"],
            }
            for t in names
        },
        "ci_definition": f"paired bootstrap over samples ({replicates} replicates), 95% percentile interval of the mean drop",
        "per_block": per_block,
        "candidates": candidates,
        "eliminated": eliminated,
        "work": work,
        "_replicates": dict(zip(keys, reps)),
    }


def _partial(store: Store, tasks: dict, baseline: dict, replicates: int) -> list[dict]:
    """Candidates racing dropped after some samples: drops on the samples they were scored on
    (against the dense model on the same samples), with `samples` = how many per task."""
    out = []
    rng = np.random.default_rng(1)
    for key in store.partial_candidates():
        if not all(store.samples_of(key, t) for t in tasks):
            continue
        drops, reps, samples = {}, np.zeros(replicates), {}
        for t, info in tasks.items():
            data = store.samples_of(key, t)
            base_data = store.samples_of((), t)
            cols = sorted(data)
            fields = list(data[cols[0]])
            cand = stats.per_sample_arrays({f: [data[i][f] for i in cols] for f in fields}, info["metric"])
            base = stats.per_sample_arrays({f: [base_data[i][f] for i in cols] for f in fields}, info["metric"])
            cand = (cand[0][None, :], cand[1][None, :])
            drops[t] = float(stats.drop_replicates(info["metric"], base, cand, np.ones((len(cols), 1)))[0, 0])
            reps += stats.drop_replicates(info["metric"], base, cand, stats.resample_counts(len(cols), replicates, rng))[0]
            samples[t] = len(cols)
        d = np.array(list(drops.values()))
        out.append({"removed": list(key), "drops": drops, "mean_drop": float(d.mean()),
                    "std_drop": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                    "ci95": list(stats.interval(reps / len(tasks))), "samples": samples})
    out.sort(key=lambda c: (len(c["removed"]), c["mean_drop"], c["removed"]))
    return out


def _fmt_set(removed) -> str:
    return "{" + ", ".join(str(b) for b in removed) + "}"


def summary_markdown(analysis: dict) -> str:
    tasks = analysis["tasks"]
    lines = [
        f"# blockprune summary: {analysis['model']}",
        "",
        f"{analysis['num_blocks']} blocks, method `{analysis['method']}`, {len(analysis['candidates'])} candidate sets, "
        f"each scored on all {len(tasks)} tasks.",
        "",
        "Drop = relative quality loss vs the dense model (1 - q/q_dense; q = accuracy, exact match or 1/perplexity); "
        "± is the sample std over tasks.",
        "",
        "| task | metric | dense | n |",
        "| --- | --- | --- | --- |",
    ]
    for name, t in tasks.items():
        lines.append(f"| {name} | {t['metric']} | {t['baseline']:.4g} | {t['n']} |")
    lines += ["", "## Best set per number of removed blocks", ""]
    header = "| k | removed | mean drop ± std | " + " | ".join(tasks) + " |"
    lines += [header, "|" + " --- |" * (3 + len(tasks))]
    by_k: dict[int, dict] = {}
    for c in analysis["candidates"]:
        by_k.setdefault(len(c["removed"]), c)  # sorted by mean drop within k
    for k, c in sorted(by_k.items()):
        per_task = " | ".join(f"{c['scores'][t]:.4g}" for t in tasks)
        lines.append(f"| {k} | {_fmt_set(c['removed'])} | {c['mean_drop']:.2%} ± {c['std_drop']:.2%} | {per_task} |")
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
