"""Healing at half-block granularity (#32): on `unit_model(bm, "sublayers")` a removed run of
consecutive halves is folded into the output projection of the last kept half before it (its
attention's o_proj after an attention half, its MLP's down_proj after an MLP half), with the same
statistics and solve as blocks. Checked against references built here: the maps against numpy
least squares on hidden states captured by hooks on the HF model's own forward; the folded weights
against the fold written by hand; the engine's healed scores against a copy of the HF model whose
removed halves output zeros and whose kept projections multiply their output by the map (hooks).
Gemma 3's sandwich norms put a norm after each projection: no half folds there, as no block does."""

import copy
import functools

import numpy as np
import pytest
import torch

from blockprune import models
from blockprune.engine import Engine
from blockprune.healing import heal
from conftest import tiny_model
from test_engine import masks_for, random_requests
from reference import half_removed

LAYERS = 6  # 12 units: 2b = block b's attention half, 2b + 1 its MLP half
MAX_RUN = 3
# (last kept unit, run length): after attention halves (0, 2, 4, 8) and MLP halves (1, 3, 7, 9); up to the last unit
RUNS = [(0, 1), (1, 3), (2, 2), (3, 1), (4, 3), (7, 2), (8, 3), (9, 2), (10, 1)]
# removal sets by unit, with the runs' last kept units: [3] after 2 (1a), [3, 4] after 2, [5..7] after 4 (2a),
# [2] after 1 (0m) and [9] after 8 (4a), runs from unit 0 (nothing before them), the last unit, a run of 3
SETS = [(), (0,), (0, 1), (1,), (3,), (3, 4), (5, 6, 7), (2, 9), (0, 1, 6), (11,), (4, 8, 9, 10)]


def _windows(seed, n=12, vocab=262):
    """Calibration windows of different lengths (the fit pads them into batches; the reference runs each alone)."""
    rng = np.random.default_rng(seed)
    return [tuple(int(t) for t in rng.integers(3, vocab, size=int(rng.integers(14, 23)))) for _ in range(n)]


def _hf_blocks(bm):
    return models.find_blocks(bm.model)[1]


