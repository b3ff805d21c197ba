"""Naive per-candidate loop vs the engine on the same beam step of the demo.

The naive loop is what one writes without blockprune: for each candidate, the model with the
blocks taken out of its block list, a plain batched forward per task with full logits, then
log-softmax at the scored positions. Both produce the same scores (asserted); printed are the
wall-clock ratio and the work ratios (block-row evaluations, block tokens).

    .venv/bin/python bench/bench_engine.py [--run runs/demo] [--samples 8] [--out bench/results/engine_cpu.json]

The beam step: children of the demo's k=1 beam (read from --run if it holds a finished demo,
otherwise the two best single removals are taken from a sensitivity pass over the same samples).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from blockprune import api, models
from blockprune.engine import Engine
from blockprune.tasks.kinds import needs_dense
from blockprune.tasks import load_task


@torch.inference_mode()
def naive_scores(bm, requests, removed, batch=16):
    """The timed naive loop (here and in gpu_bench.py): the model without `removed` (no copy), one
    padded batched forward per `batch` requests with full logits; checked against tests/reference.py."""
    lp = np.zeros(len(requests))
    gr = np.zeros(len(requests), dtype=bool)
    pad = bm.eos_token_id or 0
    with models.without_blocks(bm, removed):
        for s in range(0, len(requests), batch):
            part = requests[s : s + batch]
            length = max(len(r.tokens) for r in part)
            ids = torch.full((len(part), length), pad)
            att = torch.zeros((len(part), length), dtype=torch.long)
            for j, r in enumerate(part):
                ids[j, : len(r.tokens)] = torch.tensor(r.tokens)
                att[j, : len(r.tokens)] = 1
            logits = bm.model(input_ids=ids.to(bm.device), attention_mask=att.to(bm.device), use_cache=False).logits
            # every scored (row, position, target) of the batch in one gather on the model's device
            rows = np.concatenate([np.full(len(r.tokens) - r.score_from, j) for j, r in enumerate(part)])
            pos = np.concatenate([np.arange(r.score_from - 1, len(r.tokens) - 1) for r in part])
            tgt = np.concatenate([r.tokens[r.score_from:] for r in part])
            owner = torch.from_numpy(rows).to(bm.device)
            picked = logits[owner, torch.from_numpy(pos).to(bm.device)].float()
            target = torch.from_numpy(np.asarray(tgt)).to(bm.device)
            token_lp = (torch.log_softmax(picked, -1).gather(1, target[:, None])[:, 0]).double()
            miss = (picked.argmax(-1) != target).double()
            sums = torch.zeros((2, len(part)), dtype=torch.float64, device=bm.device)
            sums[0].index_add_(0, owner, token_lp)
            sums[1].index_add_(0, owner, miss)
            sums = sums.cpu().numpy()
            lp[s : s + len(part)] = sums[0]
            gr[s : s + len(part)] = sums[1] == 0
    return lp, gr


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--samples", type=int, default=8, help="samples per demo task")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    torch.manual_seed(0)
    bm = models.load(api.DEMO.model, device="cpu")
    tasks = [load_task(spec.split("#")[0], bm.tokenizer, bm.eos_token_id, samples=args.samples,
                       ppl_window=api.DEMO.ppl_window) for spec in api.DEMO.tasks]
    n = bm.num_blocks
    analysis = Path(args.run) / "cross_dataset_analysis.json"
    width = api.DEMO.beam_width
    if analysis.exists():
        singles = [c for c in json.loads(analysis.read_text())["candidates"] if len(c["removed"]) == 1]
        beam = [tuple(c["removed"]) for c in singles[:width]]
        source = str(analysis)
    else:
        beam = [(16,), (15,)][:width]
        source = "default"
    children = sorted({tuple(sorted(p + (b,))) for p in beam for b in range(n) if b not in p})
    keep = np.ones((len(children), n), dtype=bool)
    for i, c in enumerate(children):
        keep[i, list(c)] = False
    print(f"beam step: children of {beam} ({source}): {len(children)} candidates x {len(tasks)} tasks")

    engine = Engine(bm)
    engine.packing_limit()  # the one-off packing self-check is not part of the step
    t0 = time.perf_counter()
    engine_out = [engine.score(t.requests, keep, kl=needs_dense(t)) for t in tasks]
    t_engine = time.perf_counter() - t0

    t0 = time.perf_counter()
    naive_out = [[naive_scores(bm, t.requests, c) for c in children] for t in tasks]
    t_naive = time.perf_counter() - t0

    for t, e, nv in zip(tasks, engine_out, naive_out):
        lp = np.stack([x[0] for x in nv])
        gr = np.stack([x[1] for x in nv])
        np.testing.assert_allclose(e.logprob, lp, rtol=1e-4, atol=1e-3, err_msg=t.name)
        if t.kind == "multiple_choice":  # accuracy counts exactly equal (log-probs checked above for every kind)
            assert (t.value(t.per_sample(e.logprob, e.greedy)) == t.value(t.per_sample(lp, gr))).all()
    rows = sum(e.work.block_rows for e in engine_out)
    naive_rows = sum(e.work.naive_block_rows for e in engine_out)
    tokens = sum(e.work.block_tokens for e in engine_out)
    naive_tokens = sum(e.work.naive_block_tokens for e in engine_out)
    result = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "candidates": len(children),
        "tasks": [t.name for t in tasks],
        "samples_per_task": args.samples,
        "naive_seconds": round(t_naive, 2),
        "engine_seconds": round(t_engine, 2),
        "speedup": round(t_naive / t_engine, 2),
        "block_rows": rows,
        "naive_block_rows": naive_rows,
        "block_row_ratio": round(rows / naive_rows, 3),
        "block_token_ratio": round(tokens / naive_tokens, 3),
        "scores_equal": True,
        "engine": engine.info(),  # fused runner or why not, packing limit and its self-check
    }
    print(f"naive loop {t_naive:.1f} s, engine {t_engine:.1f} s: {t_naive / t_engine:.2f}x faster")
    print(f"block-row evaluations {rows:,} vs {naive_rows:,}: {rows / naive_rows:.3f}x; "
          f"block tokens {tokens / naive_tokens:.3f}x")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
