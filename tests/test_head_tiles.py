"""The head kernels' position tiles (#33 item 5) at odd shapes, against float64 computed here.

On tensor cores a program owns 128 positions (the LM-head weight is read once per 128 positions, not
per 64). Shapes around the tiles: 1, 63, 65, 129 and 257 positions (257 = 2 x 128 + 1, the small
analogue of 4097), vocabularies that are no multiple of a vocabulary tile, hidden sizes that are odd
multiples of 16 or no multiple of it, targets on the first, last and tile-edge columns. Each case
runs with the interpreter's own tiles and with the card's bf16/fp16 tiles (128 x 128 x 64, KL
128 x 64 x 32) forced on the exact fp32 path; on a CUDA machine the card tiles run compiled on bf16.
The reference is float64 logits of the same (upcast) inputs, not the torch reference op."""

import pytest
import torch
import triton
from blockprune.kernels import hopper, kl_head_triton, scoring_head_triton
from blockprune.kernels.kl_head_triton import kl_head_triton as kl_head
from blockprune.kernels.scoring_head_triton import head_settings
from blockprune.kernels.scoring_head_triton import scoring_head_triton as scoring_head
from conftest import TRITON
from test_kernels import full_logits

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (positions, hidden, vocab): around the 128-position tile and the 64/128-row vocabulary tiles
SHAPES = [(1, 48, 97), (63, 80, 200), (65, 40, 129), (129, 48, 333), (257, 80, 130)]


def inputs(num_pos, dim, vocab, dtype, seed, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_pos, dim, generator=g).to(dtype)
    dense = (hidden.double() + 0.5 * torch.randn(num_pos, dim, generator=g, dtype=torch.float64)).to(dtype)
    weight = (torch.randn(vocab, dim, generator=g) / dim ** 0.25).to(dtype)
    b = torch.randn(vocab, generator=g).to(dtype) if bias else None
    targets = torch.randint(0, vocab, (num_pos,), generator=g)
    logits = hidden.double() @ weight.double().T
    targets[::2] = logits.argmax(-1)[::2]
    for i, t in zip((1, 3, 5, 7, 9), (vocab - 1, 0, 63, 64, 127)):  # first, last and tile-edge columns
        if i < num_pos:
            targets[i] = min(t, vocab - 1)
    to = lambda t: t.to(DEVICE) if t is not None else None
    return to(hidden), to(dense), to(weight), to(targets), to(b)


def check_head(got, logits, targets, tol):
    lse, tgt, is_max = got
    assert lse.dtype == torch.float32 and is_max.dtype == torch.bool and lse.shape == targets.shape
    want_tgt = logits.gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(lse.double(), torch.logsumexp(logits, -1), atol=tol, rtol=0)
    torch.testing.assert_close(tgt.double(), want_tgt, atol=tol, rtol=0)
    others = logits.scatter(1, targets[:, None], float("-inf")).max(-1).values
    clear = (want_tgt - others).abs() > 4 * tol  # a near tie may go either way in fp32
    assert clear.any()
    assert torch.equal(is_max[clear], (want_tgt >= others)[clear])


