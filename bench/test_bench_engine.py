"""The engine vs the naive loop on a tiny model (pytest-benchmark).

Every single and adjacent-pair removal of a 6-block Llama, scored on 16 random requests: `Engine.score`
(prefix trie, packing, LM head only at scored positions) vs one plain batched forward of the model
with the blocks taken out, per candidate (`bench_engine.naive_scores`). Each is checked against the
independent reference of the test suite (`tests/reference.py`: a physically pruned copy per
candidate, one unpadded forward per request), never against the other. On the real model and the
demo's tasks: `bench_engine.py` (see README.md).
"""

import numpy as np
import pytest

from blockprune.engine import Engine, Request
from bench_engine import naive_scores
from conftest import tiny_model
from reference import naive_scores as reference_scores

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
    reference = [reference_scores(bm, requests, s) for s in SETS]
    return bm, requests, keep, reference


def _same_as_reference(lps, greedys, reference):
    for i, (lp, gr) in enumerate(reference):
        np.testing.assert_allclose(lps[i], lp, rtol=1e-4, atol=1e-3, err_msg=f"candidate {SETS[i]}")
        np.testing.assert_array_equal(greedys[i], gr, err_msg=f"candidate {SETS[i]}")


@pytest.mark.benchmark(group="engine: 11 candidates x 16 requests, tiny Llama")
def test_engine_score(benchmark, workload):
    bm, requests, keep, reference = workload
    scores = benchmark(Engine(bm).score, requests, keep)
    _same_as_reference(scores.logprob, scores.greedy, reference)


@pytest.mark.benchmark(group="engine: 11 candidates x 16 requests, tiny Llama")
def test_naive_loop(benchmark, workload):
    bm, requests, _, reference = workload
    out = benchmark(lambda: [naive_scores(bm, requests, s) for s in SETS])
    _same_as_reference([lp for lp, _ in out], [gr for _, gr in out], reference)
