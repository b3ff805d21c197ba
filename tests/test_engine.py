"""The engine against a naive evaluation: a copy of the model with the blocks physically deleted."""

import numpy as np
import pytest

from blockprune import models
from blockprune.engine import packing
from blockprune.engine import Engine, Request, trie_block_rows
from conftest import tiny_model
from reference import naive_scores

ARCHS = ["llama", "qwen3", "gpt2", "gemma3"]


def random_requests(rng, n, vocab=262, lo=3, hi=40):
    reqs = []
    for _ in range(n):
        length = int(rng.integers(lo, hi))
        toks = tuple(int(t) for t in rng.integers(3, vocab, size=length))
        reqs.append(Request(toks, int(rng.integers(1, length))))
    return reqs


def masks_for(sets, num_blocks):
    keep = np.ones((len(sets), num_blocks), dtype=bool)
    for i, s in enumerate(sets):
        keep[i, list(s)] = False
    return keep


@pytest.mark.parametrize("arch", ARCHS)
def test_every_candidate_matches_physical_removal(arch):
    bm = tiny_model(arch, layers=6)
    rng = np.random.default_rng(1)
    reqs = random_requests(rng, 5)
    sets = [(), (0,), (5,), (1, 2), (2, 4), (0, 3, 5), (1, 2, 3, 4)]
    scores = Engine(bm).score(reqs, masks_for(sets, 6))
    for c, s in enumerate(sets):
        lp, gr = naive_scores(bm, reqs, s)
        np.testing.assert_allclose(scores.logprob[c], lp, rtol=1e-4, atol=1e-5, err_msg=f"{arch} removed {s}")
        assert (scores.greedy[c] == gr).all(), (arch, s)


def test_sliding_window_layer_types_follow_the_kept_blocks():
    # Without filtering layer_types, the pruned copy would put sliding windows on the wrong blocks.
    bm = tiny_model("qwen3", layers=6)
    pm = models.remove_blocks(bm, [0, 1])
    assert pm.model.config.layer_types == bm.model.config.layer_types[2:]
    assert pm.model.config.num_hidden_layers == 4
    assert [blk.self_attn.layer_idx for blk in pm.blocks] == [0, 1, 2, 3]


def test_order_of_candidates_and_requests_changes_nothing():
    bm = tiny_model("llama", layers=6)
    rng = np.random.default_rng(2)
    reqs = random_requests(rng, 6)
    sets = [(), (1,), (1, 3), (3,), (0, 5), (2, 3, 4)]
    keep = masks_for(sets, 6)
    ref = Engine(bm).score(reqs, keep)
    pc, pr = rng.permutation(len(sets)), rng.permutation(len(reqs))
    out = Engine(bm).score([reqs[i] for i in pr], keep[pc])
    np.testing.assert_allclose(out.logprob, ref.logprob[np.ix_(pc, pr)], rtol=1e-6, atol=1e-6)
    assert (out.greedy == ref.greedy[np.ix_(pc, pr)]).all()


def test_keep_all_equals_dense_model():
    bm = tiny_model("llama", layers=4)
    reqs = random_requests(np.random.default_rng(3), 4)
    scores = Engine(bm).score(reqs, np.ones((1, 4), dtype=bool))
    lp, gr = naive_scores(bm, reqs, ())
    np.testing.assert_allclose(scores.logprob[0], lp, rtol=1e-5)
    assert (scores.greedy[0] == gr).all()


def test_tiny_budget_splits_work_without_changing_results():
    bm = tiny_model("llama", layers=6)
    reqs = random_requests(np.random.default_rng(4), 7)
    sets = [(), (0,), (1,), (2,), (3,), (0, 1), (4, 5)]
    keep = masks_for(sets, 6)
    big = Engine(bm).score(reqs, keep)
    small_engine = Engine(bm, budget_bytes=200_000, max_batch=2)
    group, chunks = small_engine.plan(packing.pack(reqs, None), len(sets))
    assert group < len(sets) and len(chunks) > 1  # the budget really forces splitting
    small = small_engine.score(reqs, keep)
    np.testing.assert_allclose(small.logprob, big.logprob, rtol=1e-5, atol=1e-5)
    assert (small.greedy == big.greedy).all()


