"""Sequential sampling (racing) against the exact beam at hundreds of samples per task.

Exact beam search scores every child of every step on every sample of every task. Racing scores
the children on growing sample subsets (8, 16, 32, ... per task) and drops a set as soon as the
paired bootstrap says, at 99%, that it is worse than each of the step's best few; the contenders
get every sample. This runs both on the same tasks (SmolLM2-135M, the ranking scores of
blockprune.scores) and reports the candidate-samples each scored, the ratio, their wall time and
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
from blockprune.store import Store, atomic_write_json, atomic_write_text

TASKS = ["bigbench:arithmetic/2_digit_addition", "bigbench:strategyqa"]


def run(label: str, work: Path, args, exact: bool) -> dict:
    out = work / label
    start = time.perf_counter()
    api.run_search(model="smollm2-135m", tasks=args.task, out=out, method="beam", beam_width=args.beam_width,
                   max_remove=args.max_remove, samples=args.samples, seed=0, protected=args.protect,
                   exact=exact, progress=not args.quiet, latency=False)
    seconds = time.perf_counter() - start
    a = build(Store.open_existing(out), replicates=200)
    best = {}
    for c in a["candidates"]:  # sorted by (k, mean drop)
        best.setdefault(len(c["removed"]), c)
    racing = a["work"]["racing"]
    return {"label": label, "seconds": round(seconds, 1), "candidate_samples": racing["candidate_samples"],
            "candidates": len(a["candidates"]) + racing["eliminated"], "eliminated": racing["eliminated"],
            "block_tokens": a["work"]["block_tokens"],
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
    args = ap.parse_args()
    args.task = args.task or TASKS
    work = Path(args.work)
    racing = run("racing", work, args, exact=False)
    exact = run("exact", work, args, exact=True)
    same = {k: racing["best"].get(k, {}).get("removed") == exact["best"][k]["removed"] for k in exact["best"]}
    ratio = racing["candidate_samples"] / exact["candidate_samples"]
    result = {"model": "smollm2-135m", "tasks": args.task, "samples_per_task": args.samples,
              "beam_width": args.beam_width, "max_remove": args.max_remove, "protected": args.protect,
              "racing": racing, "exact": exact, "candidate_samples_ratio": round(ratio, 4),
              "block_token_ratio": round(racing["block_tokens"] / exact["block_tokens"], 4),
              "wall_ratio": round(racing["seconds"] / exact["seconds"], 4), "same_best_per_k": same,
              "machine": {"cpu": platform.processor() or platform.machine()}, "versions": versions()}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    lines = [f"# Sequential sampling vs exact beam ({result['model']})", "",
             f"Beam W={args.beam_width}, k <= {args.max_remove}, {args.samples} samples per task: "
             f"{', '.join(args.task)}" + (f"; protected blocks {args.protect}" if args.protect else "") + ".", "",
             "| run | candidates | candidate-samples | block tokens | wall (s) |", "| --- | --- | --- | --- | --- |"]
    for r in (exact, racing):
        lines.append(f"| {r['label']} | {r['candidates']} | {r['candidate_samples']:,} | {r['block_tokens']:,} | {r['seconds']} |")
    lines += ["", f"Racing / exact: candidate-samples **{ratio:.3f}x**, block tokens {result['block_token_ratio']:.3f}x, "
              f"wall {result['wall_ratio']:.3f}x.", "", "| k | exact best | racing best | same |", "| --- | --- | --- | --- |"]
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
