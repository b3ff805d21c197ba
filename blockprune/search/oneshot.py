"""One-shot block scores from the dense model's hidden states (baselines for the search).

* block influence (ShortGPT, Men et al. 2024): BI_l = 1 - cos(x_l, x_{l+1}) averaged over tokens,
  where x_l is the input of block l. Removing the k blocks with the lowest BI is the baseline.
* angular distance (Gromov et al. 2024): d(l, n) = arccos(cos(x_l, x_{l+n})) / pi averaged over
  tokens; the baseline for k removes the k consecutive blocks l..l+k-1 with the smallest d(l, k).

Both need one dense pass over the tasks' token rows (right-padded; with a causal mask the valid
positions never see padding, and only valid positions are averaged). Nothing is re-implemented per
architecture: the blocks run through `BlockModel.prelude` / `run_block` like in the engine.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

METHODS = ("block-influence", "angular")


@torch.inference_mode()
def hidden_distances(bm, tasks: Sequence, max_span: int, rows_per_task: int = 32, batch: int = 8) -> dict:
    """{'influence': [L] BI per block, 'angular': [L, max_span] d(l, n) for n = 1..max_span (nan
    where l + n > L)} from up to `rows_per_task` requests of every task."""
    num_blocks = bm.num_blocks
    cos_sum = np.zeros(num_blocks)
    ang_sum = np.zeros((num_blocks, max_span))
    count = 0
    requests = [r for t in tasks for r in t.requests[:rows_per_task]]
    pad = bm.eos_token_id or 0
    for i in range(0, len(requests), batch):
        part = requests[i : i + batch]
        length = max(len(r.tokens) for r in part)
        ids = torch.full((len(part), length), pad, dtype=torch.long)
        valid = torch.zeros((len(part), length), dtype=torch.bool)
        for j, r in enumerate(part):
            ids[j, : len(r.tokens)] = torch.tensor(r.tokens)
            valid[j, : len(r.tokens)] = True
        prelude = bm.prelude(ids)
        rows = torch.arange(len(part), device=bm.device)
        valid = valid.to(bm.device)
        states = [prelude.hidden.float()]
        h = prelude.hidden
        for layer in range(num_blocks):
            h = bm.run_block(layer, h, prelude, rows)
            states.append(h.float())
        for layer in range(num_blocks):
            for n in range(1, max_span + 1):
                if layer + n > num_blocks:
                    break
                cos = torch.nn.functional.cosine_similarity(states[layer], states[layer + n], dim=-1)[valid]
                cos = cos.clamp(-1, 1).double()
                if n == 1:
                    cos_sum[layer] += cos.sum().item()
                ang_sum[layer, n - 1] += (torch.arccos(cos) / math.pi).sum().item()
        count += int(valid.sum())
    influence = 1.0 - cos_sum / count
    angular = ang_sum / count
    for layer in range(num_blocks):
        angular[layer, num_blocks - layer:] = np.nan
    return {"influence": influence, "angular": angular}


def sets_for(method: str, bm, tasks: Sequence, allowed: Sequence[int], k_max: int) -> list[tuple[int, ...]]:
    """One removal set per size 1..k_max (fewer when no run of k allowed consecutive blocks exists)."""
    dist = hidden_distances(bm, tasks, k_max)
    allowed = sorted(allowed)
    if method == "block-influence":
        order = sorted(allowed, key=lambda b: (dist["influence"][b], b))
        return [tuple(sorted(order[:k])) for k in range(1, k_max + 1)]
    if method == "angular":
        ok = set(allowed)
        sets = []
        for k in range(1, k_max + 1):
            starts = [l for l in range(bm.num_blocks - k + 1) if all(b in ok for b in range(l, l + k))]
            if not starts:
                break
            best = min(starts, key=lambda l: (dist["angular"][l, k - 1], l))
            sets.append(tuple(range(best, best + k)))
        return sets
    raise ValueError(f"unknown one-shot method {method!r}")