def test_work_is_shared_across_prefixes():
    bm = tiny_model("llama", layers=6)
    reqs = random_requests(np.random.default_rng(5), 3)
    sets = [(b,) for b in range(6)]  # sensitivity: child j shares blocks 0..j-1 with the others
    keep = masks_for(sets, 6)
    scores = Engine(bm).score(reqs, keep)
    # by hand: at block l, the distinct kept prefixes are "nothing removed yet" (if some candidate
    # removes a later block) plus one per candidate that removed an earlier block.
    per_request = sum((1 if l < 5 else 0) + l for l in range(6))
    assert trie_block_rows(keep) == per_request == 20
    assert scores.work.block_rows == per_request * len(reqs)
    assert scores.work.naive_block_rows == 6 * 5 * len(reqs)
    assert scores.work.head_positions == 6 * sum(r.num_scored for r in reqs)


def test_bad_masks_are_rejected():
    bm = tiny_model("llama", layers=4)
    with pytest.raises(ValueError):
        Engine(bm).score(random_requests(np.random.default_rng(0), 1), np.ones((1, 3), dtype=bool))
    with pytest.raises(ValueError):
        Request((5, 6, 7), 0)


def shared_context_requests(rng, samples=4, choices=3, vocab=262):
    reqs = []
    for _ in range(samples):
        ctx = tuple(int(t) for t in rng.integers(3, vocab, size=int(rng.integers(2, 12))))
        for _ in range(choices):
            reqs.append(Request(ctx + tuple(int(t) for t in rng.integers(3, vocab, size=int(rng.integers(1, 5)))), len(ctx)))
    return reqs


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_choices_match_physical_removal(arch):
    bm = tiny_model(arch, layers=5)
    rng = np.random.default_rng(6)
    reqs = shared_context_requests(rng)
    sets = [(), (0,), (2, 3), (1, 4)]
    engine = Engine(bm)
    if arch in ("llama", "gpt2"):  # no sliding window: packing must be on
        assert engine.packing_limit() == engine.max_packed_len
        assert len(packing.pack(reqs, engine.packing_limit())) == 4
    scores = engine.score(reqs, masks_for(sets, 5))
    for c, s in enumerate(sets):
        lp, gr = naive_scores(bm, reqs, s)
        np.testing.assert_allclose(scores.logprob[c], lp, rtol=1e-4, atol=1e-5, err_msg=f"{arch} removed {s}")
        assert (scores.greedy[c] == gr).all(), (arch, s)


def spy_rows(monkeypatch) -> list[list]:
    """The rows of every Engine._score_rows call, in order."""
    calls = []
    original = Engine._score_rows

    def spy(self, rows, *args, **kwargs):
        calls.append(list(rows))
        return original(self, rows, *args, **kwargs)

    monkeypatch.setattr(Engine, "_score_rows", spy)
    return calls


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])  # both sliding_window=5
def test_packed_rows_respect_the_sliding_window(monkeypatch, arch):
    bm = tiny_model(arch, layers=4)
    engine = Engine(bm)
    calls = spy_rows(monkeypatch)
    # packing must be on (else nothing below is checked), capped at the window
    assert engine.packing_limit() == 5, engine.packing_note
    # the self-check compared a really packed row (two choices within the window) with plain rows
    assert [any(r.packed for r in rows) for rows in calls] == [True, False], engine.packing_note
    assert engine.packing_note.startswith("packing on")
    rng = np.random.default_rng(7)
    reqs = shared_context_requests(rng) + [Request((9, 8, 40), 2), Request((9, 8, 41, 42), 2), Request((9, 8, 43), 2)]
    sets = [(), (1,), (0, 3)]
    calls.clear()
    scores = engine.score(reqs, masks_for(sets, 4))
    rows = [row for rows in calls for row in rows]
    assert any(row.packed for row in rows)  # the engine really ran packed rows
    assert all(len(row) <= 5 for row in rows if row.packed)
    for c, s in enumerate(sets):  # and they score what the pruned model scores, one sequence at a time
        lp, gr = naive_scores(bm, reqs, s)
        np.testing.assert_allclose(scores.logprob[c], lp, rtol=1e-4, atol=1e-5, err_msg=f"{arch} removed {s}")
        assert (scores.greedy[c] == gr).all(), (arch, s)


def test_packing_mask_shape_and_visibility():
    reqs = [Request((10, 11, 12, 20, 21), 3), Request((10, 11, 12, 30), 3)]
    (row,) = packing.pack(reqs, 64)
    assert row.tokens == [10, 11, 12, 20, 21, 30] and row.positions == [0, 1, 2, 3, 4, 3]
    m = packing.attention_mask([row], 7, None)[0, 0]
    assert m[5].tolist() == [True, True, True, False, False, True, False]  # 30 sees context + itself
    assert m[4].tolist() == [True, True, True, True, True, False, False]
    assert [p.tolist() for _, p, _ in row.scored] == [[2, 3], [2]]
