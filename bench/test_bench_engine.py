"""The engine vs the naive loop on a tiny model (pytest-benchmark).

Every single and adjacent-pair removal of a 6-block Llama, scored on 16 random requests: `Engine.score`
(prefix trie, packing, LM head only at scored positions) vs one plain batched forward of the model
with the blocks taken out, per candidate (`bench_engine.naive_scores`). Both must give the same
scores. On the real model and the demo's tasks: `bench_engine.py` (see README.md).
"""

import numpy as np
import pytest

from blockprune.engine import Engine, Request
from bench_engine import naive_scores
from conftest import tiny_model

BLOCKS = 6
SETS = [(b,) for b in range(BLOCKS)] + [(b, b + 1) for b in range(BLOCKS - 1)]  # a beam-like mix: 11 candidates


@pytest.fixture(scope="module")
def workload():
    bm = tiny_model("llama", layers=BLOCKS)
    rng = np.random.default_rng(0)
    requests = []
    for _ in range(16):
        length = int(rng.integers(8, 48))
        requests.append(Request(tuple(int(t) for t in rng.integers(3, 262, size=length)), int(rng.integers(1, length))))
    keep = np.ones((len(SETS), BLOCKS), dtype=bool)
    for i, s in enumerate(SETS):
        keep[i, list(s)] = False
    reference = [naive_scores(bm, requests, s) for s in SETS]
    return bm, requests, keep, reference


@pytest.mark.benchmark(group="engine: 11 candidates x 16 requests, tiny Llama")
def test_engine_score(benchmark, workload):
    bm, requests, keep, reference = workload
    engine = Engine(bm)
    scores = benchmark(engine.score, requests, keep)
    for i, (lp, gr) in enumerate(reference):
        np.testing.assert_allclose(scores.logprob[i], lp, rtol=1e-4, atol=1e-3)
        np.testing.assert_array_equal(scores.greedy[i], gr)


@pytest.mark.benchmark(group="engine: 11 candidates x 16 requests, tiny Llama")
def test_naive_loop(benchmark, workload):
    bm, requests, _, reference = workload
    out = benchmark(lambda: [naive_scores(bm, requests, s) for s in SETS])
    np.testing.assert_allclose(np.array([lp for lp, _ in out]), np.array([lp for lp, _ in reference]))
