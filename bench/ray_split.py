"""The demo's beam search in one process vs on Ray workers of this machine: wall time, block tokens.

Runs the embedded default's search (SmolLM2-135M, the demo's three tasks, beam 2, K = 2, racing)
into fresh directories, once in this process with all its threads and once with `--workers N`
(the cores split between the workers), and compares:
* wall time of the search (model load and report included, latency and held-out checks left out);
* block tokens the engine ran (the work records), to show the prefix sharing survives the split;
* the recommendations (must be the same sets).
Run it alone: two heavy processes on these cores slow each other down far more than 2x.
Writes bench/results/ray_split.{json,md}.

    .venv/bin/python bench/ray_split.py [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from blockprune import api


def work_of(out: Path) -> dict:
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    work = [r for r in recs if r.get("type") == "work"]
    return {"units": len(work), "block_tokens": sum(r["block_tokens"] for r in work),
            "naive_block_tokens": sum(r["naive_block_tokens"] for r in work),
            "reused_block_rows": sum(r.get("reused_block_rows", 0) for r in work)}


def run(out: Path, **kw) -> dict:
    settings = api.DEMO.replace(export_formats=(), held_out=False)
    start = time.perf_counter()
    res = api.run_search(settings, out=out, latency=False, progress=False, **kw)
    seconds = time.perf_counter() - start
    recs = res.recommendations["recommendations"]
    return {"seconds": round(seconds, 1), **work_of(out),
            "recommendations": {k: recs[k]["removed"] for k in ("conservative", "balanced", "aggressive")},
            "steps": [[list(s) for s in step] for step in res.result.steps],
            **({"cluster": json.loads((out / "run.json").read_text())["cluster"]} if kw.get("workers") else {})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="ray-split-"))
    single = run(tmp / "single")
    print(f"one process, {torch.get_num_threads()} threads: {single['seconds']} s, {single['block_tokens']:,} block tokens",
          flush=True)
    ray = run(tmp / "ray", workers=args.workers)
    threads = [w.get("threads") for w in ray["cluster"][0]["workers"]]
    print(f"{args.workers} Ray workers ({threads} threads): {ray['seconds']} s, {ray['block_tokens']:,} block tokens", flush=True)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch_threads_single": torch.get_num_threads(), "workers": args.workers, "worker_threads": threads,
        "single": single, "ray": ray,
        "wall_ratio": round(ray["seconds"] / single["seconds"], 3),
        "block_token_ratio": round(ray["block_tokens"] / single["block_tokens"], 4),
        "same_recommendations": ray["recommendations"] == single["recommendations"],
        "same_steps": ray["steps"] == single["steps"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_split.json").write_text(json.dumps(result, indent=2) + "\n")
    rates = ", ".join(f"worker {w['worker']}: {w['units']} units, {w['block_tokens']:,} block tokens, "
                      f"{w['block_tokens_per_s']:,.0f}/s busy" for w in ray["cluster"][0]["workers"])
    md = [
        "# The demo's beam: one process vs Ray workers on this machine",
        "",
        f"Machine: {result['machine']}. Run alone (nothing else heavy running). `bench/ray_split.py`.",
        "",
        "| | threads | wall time | block tokens | units |",
        "| --- | --- | --- | --- | --- |",
        f"| one process | {result['torch_threads_single']} | {single['seconds']} s | {single['block_tokens']:,} | {single['units']} |",
        f"| {args.workers} Ray workers | {'+'.join(map(str, threads))} | {ray['seconds']} s | {ray['block_tokens']:,} | {ray['units']} |",
        "",
        f"Wall time ratio (Ray / one process): **{result['wall_ratio']}x**; block tokens ratio: "
        f"**{result['block_token_ratio']}x** (sharing survives the split when this is at most 1.15x).",
        f"Same search path: {result['same_steps']}; same recommendations: {result['same_recommendations']} "
        f"({single['recommendations']}).",
        "",
        f"Per worker: {rates}.",
        "",
    ]
    (out / "ray_split.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
