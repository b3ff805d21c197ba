"""Host synchronisations of one demo-sized `Engine.score` call on (fake) CUDA, counted on CPU.

The demo's shape on SmolLM2-135M's config (30 blocks, hidden 576, vocabulary 49152; random
weights, none needed): a beam step of 2 parents x their one-block children (58 candidates) on
16 KL windows of 64 tokens and 30 four-choice questions, scored in one call with KL. Under
tests/fakecuda.py's mode every value read, device-to-host copy and host-to-device copy of pageable
memory is counted (the CPU build cannot pin, so uploads count as pageable: an upper bound).

    .venv/bin/python bench/sync_count.py            # this tree
    PYTHONPATH=/path/to/old/package .venv/bin/python bench/sync_count.py   # another version

Prints one JSON line: syncs, passes (candidate group x row chunk), syncs by kind and by line.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("BLOCKPRUNE_KERNELS", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
import transformers  # noqa: E402

from blockprune import models  # noqa: E402
from blockprune.engine import Engine  # noqa: E402
from blockprune.tasks.request import Request  # noqa: E402
from fakecuda import fake_cuda  # noqa: E402


class Tok:
    eos_token_id = 2


def demo_step() -> tuple[list[Request], np.ndarray]:
    rng = np.random.default_rng(0)
    reqs = [Request(tuple(int(t) for t in rng.integers(3, 49152, 64)), 1) for _ in range(16)]
    for _ in range(30):
        ctx = tuple(int(t) for t in rng.integers(3, 49152, 40))
        reqs += [Request(ctx + tuple(int(t) for t in rng.integers(3, 49152, 3)), len(ctx)) for _ in range(4)]
    keep = []
    for parent in (17, 19):
        for child in range(30):
            if child != parent:
                m = np.ones(30, dtype=bool)
                m[[parent, child]] = False
                keep.append(m)
    return reqs, np.array(keep[:58])


def main() -> None:
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                   tie_word_embeddings=True, attn_implementation="eager")
    reqs, keep = demo_step()
    passes = []
    original = Engine._score_rows

    def counted(self, *args, **kwargs):
        passes.append(1)
        return original(self, *args, **kwargs)

    Engine._score_rows = counted
    with fake_cuda(free_bytes=80 * 2**30) as fc:
        bm = models.wrap(fc.model(cfg), Tok(), "smollm2-shaped")
        with fc.syncs():
            eng = Engine(bm, fused=False)
            eng.packing_limit()
        passes.clear()
        with fc.syncs() as syncs:
            eng.score(reqs, keep, kl=True)
    print(json.dumps({"syncs": syncs.count(), "passes": len(passes), "candidates": len(keep), "requests": len(reqs),
                      "by_kind": Counter(k for k, _ in syncs.events),
                      "by_line": Counter(f"{k} {w}" for k, w in syncs.events).most_common(8)}))


if __name__ == "__main__":
    main()
