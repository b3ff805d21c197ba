"""A seed-sized search end to end on CPU, against the replaced system's method (#33).

The replaced system scored every candidate on every sample, one pass each: for each removal set,
a copy of the model without those blocks (made once per set, not timed), then per sample one forward (a multiple-choice sample's choices in
one padded batch) or one `generate()` (a generated answer). blockprune runs the same beam with the
batched engine and racing. This measures, on SmolLM2-135M with 8 real tasks x 100 samples, beam
width 3, up to 4 blocks removed:

* ours: `blockprune search` in-process (racing on), end to end (task loading, engine, store,
  report), wall time; and the exact beam (racing off) up to `--exact-k` blocks, wall time, so the
  best sets per k are compared where both ran;
* the replaced method: its wall time per (candidate, sample) measured on a sample of pairs (a few
  candidates the search visited x the first samples of every task), times the pairs the exact beam
  scores (every set racing saw, on every sample). Extrapolated, and stated as such.

    .venv/bin/python bench/search_vs_replaced.py --out bench/results/search_vs_replaced
    .venv/bin/python bench/search_vs_replaced.py --samples 4 --max-remove 2 --exact-k 1 --out /tmp/x   # a check

Run it alone: two heavy processes on 2 cores slow each other far more than 2x. The run
directories under --work are resumable (a rerun skips what is stored; its wall time is then the
rerun's, so use a fresh --work for figures).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from blockprune import api, models, versions
from blockprune.analysis import build
from blockprune.runs.store import Store, atomic_write_json, atomic_write_text
from blockprune.tasks import load_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import naive_scores  # noqa: E402  (the naive loop, checked against tests/reference.py)

TASKS = ["mc:arc_easy", "mc:sciq", "mc:openbookqa", "mc:piqa", "mc:copa", "mc:hellaswag",
         "gen:basic_arithmetic/1d1d", "gen:triviaqa"]


def search(label: str, work: Path, args, exact: bool, max_remove: int) -> dict:
    out = work / label
    start = time.perf_counter()
    api.run_search(model=args.model, tasks=[f"{t}#{args.samples}" for t in args.task], out=out, method="beam",
                   beam_width=args.beam_width, max_remove=max_remove, seed=0, exact=exact, heal="none",
                   held_out=False, latency=False, progress=not args.quiet)
    seconds = time.perf_counter() - start
    a = build(Store.open_existing(out), replicates=200)
    best = {}
    for c in a["candidates"]:  # sorted by (k, mean drop)
        best.setdefault(len(c["removed"]), c)
    racing = a["work"]["racing"]
    visited = sorted({tuple(c["removed"]) for c in a["candidates"]} | {tuple(c["removed"]) for c in a["eliminated"]})
    return {"label": label, "seconds": round(seconds, 1), "candidate_samples": racing["candidate_samples"],
            "exact_candidate_samples": racing["exact_candidate_samples"], "sets": len(visited),
            "visited": [list(v) for v in visited],
            "best": {k: {"removed": c["removed"], "mean_drop": c["mean_drop"]} for k, c in sorted(best.items())}}


def finished_steps(label: str, work: Path) -> dict:
    """A racing run stopped before its end (`--partial`): the steps that finished (a step's sets are
    its `plan` record; it finished when the next plan or the end was written), the scoring seconds
    of those steps (the store's work records between the plans), and the best set per finished k."""
    out = work / label
    steps, current = [], None
    for line in (out / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == "plan":
            current = {"sets": [tuple(x) for x in rec["sets"]], "seconds": 0.0, "candidate_samples": 0}
            steps.append(current)
        elif rec.get("type") == "work" and current is not None:
            current["seconds"] += rec["seconds"]
            current["candidate_samples"] += rec["candidates"] * rec["samples"]
        elif rec.get("type") == "done":
            steps.append(None)
    finished = [st for st, nxt in zip(steps, steps[1:]) if st is not None]
    ks = sorted({len(x) for st in finished for x in st["sets"]})
    a = build(Store.open_existing(out), replicates=200)
    best = {}
    for c in a["candidates"]:
        if len(c["removed"]) in ks:
            best.setdefault(len(c["removed"]), c)
    visited = sorted({x for st in finished for x in st["sets"]})
    return {"label": label, "seconds": round(sum(st["seconds"] for st in finished), 1), "partial": True,
            "finished_k": ks, "candidate_samples": sum(st["candidate_samples"] for st in finished),
            "sets": len(visited), "visited": [list(v) for v in visited],
            "best": {k: {"removed": c["removed"], "mean_drop": c["mean_drop"]} for k, c in sorted(best.items())}}


@torch.inference_mode()
def replaced_pass(pruned, task, sample: int) -> None:
    """One pass of the replaced method for one (candidate, sample) on the candidate's pruned copy: a
    forward of the sample's requests, or greedy generate() of its answer."""
    if hasattr(task, "prompts"):  # a generated answer
        ids = torch.tensor([task.prompts[sample]])
        pruned.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=task.max_new[sample], eos_token_id=task.eos or None,
                              pad_token_id=pruned.eos_token_id or 0, tokenizer=pruned.tokenizer,
                              stop_strings=task.until[sample] or None)  # stops where the engine's decoder stops
        return
    reqs = [r for r, s in zip(task.requests, task.request_sample) if s == sample]
    naive_scores(pruned, reqs, [], batch=len(reqs))


def replaced_timing(bm, args, visited: list[list[int]]) -> dict:
    """Seconds per (candidate, sample) of the replaced method, per task, on a sample of pairs."""
    rng = np.random.default_rng(0)
    picked = [visited[i] for i in rng.choice(len(visited), size=min(args.naive_candidates, len(visited)),
                                             replace=False)]
    pruned = [models.remove_blocks(bm, removed) for removed in picked]  # made once per candidate, untimed
    per_task = {}
    for spec in args.task:
        task = load_task(f"{spec}#{args.samples}", bm.tokenizer, bm.eos_token_id, seed=0)
        samples = list(range(min(args.naive_samples, task.n)))
        replaced_pass(pruned[0], task, samples[0])  # warm-up, untimed
        start = time.perf_counter()
        for copy in pruned:
            for s in samples:
                replaced_pass(copy, task, s)
        pairs = len(picked) * len(samples)
        per_task[spec] = {"pairs_timed": pairs, "seconds_per_pair": (time.perf_counter() - start) / pairs,
                          "samples": task.n}
        print(f"replaced method, {spec}: {per_task[spec]['seconds_per_pair'] * 1000:.1f} ms per (candidate, sample)",
              flush=True)
    return {"candidates_timed": [list(p) for p in picked], "per_task": per_task}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", action="append", default=None, help=f"task specs (default: {', '.join(TASKS)})")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--beam-width", type=int, default=3)
    ap.add_argument("--max-remove", type=int, default=4)
    ap.add_argument("--exact-k", type=int, default=1, help="run the exact beam (racing off) up to this k")
    ap.add_argument("--naive-candidates", type=int, default=3)
    ap.add_argument("--naive-samples", type=int, default=4)
    ap.add_argument("--work", default="runs/bench-search-vs-replaced")
    ap.add_argument("--out", default="bench/results/search_vs_replaced")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--partial", action="store_true",
                    help="summarise a racing run stopped before its end: its finished steps, their scoring seconds "
                         "(the store's work records) against the replaced method on the same sets; no exact run")
    args = ap.parse_args(argv)
    args.task = args.task or TASKS
    work = Path(args.work)
    if args.partial:
        ours, exact = finished_steps("racing", work), None
    else:
        ours = search("racing", work, args, exact=False, max_remove=args.max_remove)
        exact = search("exact", work, args, exact=True, max_remove=args.exact_k) if args.exact_k else None
    bm = models.load(args.model, device="cpu", dtype="float32")
    timing = replaced_timing(bm, args, ours["visited"])
    # the replaced method scores every set the (exact) beam visits on every sample: racing saw the same
    # sets where the beams agree; per sample, its cost is the measured mean of that sample's task
    per_pair = {t: v["seconds_per_pair"] for t, v in timing["per_task"].items()}
    sets = ours["sets"]
    replaced_seconds = sum(per_pair[t] * timing["per_task"][t]["samples"] * sets for t in args.task)
    same = {}
    if exact:
        same = {k: exact["best"][k]["removed"] == ours["best"].get(k, {}).get("removed") for k in exact["best"]}
    result = {
        "model": args.model, "tasks": args.task, "samples_per_task": args.samples, "beam_width": args.beam_width,
        "max_remove": args.max_remove, "ours": ours, "exact": exact, "replaced": {
            **timing, "sets": sets, "pairs": sets * sum(timing["per_task"][t]["samples"] for t in args.task),
            "seconds": round(replaced_seconds, 1), "extrapolated": True,
            "how": "seconds per (candidate, sample) measured per task on the pairs timed, times every set the "
                   "search visited on every sample of every task"},
        "end_to_end_ratio": round(replaced_seconds / ours["seconds"], 2),
        "same_best_per_k": same, "machine": {"cpu": platform.processor() or platform.machine(),
                                             "threads": torch.get_num_threads()}, "versions": versions(),
    }
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    lines = [f"# A seed-sized search end to end vs the replaced method ({args.model}, CPU)", "",
             f"{len(args.task)} tasks x {args.samples} samples ({', '.join(args.task)}), beam width {args.beam_width}, "
             f"up to {args.max_remove} blocks removed, {torch.get_num_threads()} threads.", "",
             "| run | sets | candidate-samples | wall (s) |", "| --- | --- | --- | --- |",
             (f"| blockprune, racing (measured: the scoring of its finished steps, k = "
              f"{', '.join(map(str, ours['finished_k']))}; the run was stopped before k = {args.max_remove}) | "
              if ours.get("partial") else "| blockprune, racing (measured end to end) | ")
             + f"{ours['sets']} | {ours['candidate_samples']:,} | {ours['seconds']} |"]
    if exact:
        lines.append(f"| blockprune, exact beam to k = {args.exact_k} (measured) | {exact['sets']} | "
                     f"{exact['candidate_samples']:,} | {exact['seconds']} |")
    lines += [f"| replaced method: every set on every sample, one pass each (**extrapolated** from "
              f"{sum(v['pairs_timed'] for v in timing['per_task'].values())} timed pairs) | {sets} | "
              f"{result['replaced']['pairs']:,} | {result['replaced']['seconds']:,.0f} |", "",
              f"{'On the finished steps' if ours.get('partial') else 'End to end'}, blockprune is "
              f"**{result['end_to_end_ratio']}x** faster than the replaced method "
              f"(extrapolated; per task ms per pair: "
              + ", ".join(f"{t} {1000 * v:.0f}" for t, v in per_pair.items()) + ").", "",
              "| k | racing best | exact beam best | same |", "| --- | --- | --- | --- |"]
    for k, b in ours["best"].items():
        e = (exact or {}).get("best", {}).get(k)
        lines.append(f"| {k} | {b['removed']} ({100 * b['mean_drop']:.2f}%) | "
                     + (f"{e['removed']} ({100 * e['mean_drop']:.2f}%) | {'yes' if same[k] else 'NO'} |" if e
                        else "not run | - |"))
    lines.append("")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))
    print(json.dumps({"end_to_end_ratio": result["end_to_end_ratio"], "same_best_per_k": same}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
