"""Sequential sampling (racing) against the exact beam at hundreds of samples per task.

Exact beam search scores every child of every step on every sample of every task. Racing scores
the children on growing sample subsets (8, 16, 32, ... per task) and drops a set as soon as the
paired bootstrap says, at 99%, that it is worse than each of the step's best few; the contenders
get every sample. This runs both on the same tasks (SmolLM2-135M, the ranking scores of
blockprune.tasks.scores) and reports the candidate-samples each scored, the ratio, their wall time and
whether they found the same best set per k.

    .venv/bin/python bench/sequential.py --out bench/results/sequential_cpu

Both runs are ordinary run directories under --work (resumable: rerunning skips what is stored).
Run it alone: two heavy processes on 2 cores slow each other far more than 2x.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from blockprune import api, versions
from blockprune.analysis import build
from blockprune.runs.store import Store, atomic_write_json, atomic_write_text

TASKS = ["bigbench:arithmetic/2_digit_addition", "bigbench:strategyqa"]


def run(label: str, work: Path, args, exact: bool) -> dict:
    out = work / label
    start = time.perf_counter()
    if not args.report_only:
        api.run_search(model="smollm2-135m", tasks=args.task, out=out, method="beam", beam_width=args.beam_width,
                       max_remove=args.max_remove, samples=args.samples, seed=0, protected=args.protect,
                       exact=exact, progress=not args.quiet, latency=False)
    store = Store.open_existing(out)
    seconds = sum(w["seconds"] for w in store.work) if args.report_only else time.perf_counter() - start
    a = build(store, replicates=200)
    best, count = {}, {}
    for c in a["candidates"]:  # sorted by (k, mean drop)
        best.setdefault(len(c["removed"]), c)
        count[len(c["removed"])] = count.get(len(c["removed"]), 0) + 1
    for c in a["eliminated"]:
        count[len(c["removed"])] = count.get(len(c["removed"]), 0) + 1
    racing = a["work"]["racing"]
    return {"label": label, "seconds": round(seconds, 1), "candidate_samples": racing["candidate_samples"],
            "exact_candidate_samples": racing["exact_candidate_samples"],
            "candidates": len(a["candidates"]) + racing["eliminated"], "eliminated": racing["eliminated"],
            "block_tokens": a["work"]["block_tokens"], "sets_per_k": count,
            "best": {k: {"removed": c["removed"], "mean_drop": c["mean_drop"]} for k, c in sorted(best.items())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", action="append", default=None, help=f"task specs (default: {', '.join(TASKS)})")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--beam-width", type=int, default=2)
    ap.add_argument("--max-remove", type=int, default=2)
    ap.add_argument("--protect", type=lambda s: [int(x) for x in s.split(",") if x], default=[],
                    help="blocks never removed (fewer candidates, same comparison)")
    ap.add_argument("--work", default="runs/bench-sequential")
    ap.add_argument("--out", default="bench/results/sequential_cpu")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--report-only", action="store_true",
                    help="summarise the stored runs without scoring (an unfinished exact run: only its finished k)")
    args = ap.parse_args()
    args.task = args.task or TASKS
    work = Path(args.work)
    racing = run("racing", work, args, exact=False)
    exact = run("exact", work, args, exact=True)
    # a k is compared only when the exact run scored every set that racing saw at that k
    finished = [k for k in exact["best"] if exact["sets_per_k"].get(k, 0) >= racing["sets_per_k"].get(k, 0)]
    exact["best"] = {k: exact["best"][k] for k in finished}
    same = {k: racing["best"].get(k, {}).get("removed") == exact["best"][k]["removed"] for k in finished}
    # exact beam scores every set it evaluates on every sample (the same sets when the beams agree)
    exact_samples = racing["exact_candidate_samples"] if len(finished) < args.max_remove else exact["candidate_samples"]
    exact["candidate_samples"] = exact_samples
    ratio = racing["candidate_samples"] / exact_samples
    result = {"model": "smollm2-135m", "tasks": args.task, "samples_per_task": args.samples,
              "beam_width": args.beam_width, "max_remove": args.max_remove, "protected": args.protect,
              "racing": racing, "exact": exact, "candidate_samples_ratio": round(ratio, 4),
              "block_token_ratio": None if len(finished) < args.max_remove
              else round(racing["block_tokens"] / exact["block_tokens"], 4),
              "wall_ratio": None if len(finished) < args.max_remove else round(racing["seconds"] / exact["seconds"], 4),
              "same_best_per_k": same, "exact_finished_k": finished,
              "machine": {"cpu": platform.processor() or platform.machine()}, "versions": versions()}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    lines = [f"# Sequential sampling vs exact beam ({result['model']})", "",
             f"Beam W={args.beam_width}, k <= {args.max_remove}, {args.samples} samples per task: "
             f"{', '.join(args.task)}" + (f"; protected blocks {args.protect}" if args.protect else "") + ".", "",
             "| run | candidates | candidate-samples | block tokens | wall (s) |", "| --- | --- | --- | --- | --- |"]
    partial = result["wall_ratio"] is None
    for r in (exact, racing):
        mark = " (partial)" if partial and r is exact else ""
        lines.append(f"| {r['label']} | {racing['candidates'] if r is exact else r['candidates']} | {r['candidate_samples']:,} | "
                     f"{r['block_tokens']:,}{mark} | {r['seconds']}{mark} |")
    if result["wall_ratio"] is None:
        lines += ["", f"Racing / exact: candidate-samples **{ratio:.3f}x** (exact: every set racing saw, on every sample). "
                  f"The exact run finished k = {', '.join(map(str, finished)) or 'none'} only; its other rows are missing "
                  "below and its work and wall time are partial."]
    else:
        lines += ["", f"Racing / exact: candidate-samples **{ratio:.3f}x**, block tokens {result['block_token_ratio']:.3f}x, "
                  f"wall {result['wall_ratio']:.3f}x."]
    lines += ["", "| k | exact best | racing best | same |", "| --- | --- | --- | --- |"]
    for k, e in exact["best"].items():
        r = racing["best"].get(k, {})
        lines.append(f"| {k} | {e['removed']} ({100 * e['mean_drop']:.2f}%) | {r.get('removed')} "
                     f"({100 * r.get('mean_drop', float('nan')):.2f}%) | {'yes' if same[k] else 'NO'} |")
    lines.append("")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))
    print(json.dumps({"candidate_samples_ratio": result["candidate_samples_ratio"], "same_best_per_k": same}))


if __name__ == "__main__":
    main()
