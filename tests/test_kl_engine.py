"""KL to the dense model from the engine against plain forwards of physically pruned copies."""

import numpy as np
import pytest

from blockprune.engine import Engine
from conftest import tiny_model
from reference import naive_kl
from test_engine import masks_for, random_requests


@pytest.mark.parametrize("arch", ["llama", "gemma3"])  # gemma3: final-logit softcap
def test_kl_matches_full_logits(arch):
    bm = tiny_model(arch, layers=5)
    reqs = random_requests(np.random.default_rng(3), 4)
    sets = [(0,), (4,), (1, 2), (0, 3, 4)]  # dense is not among them: the engine adds its path
    res = Engine(bm).score(reqs, masks_for(sets, 5), kl=True)
    plain = Engine(bm).score(reqs, masks_for(sets, 5))
    np.testing.assert_array_equal(res.logprob, plain.logprob)  # the KL head gives the same log-probs
    for c, s in enumerate(sets):
        np.testing.assert_allclose(res.kl[c], naive_kl(bm, reqs, s), rtol=1e-4, atol=1e-6, err_msg=str(s))
    assert (res.kl > 0).all()


def test_kl_with_candidate_groups_and_dense_in_the_set():
    bm = tiny_model("llama", layers=5)
    reqs = random_requests(np.random.default_rng(4), 3)
    sets = [(), (0,), (2,), (1, 3), (4,), (0, 1)]
    engine = Engine(bm, budget_bytes=1)  # one candidate per group: the dense path joins each group
    res = engine.score(reqs, masks_for(sets, 5), kl=True)
    # dense vs itself against the reference's own full-logit KL (the engine writes an exact 0 there;
    # the rows beside it in each group must still get their own KL, which a zero over the group breaks)
    np.testing.assert_allclose(res.kl[0], naive_kl(bm, reqs, ()), atol=1e-6)
    for c, s in enumerate(sets[1:], 1):
        np.testing.assert_allclose(res.kl[c], naive_kl(bm, reqs, s), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_engine_kl_with_the_triton_kernel_matches_torch(monkeypatch, arch):
    """The engine's KL through the Triton kernels (interpreted on CPU) equals the torch reference:
    Llama through the scoring head and the dense expectation, Gemma 3 (softcap) through the KL head."""
    bm = tiny_model(arch, layers=3)
    reqs = random_requests(np.random.default_rng(5), 2, hi=12)
    keep = masks_for([(0,), (2,), (1, 2)], 3)
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")
    ref = Engine(bm).score(reqs, keep, kl=True)
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "triton")
    out = Engine(bm).score(reqs, keep, kl=True)
    np.testing.assert_allclose(out.kl, ref.kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.logprob, ref.logprob, rtol=1e-5, atol=1e-5)