def kl64(hidden, dense, weight, bias, softcap):
    log_q = torch.log_softmax(full_logits(hidden, weight, bias, softcap), -1)
    log_p = torch.log_softmax(full_logits(dense, weight, bias, softcap), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@pytest.fixture(params=["own tiles", "card tiles"])
def tiles(request, monkeypatch):
    """'card tiles': the settings a card gets for bf16/fp16 (compiled, 528 programs wanted), with the
    exact fp32 dot in the interpreter; on CUDA the test's inputs are bf16 and run as on the card."""
    seen = []
    if request.param == "card tiles" and DEVICE == "cpu":
        real = scoring_head_triton.head_settings

        def card(num_pos, dim, vocab, dtype, weight_dtype, interpreted, programs, two_tiles=False):
            cfg = real(num_pos, dim, vocab, torch.bfloat16, torch.bfloat16, False, programs, two_tiles)
            seen.append((num_pos, two_tiles, cfg))
            return {**cfg, "NATIVE_DOT": False, "launch": {}}

        monkeypatch.setattr(scoring_head_triton, "head_settings", card)
        monkeypatch.setattr(kl_head_triton, "head_settings", card)
    yield request.param
    assert seen or request.param == "own tiles" or DEVICE == "cuda"
    for num_pos, two_tiles, cfg in seen:  # the card's tiles really ran
        assert cfg["BLOCK_P"] == min(128, max(16, triton.next_power_of_2(num_pos)))
        assert (cfg["BLOCK_V"], cfg["BLOCK_D"]) == ((64, 32) if two_tiles else (128, 64))


def dtype_for(tiles):
    return torch.bfloat16 if tiles == "card tiles" and DEVICE == "cuda" else torch.float32


@TRITON
@pytest.mark.parametrize("extras", [(False, None), (True, 4.0)], ids=["plain", "bias-softcap"])
@pytest.mark.parametrize("programs", [1, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"P{p}-D{d}-V{v}" for p, d, v in SHAPES])
def test_scoring_head_odd_shapes(tiles, shape, programs, extras):
    num_pos, dim, vocab = shape
    bias, softcap = extras
    dtype = dtype_for(tiles)
    hidden, _, weight, targets, b = inputs(num_pos, dim, vocab, dtype, seed=num_pos + dim, bias=bias)
    got = scoring_head(hidden, weight, targets, bias=b, softcap=softcap, programs=programs)
    # fp32 accumulation of exactly upcast inputs: rounding only (bf16 products are exact in fp32)
    logits = full_logits(hidden.cpu(), weight.cpu(), b.cpu() if b is not None else None, softcap)
    check_head([t.cpu() for t in got], logits, targets.cpu(), 2e-4 if dtype == torch.float32 else 2e-3)


@TRITON
@pytest.mark.parametrize("indexed", [False, True], ids=["paired", "dense-index"])
@pytest.mark.parametrize("programs", [1, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"P{p}-D{d}-V{v}" for p, d, v in SHAPES])
def test_kl_head_odd_shapes(tiles, shape, programs, indexed):
    num_pos, dim, vocab = shape
    dtype = dtype_for(tiles)
    hidden, dense, weight, targets, b = inputs(num_pos, dim, vocab, dtype, seed=3 * num_pos + dim, bias=True)
    index = None
    if indexed:  # every position names a dense row of a shorter, reversed list
        rows = max(1, num_pos // 3)
        index = (torch.arange(num_pos) * 7 % rows).to(DEVICE)
        dense = dense[:rows].flip(0).contiguous()
    softcap = 5.0
    kl, lse, tgt, is_max = [t.cpu() for t in kl_head(hidden, dense, weight, targets, bias=b, softcap=softcap,
                                                     dense_index=index, programs=programs)]
    h, w, bb = hidden.cpu(), weight.cpu(), b.cpu()
    paired = dense.cpu() if index is None else dense.cpu()[index.cpu()]
    tol = 2e-4 if dtype == torch.float32 else 2e-3
    want = kl64(h, paired, w, bb, softcap)
    assert want.min() > 10 * tol  # a KL near 0 could not tell a clamped value from a right one
    torch.testing.assert_close(kl.double(), want, atol=tol, rtol=1e-3)
    check_head((lse, tgt, is_max), full_logits(h, w, bb, softcap), targets.cpu(), tol)


def test_card_tiles_read_the_weight_once_per_128_positions():
    """4096 positions, vocabulary 128256, hidden 2048 on a card (528 programs wanted on 132 SMs)."""
    for two_tiles in (False, True):
        cfg = head_settings(4096, 2048, 128256, torch.bfloat16, torch.bfloat16, False, 528, two_tiles=two_tiles)
        assert cfg["NATIVE_DOT"] and cfg["BLOCK_P"] == 128
        position_programs = triton.cdiv(4096, cfg["BLOCK_P"])
        assert position_programs == 32  # weight bytes read per call / weight bytes (64 with 64-position tiles)
        assert position_programs * cfg["splits"] >= 528 and cfg["v_split"] % cfg["BLOCK_V"] == 0
        assert (cfg["splits"] - 1) * cfg["v_split"] < 128256 <= cfg["splits"] * cfg["v_split"]
        assert cfg["launch"] == {"num_warps": 16, "num_stages": 3}
    # few positions (decoding) keep small tiles on 8 warps
    small = head_settings(5, 2048, 128256, torch.bfloat16, torch.bfloat16, False, 528)
    assert small["BLOCK_P"] == 16 and small["launch"]["num_warps"] == 8


def test_the_table_sees_a_pipeline_that_was_not_built():
    row = {"local": 0, "stack": 0, "shared": 25600, "needs_tensor_core": True, "tensor_core": ["wgmma.mma_async"],
           "needs_wide": [], "wide_strides": [], "options": {"num_warps": 8, "num_stages": 3}, "buffers": 1}
    assert hopper.problems(row) == ["loads pipelined over 1 shared buffers, num_stages=3 asks 3"]
    assert hopper.problems({**row, "buffers": 3}) == []
    # mma.sync and FMA dots keep one stage in registers
    assert hopper.problems({**row, "tensor_core": ["mma.sync"], "buffers": 2}) == []
    assert hopper.problems({**row, "tensor_core": [], "needs_tensor_core": False, "buffers": 1,
                            "options": {"num_stages": 2}}) == []


def test_head_configs_carry_the_jit_specialisation():
    """The compile table compiles what a launch compiles: unit inner strides as constants, pointers,
    hidden size and row strides divisible by 16 (without them the loads are neither vectorised nor
    pipelined: one shared buffer and 239 registers where three stages were asked)."""
    heads = [c for c in hopper.configurations() if c.kernel in ("scoring_head", "kl_head")]
    assert heads
    for c in heads:
        assert c.constexprs["stride_hd"] == 1 and c.constexprs["stride_wd"] == 1
        assert {"hidden_ptr", "weight_ptr", "D", "stride_hp", "stride_wv"} <= set(c.divisible)
    sig, const, divisible = hopper.jit_specialization({"a": 1, "b": 2048, "c": 7, "p": torch.empty(4)[1:]})
    assert const == {"a": 1} and divisible == ("b",) and sig["p"] == "*fp32"
