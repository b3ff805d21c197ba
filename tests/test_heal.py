"""Healing (blockprune.healing.heal): the solve, the statistics, and healed candidates scored by the engine
against the independent reference, a copy with the maps folded in and the blocks deleted."""

import copy

import numpy as np
import pytest
import torch

from blockprune.healing import heal
from blockprune import models
from blockprune.engine import Engine
from conftest import tiny_model
from reference import kl_against, naive_scores, pruned
from test_engine import masks_for, random_requests


def test_solve_matches_lstsq_and_a_hand_case():
    # hand case: M = diag(1, 2) stacked on zeros; R = [[3, 0], [0, 4], [0, 0]] -> T = diag(3, 2)
    m = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    r = np.array([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(heal.solve(m.T @ m, m.T @ r, 0.0), [[3.0, 0.0], [0.0, 2.0]], atol=1e-12)
    # ridge: (MᵀM + λI)⁻¹MᵀR with λ = ridge * trace/d = 0.5 * 5/2 = 1.25 -> diag(3/2.25, 8/5.25)
    np.testing.assert_allclose(heal.solve(m.T @ m, m.T @ r, 0.5), [[3 / 2.25, 0.0], [0.0, 8 / 5.25]], atol=1e-12)
    rng = np.random.default_rng(0)
    m, r = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    want = np.linalg.lstsq(m, r, rcond=None)[0]
    np.testing.assert_allclose(heal.solve(m.T @ m, m.T @ r, 0.0), want, rtol=1e-9, atol=1e-9)


def test_codes_by_hand():
    keep = np.array([[1, 0, 0, 1, 0], [0, 1, 1, 0, 1], [1, 1, 1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(heal.codes_of(keep), [[2, -1, -1, 1, -1], [-1, 0, 1, -1, 0], [0, 0, 0, 0, 0]])


def _windows(rng, n, length, vocab=262):
    return [tuple(int(t) for t in rng.integers(3, vocab, size=length)) for _ in range(n)]


@torch.inference_mode()
def _reference_maps(bm, windows, runs, skip=1):
    """T per (block, n) from activations collected by hooks on the HF model's own forward,
    solved by numpy's lstsq (no ridge): an independent route to the same least squares."""
    outs, projs = {}, {}
    hooks = []
    for i, block in enumerate(bm.blocks):
        hooks.append(block.register_forward_hook(lambda m, a, o, i=i: outs.setdefault(i, []).append(
            (o[0] if isinstance(o, tuple) else o)[:, skip:].reshape(-1, o[0].shape[-1] if isinstance(o, tuple) else o.shape[-1]))))
        proj = heal.projection(block)[1]
        hooks.append(proj.register_forward_hook(lambda m, a, o, i=i: projs.setdefault(i, []).append(
            o[:, skip:].reshape(-1, o.shape[-1]))))
    for w in windows:
        bm.model(input_ids=torch.tensor([w]), use_cache=False)
    for h in hooks:
        h.remove()
    maps = {}
    for block, n in runs:
        mm = torch.cat(projs[block]).double().numpy()
        y = torch.cat(outs[block]).double().numpy() - mm
        target = torch.cat(outs[block + n]).double().numpy()
        maps[(block, n)] = np.linalg.lstsq(mm, target - y, rcond=None)[0]
    return maps


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_statistics_give_the_least_squares_of_the_hf_forward(arch):
    bm = tiny_model(arch, layers=6)
    rng = np.random.default_rng(0)
    windows = _windows(rng, 12, 20)  # 12 x 19 = 228 tokens for a 48-wide map
    healing = heal.Healing.fit(bm, windows, max_run=3, ridge=0.0, batch_tokens=64)
    assert healing.stats.tokens == 12 * 19
    want = _reference_maps(bm, windows, [(0, 1), (1, 3), (3, 2), (4, 1)])
    for (block, n), t in want.items():
        got = healing.map(block, n).cpu().numpy()  # float32 products per batch: ~1e-6 of the map's size
        assert np.linalg.norm(got - t) / np.linalg.norm(t) < 1e-4, (block, n)
    assert not healing.can_heal(1, 4)  # longer than max_run: no statistics
    with pytest.raises(heal.HealError, match="at most 3"):
        healing.codes(masks_for([(1, 2, 3, 4)], 6))


def _folded_copy(bm, healing, removed):
    """A copy whose blocks multiply their projection's output by T (a forward hook: not the fold
    of the weights that the engine and the export use)."""
    pm = copy.deepcopy(bm)
    for block, t in healing.maps_for(removed).items():
        proj = heal.projection(pm.blocks[block])[1]
        proj.register_forward_hook(lambda m, a, o, t=t: (o.double() @ t).to(o.dtype))
    return pm


def test_fold_into_equals_multiplying_the_output():
    for arch in ("llama", "gpt2"):
        bm = tiny_model(arch, layers=4)
        healing = heal.Healing.fit(bm, _windows(np.random.default_rng(5), 8, 16), max_run=2)
        removed = (2, 3)
        folded = copy.deepcopy(bm)
        heal.fold_into(folded, healing.maps_for(removed))
        hooked = _folded_copy(bm, healing, removed)
        ids = torch.tensor([_windows(np.random.default_rng(6), 1, 12)[0]])
        with torch.inference_mode():
            a = models.remove_blocks(folded, removed).model(input_ids=ids).logits
            b = models.remove_blocks(hooked, removed).model(input_ids=ids).logits
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_healed_candidates_match_the_folded_pruned_model(arch):
    bm = tiny_model(arch, layers=6)
    rng = np.random.default_rng(1)
    healing = heal.Healing.fit(bm, _windows(rng, 16, 24), max_run=3, ridge=1e-3)
    reqs = random_requests(rng, 5)
    sets = [(), (0,), (5,), (1, 2), (2, 4), (0, 3, 5), (2, 3, 4), (1,), (1, 3)]
    keep = masks_for(sets, 6)
    healed = Engine(bm, heal=healing).score(reqs, keep, kl=True)
    plain = Engine(bm).score(reqs, keep)
    differs = 0
    for c, removed in enumerate(sets):
        pm = _folded_copy(bm, healing, removed)
        lp, gr = naive_scores(pm, reqs, removed)
        np.testing.assert_allclose(healed.logprob[c], lp, rtol=1e-4, atol=1e-4)
        klr = kl_against(bm, pruned(pm, removed), reqs)
        np.testing.assert_allclose(healed.kl[c], klr, rtol=1e-4, atol=1e-5)
        differs += not np.allclose(healed.logprob[c], plain.logprob[c], rtol=1e-4, atol=1e-4)
    # every set with a run after a kept block heals (all but (), (0,)): the healed scores are not plain
    assert differs == len(sets) - 2
    np.testing.assert_allclose(healed.logprob[:2], plain.logprob[:2], rtol=1e-5, atol=1e-5)


def test_gemma_post_feedforward_norm_stays_plain():
    bm = tiny_model("gemma3", layers=4)
    rng = np.random.default_rng(2)
    healing = heal.Healing.fit(bm, _windows(rng, 8, 16), max_run=2)
    assert set(healing.unfoldable) == {0, 1, 2, 3}
    assert "norm or scale" in healing.unfoldable[1]
    reqs = random_requests(rng, 3)
    keep = masks_for([(2,), (1, 2)], 4)
    np.testing.assert_array_equal(healing.codes(keep), heal.plain_codes(keep))
    healed = Engine(bm, heal=healing).score(reqs, keep)
    plain = Engine(bm).score(reqs, keep)
    np.testing.assert_allclose(healed.logprob, plain.logprob, rtol=1e-6, atol=1e-6)
    assert all(not r["healed"] for r in healing.runs((1, 2)))


def test_state_reuse_keeps_healed_and_plain_apart():
    """A healed engine's stored states are keyed by codes: a candidate whose prefix heals differently
    never starts from another's states."""
    bm = tiny_model("llama", layers=6)
    rng = np.random.default_rng(3)
    healing = heal.Healing.fit(bm, _windows(rng, 16, 24), max_run=3)
    reqs = random_requests(rng, 4)
    engine = Engine(bm, heal=healing)
    first = engine.score(reqs, masks_for([(2,), (4,)], 6))  # stores states under block 1 healed for 1
    second = engine.score(reqs, masks_for([(2, 3), (4, 5)], 6))  # block 1 now heals 2: must not reuse
    fresh = Engine(bm, heal=healing, reuse_bytes=0).score(reqs, masks_for([(2, 3), (4, 5)], 6))
    np.testing.assert_allclose(second.logprob, fresh.logprob, rtol=1e-6, atol=1e-6)
    assert second.work.reused_block_rows > 0  # (4, 5) reused (4,)'s prefix up to block 3
    assert first.logprob.shape == (2, 4)


def test_the_real_model_healed_equals_its_folded_pruned_copy(smollm2):
    """SmolLM2-135M: maps fitted on 40 Hamlet windows (2,520 tokens, the 4-per-dimension floor is
    2,304), candidates scored healed by the engine against plain transformers on the copy with the
    maps folded in by a forward hook and the blocks deleted; and the healing helps on held-out windows."""
    from blockprune.tasks import load_task

    bm = smollm2
    text = load_task("kl:shakespeare/hamlet", bm.tokenizer, bm.eos_token_id, None, 0, 64)
    windows = [tuple(r.tokens) for r in text.requests[:40]]
    healing = heal.Healing.fit(bm, windows, max_run=2)
    held = text.requests[100:104]
    sets = [(17,), (17, 18)]
    healed = Engine(bm, heal=healing).score(held, masks_for(sets, bm.num_blocks), kl=True)
    plain = Engine(bm).score(held, masks_for(sets, bm.num_blocks), kl=True)
    for c, removed in enumerate(sets):
        pm = _folded_copy(bm, healing, removed)
        lp, _ = naive_scores(pm, held, removed)
        np.testing.assert_allclose(healed.logprob[c], lp, rtol=1e-4)
        assert healed.kl[c].sum() < plain.kl[c].sum()  # the repair repairs, on windows it never saw
