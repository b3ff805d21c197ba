"""Batched masked generation (blockprune.engine.decode) against a naive loop, at a beam step's size.

The naive loop is what one writes without blockprune: for each candidate, the model with its
blocks taken out of the block list and `generate()` (greedy, the model's own KV cache), one prompt
at a time, stopping at EOS and the task's stop string. blockprune decodes every (candidate,
prompt) row in one batch (`Engine.generate`). Outputs are asserted equal token for token; printed
are the wall-clock ratio and the block-row evaluations of each. A stronger baseline beside it: per
candidate, one left-padded generate() over all prompts (`naive_batched`; its texts are counted).

    .venv/bin/python bench/bench_generate.py [--task gen:basic_arithmetic/1d1d#30] \
        [--parent 17] [--out bench/results/generate_cpu.json]

The beam step: the children of the parent set (every other block removed beside it), the size of
one step of the demo's beam at k = 2. Run alone: a second heavy process on 2 cores distorts both.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blockprune import models  # noqa: E402
from blockprune.engine import Engine  # noqa: E402
from blockprune.tasks import load_task  # noqa: E402


@torch.inference_mode()
def naive(bm, task, removed) -> tuple[list[list[int]], int, float]:
    """(tokens per prompt, block rows run, seconds of generate()) of one candidate: its pruned
    model (a renumbered copy, models.remove_blocks; the copy is not timed), generate() per prompt."""
    out, rows, seconds = [], 0, 0.0
    kept = bm.num_blocks - len(removed)
    pm = models.remove_blocks(bm, removed)
    if True:
        for s, prompt in enumerate(task.prompts):
            ids = torch.tensor([prompt], device=bm.device)
            t0 = time.perf_counter()
            gen = pm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=task.max_new[s], eos_token_id=task.eos or None,
                                    pad_token_id=bm.eos_token_id or 0, stop_strings=task.until[s] or None,
                                    tokenizer=bm.tokenizer)
            seconds += time.perf_counter() - t0
            toks = gen[0, len(prompt):].tolist()
            steps = len(toks)
            toks = toks[: next((i for i, t in enumerate(toks) if t in task.eos), len(toks))]  # EOS excluded
            out.append(toks)
            rows += kept * steps  # one block row per kept block per forward (prefill counts once)
    return out, rows, seconds


@torch.inference_mode()
def naive_batched(bm, task, removed) -> tuple[list[list[int]], float]:
    """The same candidate with one generate() over all prompts (left-padded, the longest token
    limit, stop strings applied after): the stronger baseline. Padding changes the numerics a
    little, so its texts are counted against blockprune's, not asserted."""
    pm = models.remove_blocks(bm, removed)
    width = max(len(p) for p in task.prompts)
    pad = bm.eos_token_id or 0
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in task.prompts], device=bm.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in task.prompts], device=bm.device)
    t0 = time.perf_counter()
    gen = pm.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max(task.max_new),
                            eos_token_id=task.eos or None, pad_token_id=pad)
    seconds = time.perf_counter() - t0
    out = []
    for s, row in enumerate(gen[:, width:].tolist()):
        row = row[: task.max_new[s]]
        row = row[: next((i for i, t in enumerate(row) if t in task.eos), len(row))]
        out.append(row)
    return out, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="gen:basic_arithmetic/1d1d#30")
    ap.add_argument("--parent", default="17")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    bm = models.load("smollm2-135m", device="cpu")
    task = load_task(args.task, bm.tokenizer, bm.eos_token_id, None, 0, 64)
    parent = tuple(int(b) for b in args.parent.split(",") if b)
    sets = [tuple(sorted(parent + (b,))) for b in range(bm.num_blocks) if b not in parent]
    keep = np.ones((len(sets), bm.num_blocks), dtype=bool)
    for i, s in enumerate(sets):
        keep[i, list(s)] = False
    engine = Engine(bm)
    samples = range(task.n)
    engine.generate([task.prompts[0]], keep[:1], 2, eos=task.eos)  # warm-up
    t0 = time.perf_counter()
    got = engine.generate(task.prompts, keep, task.max_new, eos=task.eos,
                          stop=lambda c, i, toks: any(u in task.tokenizer.decode(toks) for u in task.until[i]))
    t_engine = time.perf_counter() - t0
    want, naive_rows, t_naive = [], 0, 0.0
    naive(bm, task, sets[0])  # warm-up
    for s in sets:
        toks, rows, seconds = naive(bm, task, s)
        want.append(toks)
        naive_rows += rows
        t_naive += seconds
    batched, t_batched = [], 0.0
    naive_batched(bm, task, sets[0])  # warm-up
    for s in sets:
        toks, seconds = naive_batched(bm, task, s)
        batched.append(toks)
        t_batched += seconds
    batched_equal = sum(task.text(got.tokens[c][p], p) == task.text(batched[c][p], p)
                        for c in range(len(sets)) for p in samples)
    texts_equal = sum(task.text(got.tokens[c][p], p) == task.text(want[c][p], p)
                      for c in range(len(sets)) for p in samples)
    total = len(sets) * task.n
    result = {"task": args.task, "candidates": len(sets), "prompts": task.n, "rows": total,
              "parent": list(parent), "seconds_naive": round(t_naive, 2), "seconds_engine": round(t_engine, 2),
              "speedup": round(t_naive / t_engine, 2), "same_text": f"{texts_equal}/{total}",
              "seconds_naive_batched": round(t_batched, 2), "speedup_vs_batched": round(t_batched / t_engine, 2),
              "same_text_batched": f"{batched_equal}/{total}",
              "block_rows_engine": got.block_rows, "block_rows_without_sharing": got.naive_block_rows,
              "block_rows_naive": naive_rows, "steps": got.steps,
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                         f"torch {torch.__version__}"}
    print(json.dumps(result, indent=1))
    assert texts_equal == total, "the batched decoder's outputs differ from generate()'s"
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
