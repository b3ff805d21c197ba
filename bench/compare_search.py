"""Which search to use: every method against the true optimum on SmolLM2-135M.

Exhaustive search over k <= 3 on a short perplexity task gives the true best set per k; each
method then runs in its own fresh store (so its work and wall time are its own) and is scored by
its regret: the mean drop of its best set minus the optimum's, in points of relative quality loss.
For k = 4..K (beyond exhaustive reach) regret is measured against the best set any method found.

    .venv/bin/python bench/compare_search.py --out bench/results/search_comparison

Methods: sensitivity ranking (remove the k singly-least-harmful blocks), one-shot block influence
and angular distance, greedy, exact beam W = 2, 4, 8, racing beam W = 4, 8, evolutionary (racing).
Work = block-row evaluations and block tokens (padding included) as counted by the engine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from blockprune import models, search
from blockprune.search import oneshot
from blockprune.engine import Engine
from blockprune.runs.store import Store, atomic_write_json, atomic_write_text
from blockprune.tasks import load_task

METHODS = [
    # (label, method, kwargs, racing)
    ("sensitivity ranking", "ranking", {}, False),
    ("block influence (one-shot)", "block-influence", {}, False),
    ("angular distance (one-shot)", "angular", {}, False),
    ("greedy", "greedy", {}, False),
    ("beam W=2", "beam", {"beam_width": 2}, False),
    ("beam W=4", "beam", {"beam_width": 4}, False),
    ("beam W=8", "beam", {"beam_width": 8}, False),
    ("racing beam W=4", "beam", {"beam_width": 4}, True),
    ("racing beam W=8", "beam", {"beam_width": 8}, True),
    ("evolutionary (racing)", "evolutionary", {}, True),
]


def run_method(bm, tasks, method: str, kwargs: dict, racing: bool, k_max: int, workdir: Path) -> dict:
    store = Store(workdir, {"method": method, **kwargs, "racing": racing})
    ev = search.Evaluator(Engine(bm), tasks, store, progress=False, racing=search.Racing() if racing else None)
    ev.baseline  # the dense model is every method's reference; not counted as search work
    before = {k: sum(w[k] for w in store.work) for k in ("block_rows", "block_tokens")}
    start = time.perf_counter()
    if method == "ranking":
        singles = ev.evaluate([(b,) for b in range(bm.num_blocks)])
        order = [k[0] for k in sorted(singles, key=lambda k: (singles[k].mean_drop, k))]
        best = {k: tuple(sorted(order[:k])) for k in range(1, k_max + 1)}
    elif method in oneshot.METHODS:
        sets = oneshot.sets_for(method, bm, tasks, range(bm.num_blocks), k_max)
        seconds = time.perf_counter() - start
        # the choice costs one dense pass (L block rows per request); scoring the sets is evaluation
        rows = sum(min(len(t.requests), 32) for t in tasks)
        tokens = sum(len(r.tokens) for t in tasks for r in t.requests[:32])
        best = {len(s): s for s in sets}
        ev.evaluate(list(best.values()))
        return {"best": best, "drops": {k: ev.evaluate([s])[s].mean_drop for k, s in best.items()}, "seconds": seconds,
                "block_rows": rows * bm.num_blocks, "block_tokens": tokens * bm.num_blocks, "candidates": 0}
    else:
        res = search.run(method, ev, max_remove=k_max, **kwargs)
        best = {len(step[0]): step[0] for step in res.steps}
    seconds = time.perf_counter() - start
    after = {k: sum(w[k] for w in store.work) for k in ("block_rows", "block_tokens")}
    lines = (workdir / "results.jsonl").read_text().splitlines()
    candidates = len({tuple(r["removed"]) for r in map(json.loads, lines) if r.get("type") is None}) - 1
    drops = {k: ev.evaluate([s])[s].mean_drop for k, s in best.items()}
    return {"best": best, "drops": drops, "seconds": seconds, "candidates": candidates,
            "block_rows": after["block_rows"] - before["block_rows"],
            "block_tokens": after["block_tokens"] - before["block_tokens"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="ppl:shakespeare/hamlet#12")
    ap.add_argument("--ppl-window", type=int, default=32)
    ap.add_argument("--exhaustive-k", type=int, default=3)
    ap.add_argument("--max-k", type=int, default=8)
    ap.add_argument("--out", default="bench/results/search_comparison")
    ap.add_argument("--only", default="", help="comma-separated labels to run (debugging)")
    args = ap.parse_args(argv)

    bm = models.load(args.model, device="cpu")
    tasks = [load_task(args.task, bm.tokenizer, bm.eos_token_id, None, 0, args.ppl_window)]
    root = Path(tempfile.mkdtemp(prefix="bp-compare-"))
    out: dict = {"model": args.model, "task": args.task, "ppl_window": args.ppl_window, "methods": {}}
    try:
        start = time.perf_counter()
        ex = run_method(bm, tasks, "exhaustive", {}, False, args.exhaustive_k, root / "exhaustive")
        print(f"exhaustive k<={args.exhaustive_k}: {ex['seconds']:.0f} s, {ex['candidates']} sets", flush=True)
        out["exhaustive"] = {**ex, "best": {k: list(v) for k, v in ex["best"].items()}}
        for label, method, kwargs, racing in METHODS:
            if args.only and label not in args.only.split(","):
                continue
            r = run_method(bm, tasks, method, kwargs, racing, args.max_k, root / label.replace(" ", "_").replace("/", "_"))
            out["methods"][label] = {**r, "best": {k: list(v) for k, v in r["best"].items()}}
            print(f"{label}: {r['seconds']:.0f} s, {r['block_rows']} block rows", flush=True)
        out["seconds_total"] = time.perf_counter() - start
    finally:
        shutil.rmtree(root, ignore_errors=True)
    # regret: vs the exhaustive optimum for k <= exhaustive_k, vs the best any method found above
    ks = range(1, args.max_k + 1)
    best_any = {}
    for k in ks:
        pool = [m["drops"][k] for m in out["methods"].values() if k in m["drops"]]
        if k <= args.exhaustive_k:
            pool.append(out["exhaustive"]["drops"][k])
        best_any[k] = min(pool)
    for m in out["methods"].values():
        m["regret"] = {k: m["drops"][k] - best_any[k] for k in ks if k in m["drops"]}
    out["reference"] = {k: ("exhaustive optimum" if k <= args.exhaustive_k else "best found by any method") for k in ks}
    out["optimum"] = best_any
    path = Path(args.out)
    atomic_write_json(path.with_suffix(".json"), out)
    atomic_write_text(path.with_suffix(".md"), markdown(out, ks, args.exhaustive_k))
    print(markdown(out, ks, args.exhaustive_k))
    return 0


def markdown(out: dict, ks, exhaustive_k: int) -> str:
    head = "| method | " + " | ".join(f"k={k}" for k in ks) + " | sets scored | block rows | block tokens | wall s |"
    lines = [f"Regret in points of mean relative drop (0 = optimal; k <= {exhaustive_k}: vs exhaustive, above: vs the best any method found). "
             f"{out['model']}, task {out['task']} (window {out['ppl_window']}).", "", head, "|" + " --- |" * (len(list(ks)) + 5)]
    ex = out["exhaustive"]
    lines.append(f"| exhaustive (k <= {exhaustive_k}) | " + " | ".join("0.00" if k in ex["drops"] else "" for k in ks)
                 + f" | {ex['candidates']} | {ex['block_rows']:,} | {ex['block_tokens']:,} | {ex['seconds']:.0f} |")
    for label, m in out["methods"].items():
        cells = [f"{100 * m['regret'][k]:.2f}" if k in m["regret"] else "" for k in ks]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {m['candidates']} | {m['block_rows']:,} | {m['block_tokens']:,} | {m['seconds']:.0f} |")
    lines += ["", "Optimum mean drop per k: " + ", ".join(f"k={k} {100 * v:.2f}%" for k, v in out["optimum"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