def _projection_of_unit(bm, unit):
    """The HF module a unit's fold goes into, found here by the model's own attribute names."""
    block = _hf_blocks(bm)[unit // 2]
    if hasattr(block, "self_attn"):  # Llama, Gemma
        return block.self_attn.o_proj if unit % 2 == 0 else block.mlp.down_proj
    return block.attn.c_proj if unit % 2 == 0 else block.mlp.c_proj  # GPT-2 (Conv1D)


def _projection_name(bm, unit):
    names = {id(m): n for n, m in bm.model.named_modules()}
    return names[id(_projection_of_unit(bm, unit))]


@torch.inference_mode()
def _unit_states(bm, windows, skip=1):
    """Per unit u: (M_u, H_u) over every window's tokens from `skip` on, float64: M_u the output of
    u's projection, H_u the residual stream after unit u. Captured by hooks on the HF model's own
    forward, one window at a time: block b's input X_b (pre-hook), its attention projection's
    output A_b, its MLP projection's output D_b and its output; H_2b = X_b + A_b, H_2b+1 = its output
    (which must be H_2b + D_b: checked)."""
    got: dict = {}
    hooks = []

    def keep(key):
        def save(t):
            got.setdefault(key, []).append(t[0, skip:].double())
        return save

    for b, block in enumerate(_hf_blocks(bm)):
        def pre(_m, args, kwargs, save=keep(("x", b))):
            save(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])
        hooks.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(block.register_forward_hook(lambda _m, _a, o, save=keep(("out", b)):
                                                 save(o[0] if isinstance(o, (tuple, list)) else o)))
        for kind, unit in (("a", 2 * b), ("d", 2 * b + 1)):
            hooks.append(_projection_of_unit(bm, unit).register_forward_hook(
                lambda _m, _a, o, save=keep((kind, b)): save(o)))
    try:
        for w in windows:
            bm.model(input_ids=torch.tensor([w]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    cat = {k: torch.cat(v).numpy() for k, v in got.items()}
    m, h = {}, {}
    for b in range(len(_hf_blocks(bm))):
        x, a, d, out = cat[("x", b)], cat[("a", b)], cat[("d", b)], cat[("out", b)]
        np.testing.assert_allclose(x + a + d, out, rtol=0, atol=1e-4 * np.abs(out).max())  # no norm after either
        m[2 * b], h[2 * b] = a, x + a
        m[2 * b + 1], h[2 * b + 1] = d, out
    return m, h


def _reference_map(m, h, unit, n, ridge):
    """argmin_T ||Y + M T - H_{u+n}||² + λ||T||² with Y = H_u - M, λ = ridge x trace(MᵀM)/d, by
    numpy's lstsq on the problem stacked with sqrt(λ)·I (no normal equations)."""
    mm, target = m[unit], h[unit + n] - (h[unit] - m[unit])
    d = mm.shape[1]
    lam = ridge * float((mm * mm).sum()) / d
    if lam:
        mm = np.vstack([mm, np.sqrt(lam) * np.eye(d)])
        target = np.vstack([target, np.zeros((d, d))])
    return np.linalg.lstsq(mm, target, rcond=None)[0]


@functools.lru_cache(maxsize=None)
def _fit(arch, ridge=heal.DEFAULT_RIDGE, seed=0):
    """(bm, its unit model, the calibration windows, Healing fitted on the unit model); shared, never changed."""
    bm = tiny_model(arch, layers=LAYERS)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # GPT-2's projections have biases, zeros at init: random ones, so their fold counts
        for module in bm.model.modules():
            if isinstance(getattr(module, "bias", None), torch.nn.Parameter) and module.bias.dim() == 1:
                module.bias.copy_(0.02 * torch.randn(module.bias.shape, generator=gen))
    um = models.unit_model(bm, "sublayers")
    windows = _windows(seed, vocab=bm.head.weight.shape[0])
    return bm, um, windows, heal.Healing.fit(um, windows, max_run=MAX_RUN, ridge=ridge, batch_tokens=64)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("ridge", [0.0, heal.DEFAULT_RIDGE])
def test_unit_maps_are_the_least_squares_of_the_hf_forward(arch, ridge):
    bm, um, windows, healing = _fit(arch, ridge)
    assert um.num_blocks == 2 * LAYERS and healing.unfoldable == {}
    assert healing.stats.tokens == sum(len(w) - 1 for w in windows)
    m, h = _unit_states(bm, windows)
    checked = []
    for unit, n in RUNS:
        # the statistics: MᵀM and Mᵀ(H_{u+n} - Y_u), Y_u = H_u - M_u (float32 products per batch: ~1e-7)
        gram, cross = m[unit].T @ m[unit], m[unit].T @ (h[unit + n] - h[unit] + m[unit])
        for got, want in ((healing.stats.gram[unit], gram), (healing.stats.cross[(unit, n)], cross)):
            assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5, (arch, ridge, unit, n)
        # the map. Without a ridge least squares is only as well posed as MᵀM: an attention half's
        # outputs in these random tiny models span few directions (condition numbers 1e8..3e10), where
        # float32 statistics fix T only up to ~1e-9 x cond; the MLP halves' are 1e2..1e6
        cond = np.linalg.cond(gram)
        tol = 1e-4 if ridge else max(1e-4, 1e-8 * cond)
        if tol > 0.05:
            assert unit % 2 == 0, (arch, unit, cond)
            continue
        want = _reference_map(m, h, unit, n, ridge)
        got = healing.map(unit, n).cpu().numpy()
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < tol, (arch, ridge, unit, n, cond)
        checked.append(unit)
    assert len(checked) == len(RUNS) if ridge else set(checked) == {1, 3, 7, 9}
    assert not healing.can_heal(11, 1)  # the last unit has nothing after it
    assert not healing.can_heal(2, MAX_RUN + 1)
    with pytest.raises(heal.HealError, match=f"at most {MAX_RUN}"):
        healing.codes(masks_for([(3, 4, 5, 6)], um.num_blocks))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_run_folds_into_the_projection_of_the_last_kept_unit_before_it(arch):
    bm, um, _, healing = _fit(arch)
    rng = np.random.default_rng(7)
    for unit, n in RUNS:
        module, w, b = healing.folded(unit, n)
        assert module is _projection_of_unit(bm, unit), (unit, n)  # o_proj after 2b, down_proj after 2b + 1
        t = healing.map(unit, n).cpu().numpy()
        w0 = module.weight.detach().double().numpy()
        conv1d = arch == "gpt2"  # Conv1D: y = x W + b, W [in, out]; Linear: y = x Wᵀ (+ b)
        np.testing.assert_allclose(w.double().numpy(), w0 @ t if conv1d else (w0.T @ t).T, rtol=1e-5, atol=1e-6)
        b0 = None if module.bias is None else module.bias.detach().double().numpy()
        assert (b is None) == (b0 is None)
        if b0 is not None:
            np.testing.assert_allclose(b.double().numpy(), b0 @ t, rtol=1e-5, atol=1e-6)
        # and as a function: the folded projection's output is the projection's output times T
        x = rng.normal(size=(5, w0.shape[0] if conv1d else w0.shape[1]))
        w1 = w.double().numpy()
        y0 = (x @ w0 if conv1d else x @ w0.T) + (0 if b0 is None else b0)
        y1 = (x @ w1 if conv1d else x @ w1.T) + (0 if b is None else b.double().numpy())
        np.testing.assert_allclose(y1, y0 @ t, rtol=1e-5, atol=1e-5)
    # fold_into (what the export uses) changes exactly the last kept unit's projection in the HF model
    runs = healing.runs((3, 5, 6, 7, 10))  # after 2 (1a), 4 (2a) and 9 (4m)
    assert [(r["after"], r["blocks"], r["healed"]) for r in runs] == [(2, [3], True), (4, [5, 6, 7], True),
                                                                       (9, [10], True)]
    removed = (2, 5, 6, 7)  # [2] after 1 (0m: down_proj), [5..7] after 4 (2a: o_proj)
    folded = copy.deepcopy(um)
    heal.fold_into(folded, healing.maps_for(removed))
    before, after = bm.model.state_dict(), folded.model.state_dict()
    differ = sorted(k for k in before if not torch.equal(before[k], after[k]))
    want = sorted(f"{_projection_name(bm, u)}.{p}" for u in (1, 4) for p in ("weight", "bias")
                  if getattr(_projection_of_unit(bm, u), p, None) is not None)
    assert differ == want


def test_a_run_from_unit_0_has_nothing_to_fold_into():
    bm, um, _, healing = _fit("llama")
    for removed in ((0,), (0, 1), (0, 1, 2)):
        (run,) = healing.runs(removed)
        assert run["after"] == -1 and not run["healed"] and "\n" not in run["why"]
        assert "nothing before it" in run["why"] or "no block before it" in run["why"]
        assert healing.maps_for(removed) == {}
        keep = masks_for([removed], um.num_blocks)
        np.testing.assert_array_equal(healing.codes(keep), heal.plain_codes(keep))
    assert set(healing.maps_for((0, 1, 6))) == {5}  # the run after 2m still heals
    assert healing.codes(masks_for([(0, 1, 6)], um.num_blocks))[0, 5] == 1


def _hooked_copy(bm, healing, removed):
    """The HF model with the removed halves' modules replaced by zeros and every kept projection
    before a healed run multiplying its output by the run's map (a forward hook, not a fold)."""
    model = half_removed(bm, removed)
    for unit, t in healing.maps_for(removed).items():
        block = models.find_blocks(model)[1][unit // 2]
        proj = (block.self_attn.o_proj if unit % 2 == 0 else block.mlp.down_proj) if hasattr(block, "self_attn") \
            else (block.attn.c_proj if unit % 2 == 0 else block.mlp.c_proj)
        proj.register_forward_hook(lambda _m, _a, o, t=t: (o.double() @ t).to(o.dtype))
    return model


@torch.inference_mode()
def _log_probs(bm, model, reqs):
    """Per request: the scored tokens' log-probabilities [positions, vocab] from a plain HF forward."""
    out = []
    for r in reqs:
        logits = model(input_ids=torch.tensor([r.tokens]), use_cache=False).logits[0].double()
        if bm.logit_softcap and not getattr(model.config, "final_logit_softcapping", None):
            logits = torch.tanh(logits / bm.logit_softcap) * bm.logit_softcap
        out.append(torch.log_softmax(logits, -1)[r.score_from - 1: -1])
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_healed_halves_score_as_a_hooked_half_removed_copy(arch):
    bm, um, _, healing = _fit(arch)
    reqs = random_requests(np.random.default_rng(2), 4)
    keep = masks_for(SETS, um.num_blocks)
    healed = Engine(um, heal=healing).score(reqs, keep, kl=True)
    plain = Engine(um).score(reqs, keep)
    dense = _log_probs(bm, bm.model, reqs)
    for c, removed in enumerate(SETS):
        got = _log_probs(bm, _hooked_copy(bm, healing, removed), reqs)
        lp = [g[torch.arange(len(g)), torch.tensor(r.tokens[r.score_from:])].sum().item() for g, r in zip(got, reqs)]
        kl = [(d.exp() * (d - g)).sum().item() for d, g in zip(dense, got)]
        np.testing.assert_allclose(healed.logprob[c], lp, rtol=1e-4, atol=1e-4, err_msg=str(removed))
        np.testing.assert_allclose(healed.kl[c], kl, rtol=1e-4, atol=1e-5, err_msg=str(removed))
        # a set heals exactly when one of its runs has a kept unit before it (all but (), (0,), (0, 1))
        same = np.allclose(healed.logprob[c], plain.logprob[c], rtol=1e-4, atol=1e-4)
        assert same == (removed in ((), (0,), (0, 1))), removed


def test_gemma3_halves_stay_plain_as_its_blocks_do():
    """Gemma 3 normalises each half's output after its projection (post_attention_layernorm,
    post_feedforward_layernorm): `Y + M T` is no fold of o_proj / down_proj, so every half stays
    plain with a one-line reason, as every block does, and healed scores are the plain ones."""
    bm = tiny_model("gemma3", layers=LAYERS)
    um = models.unit_model(bm, "sublayers")
    windows = _windows(3)
    blocks = heal.Healing.fit(bm, windows, max_run=2)
    healing = heal.Healing.fit(um, windows, max_run=MAX_RUN)
    assert set(blocks.unfoldable) == set(range(LAYERS))
    assert set(healing.unfoldable) == set(range(2 * LAYERS))
    for unit, why in healing.unfoldable.items():
        name = "self_attn.o_proj" if unit % 2 == 0 else "mlp.down_proj"
        assert why.startswith(f"its {name} output") and "norm or scale" in why and "\n" not in why, why
    assert healing.stats.gram == {} and healing.stats.cross == {} and healing.maps_for((3, 4)) == {}
    for removed in ((3,), (3, 4), (5, 6, 7), (2, 9)):
        runs = healing.runs(removed)
        assert all(not r["healed"] and r["why"] == healing.unfoldable[r["after"]] for r in runs), runs
    # independently: the post-norm undoes a scale of o_proj's output (RMSNorm), so it cannot reach the residual
    block = _hf_blocks(bm)[2]
    seen = {}
    post = block.post_attention_layernorm.register_forward_hook(lambda _m, _a, o: seen.setdefault("d", []).append(o))
    scale = block.self_attn.o_proj.register_forward_hook(lambda _m, _a, o: o * 2)
    ids = torch.tensor([windows[0]])
    with torch.inference_mode():
        bm.model(input_ids=ids, use_cache=False)
        scale.remove()
        bm.model(input_ids=ids, use_cache=False)
    post.remove()
    doubled, once = seen["d"]
    # passed on as it is, doubling A would double the half's contribution; normalised, it stays (up to eps)
    assert (doubled - once).norm() < 0.05 * once.norm()
    # the engine: healed = plain = the half-removed copy
    sets = [(3,), (3, 4), (5, 6, 7), (2, 9)]
    keep = masks_for(sets, um.num_blocks)
    np.testing.assert_array_equal(healing.codes(keep), heal.plain_codes(keep))
    reqs = random_requests(np.random.default_rng(4), 3)
    healed = Engine(um, heal=healing).score(reqs, keep).logprob
    np.testing.assert_allclose(healed, Engine(um).score(reqs, keep).logprob, rtol=1e-6, atol=1e-6)
    for c, removed in enumerate(sets):
        got = _log_probs(bm, half_removed(bm, removed), reqs)
        lp = [g[torch.arange(len(g)), torch.tensor(r.tokens[r.score_from:])].sum().item() for g, r in zip(got, reqs)]
        np.testing.assert_allclose(healed[c], lp, rtol=1e-4, atol=2e-4)
