"""The KL scoring head: the reference and the Triton kernel each against an independent float64
KL written here from log_softmax of the full logits (never against a value the code forces: the
result is clamped at 0, so `kl >= 0` and "identical inputs give 0" prove nothing by themselves).
Tests marked TRITON run the kernel, with the backend in their id: [interpreter] (TRITON_INTERPRET=1,
CPU) or [compiled] (a CUDA machine); the backend this process lacks is skipped with its reason."""

import math

import pytest
import torch

import triton  # noqa: F401 - `make test` installs it; a missing Triton must fail, not skip

from blockprune import kernels
from blockprune.kernels.kl_head_triton import kl_head_triton
from conftest import TRITON

TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
# The kernel's KL against the float64 KL of the same (exactly upcast) inputs: fp32 logits and sums,
# whatever the input dtype (measured in the interpreter: 2.5e-6 at worst; head room for a GPU's
# reduction order). Inputs are drawn so that the float64 KL is at least MIN_KL at every position:
# a value clamped at 0 (the code clamps) then fails instead of passing as "close to the truth".
KL_ATOL = {torch.float32: 5e-5, torch.float16: 5e-4, torch.bfloat16: 5e-4}
MIN_KL = 1e-3
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(1, 24, 97), (5, 40, 130), (17, 24, 200), (17, 40, 97)]  # 200: three tiles and a bit


def make_inputs(num_pos, dim, vocab, dtype, with_bias=False, noise=0.3, seed=0):
    """Random inputs: the dense hidden states are the candidate's plus `noise` times a normal, so the
    KL is of order 0.1-10 nats; even rows target the candidate's argmax, odd rows a random token."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_pos, dim, generator=g).to(dtype)
    dense = (hidden.float() + noise * torch.randn(num_pos, dim, generator=g)).to(dtype)
    weight = torch.randn(vocab, dim, generator=g).to(dtype)
    bias = torch.randn(vocab, generator=g).to(dtype) if with_bias else None
    targets = torch.randint(0, vocab, (num_pos,), generator=g)
    logits = hidden.double() @ weight.double().T + (bias.double() if with_bias else 0)
    targets[::2] = logits.argmax(-1)[::2]
    to = lambda t: t.to(DEVICE) if t is not None else None  # noqa: E731
    return to(hidden), to(dense), to(weight), to(targets), to(bias)


def make_indexed_inputs(num_pos, num_dense, dim, vocab, dtype, index=None, with_bias=False, noise=0.3,
                        seed=0):
    """Like make_inputs, but with num_dense dense rows shared by the num_pos candidate positions:
    dense_index (default: arange % num_dense, a repeating pattern) names each position's dense row,
    and candidate p is that row plus `noise` times a normal."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(num_dense, dim, generator=g).to(dtype)
    if index is None:
        index = torch.arange(num_pos) % num_dense
    hidden = (dense.float()[index] + noise * torch.randn(num_pos, dim, generator=g)).to(dtype)
    weight = torch.randn(vocab, dim, generator=g).to(dtype)
    bias = torch.randn(vocab, generator=g).to(dtype) if with_bias else None
    targets = torch.randint(0, vocab, (num_pos,), generator=g)
    logits = hidden.double() @ weight.double().T + (bias.double() if with_bias else 0)
    targets[::2] = logits.argmax(-1)[::2]
    to = lambda t: t.to(DEVICE) if t is not None else None  # noqa: E731
    return to(hidden), to(dense), to(weight), to(targets), to(bias), to(index)


def full_logits(hidden, weight, bias, softcap):
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def expected(hidden, dense, weight, targets, bias=None, softcap=None):
    """float64 from the same (possibly low-precision) inputs upcast: full P x V logits of both."""
    b = full_logits(hidden, weight, bias, softcap)
    log_q = torch.log_softmax(b, dim=-1)
    log_p = torch.log_softmax(full_logits(dense, weight, bias, softcap), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return kl, torch.logsumexp(b, dim=-1), b.gather(1, targets[:, None])[:, 0], b


def check_reference(hidden, dense, weight, targets, bias=None, softcap=None, chunk=32, dense_index=None):
    got = kernels.kl_head_reference(hidden, dense, weight, targets, bias=bias, softcap=softcap,
                                    dense_index=dense_index, chunk=chunk)
    assert [t.dtype for t in got] == [torch.float32, torch.float32, torch.float32, torch.bool]
    assert all(t.shape == (hidden.shape[0],) for t in got)
    paired = dense if dense_index is None else dense[dense_index]
    kl, lse, tgt, logits = expected(hidden, paired, weight, targets, bias, softcap)
    assert kl.min() >= MIN_KL, "inputs whose KL is near 0 cannot tell a clamped value from a right one"
    # fp32 logits from exactly upcast inputs: fp32 rounding only, whatever the input dtype
    torch.testing.assert_close(got[0].double(), kl, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got[1].double(), lse, atol=2e-5, rtol=1e-6)
    torch.testing.assert_close(got[2].double(), tgt, atol=2e-5, rtol=1e-6)
    # the candidate outputs are those of the scoring head, to the bit
    head = kernels.scoring_head_reference(hidden, weight, targets, bias=bias, softcap=softcap, chunk=chunk)
    for a, b in zip(got[1:], head):
        assert torch.equal(a, b)
    others = logits.scatter(1, targets[:, None], float("-inf")).max(-1).values
    clear = (tgt - others).abs() > 1e-4
    assert torch.equal(got[3][clear], (tgt >= others)[clear])
    return got


def check(hidden, dense, weight, targets, bias=None, softcap=None, dense_index=None):
    """The Triton kernel against the float64 KL written here, and against the reference."""
    tol = TOL[hidden.dtype]
    got = kl_head_triton(hidden, dense, weight, targets, bias=bias, softcap=softcap, dense_index=dense_index)
    ref = kernels.kl_head_reference(hidden, dense, weight, targets, bias=bias, softcap=softcap,
                                    dense_index=dense_index, chunk=32)
    assert [t.dtype for t in got] == [torch.float32, torch.float32, torch.float32, torch.bool]
    assert all(t.shape == (hidden.shape[0],) for t in got)
    paired = dense if dense_index is None else dense[dense_index]
    want_kl = expected(hidden, paired, weight, targets, bias, softcap)[0]
    assert want_kl.min() >= MIN_KL, "inputs whose KL is near 0 cannot tell a clamped value from a right one"
    torch.testing.assert_close(got[0].double(), want_kl, atol=KL_ATOL[hidden.dtype], rtol=1e-4)
    torch.testing.assert_close(got[0], ref[0], atol=tol, rtol=tol)
    torch.testing.assert_close(got[1], ref[1], atol=tol, rtol=0)
    torch.testing.assert_close(got[2], ref[2], atol=tol, rtol=0)
    # is_argmax must agree wherever the target is clearly the max or clearly not.
    logits = full_logits(hidden, weight, bias, softcap)
    tgt = logits.gather(1, targets[:, None])[:, 0]
    others = logits.scatter(1, targets[:, None], float("-inf")).max(-1).values
    clear = (tgt - others).abs() > 10 * tol
    assert clear.float().mean() > 0.5
    assert torch.equal(got[3][clear], ref[3][clear])
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_pos,dim,vocab", SHAPES)
def test_reference_matches_float64(dtype, num_pos, dim, vocab):
    inputs = make_inputs(num_pos, dim, vocab, dtype)
    check_reference(*inputs[:4], chunk=13)  # the dense running max grows across many chunks
    check_reference(*inputs[:4], chunk=4096)  # one chunk


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_bias_and_softcap(dtype):
    hidden, dense, weight, targets, bias = make_inputs(17, 40, 130, dtype, with_bias=True, noise=1.0, seed=1)
    check_reference(hidden, dense, weight, targets, bias=bias)
    check_reference(hidden, dense, weight, targets, softcap=5.0, chunk=13)
    check_reference(hidden, dense, weight, targets, bias=bias, softcap=30.0)


@TRITON
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_pos,dim,vocab", SHAPES)
def test_matches_reference(dtype, num_pos, dim, vocab):
    check(*make_inputs(num_pos, dim, vocab, dtype)[:4])


@TRITON
def test_several_programs():
    check(*make_inputs(70, 24, 97, torch.float32, seed=6)[:4])  # BLOCK_P is at most 64


@TRITON
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_bias_and_softcap(dtype):
    hidden, dense, weight, targets, bias = make_inputs(17, 40, 130, dtype, with_bias=True, noise=1.0, seed=1)
    check(hidden, dense, weight, targets, bias=bias)
    check(hidden, dense, weight, targets, softcap=20.0)
    check(hidden, dense, weight, targets, bias=bias, softcap=30.0)


@TRITON
def test_non_contiguous():
    hidden, dense, weight, targets, bias = make_inputs(5, 40, 97, torch.float32, with_bias=True, seed=4)
    wide = torch.zeros(5, 80, device=DEVICE)
    wide[:, 1::2] = dense
    targets2 = torch.stack([targets, torch.zeros_like(targets)], 1).reshape(-1)[::2]
    bias3 = torch.stack([bias, bias + 1, bias - 1], 1).reshape(-1)[::3]
    args = (hidden.T.contiguous().T, wide[:, 1::2], weight.T.contiguous().T, targets2)
    assert not any(t.is_contiguous() for t in (*args, bias3))
    got = check(*args, bias=bias3, softcap=20.0)
    ref = kl_head_triton(hidden, dense, weight, targets, bias=bias, softcap=20.0)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    check_reference(*args, bias=bias3, softcap=20.0)


@TRITON
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_identical_and_nearly_identical_hidden(dtype):
    """Dense vs itself against the float64 KL of the same inputs (0 to the last bit, computed here,
    not assumed), and dense a little off the candidate (float64 KL 3e-5 .. 4e-2 nats): the KL is
    clamped at 0, so only the near case shows a kernel that is wrong near 0 (a negative value
    clamped to 0 would pass the identical case alone)."""
    hidden, near, weight, targets, bias = make_inputs(17, 40, 200, dtype, with_bias=True, noise=0.05, seed=7)
    for kwargs in ({}, {"bias": bias, "softcap": 20.0}):
        same = expected(hidden, hidden.clone(), weight, targets, kwargs.get("bias"), kwargs.get("softcap"))[0]
        close = expected(hidden, near, weight, targets, kwargs.get("bias"), kwargs.get("softcap"))[0]
        assert same.abs().max().item() == 0.0 and 1e-5 < close.min() and close.max() < 0.1
        for op in (kl_head_triton, kernels.kl_head_reference):
            kl = op(hidden, hidden.clone(), weight, targets, **kwargs)[0]
            torch.testing.assert_close(kl.double(), same, atol=1e-5, rtol=0)
            kl = op(hidden, near, weight, targets, **kwargs)[0]
            torch.testing.assert_close(kl.double(), close, atol=2e-5, rtol=1e-3)


@TRITON
def test_hand_checked():
    # V=3, D=2. weight rows pick logits [0, h1, h0]; hidden (ln 2, 0) -> logits [0, 0, ln 2], a
    # softmax of [1/4, 1/4, 1/2]; hidden (0, 0) -> uniform [1/3, 1/3, 1/3].
    #  pos 0: dense [1/4,1/4,1/2] vs candidate uniform:
    #         KL = 2 * 1/4 ln(3/4) + 1/2 ln(3/2) = 1/2 ln(9/8); lse ln 3; target 0 logit 0, a tie: argmax
    #  pos 1: dense uniform vs candidate [1/4,1/4,1/2]:
    #         KL = 2 * 1/3 ln(4/3) + 1/3 ln(2/3) = 1/3 ln(32/27); lse ln 4; target 1 logit 0, not argmax
    #  pos 2: dense = candidate (ln 2, 0): KL 0; lse ln 4; target 2 logit ln 2, argmax
    ln2 = math.log(2.0)
    weight = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]], device=DEVICE)
    hidden = torch.tensor([[0.0, 0.0], [ln2, 0.0], [ln2, 0.0]], device=DEVICE)
    dense = torch.tensor([[ln2, 0.0], [0.0, 0.0], [ln2, 0.0]], device=DEVICE)
    targets = torch.tensor([0, 1, 2], device=DEVICE)
    want_kl = torch.tensor([0.5 * math.log(9 / 8), math.log(32 / 27) / 3, 0.0])
    want_lse = torch.tensor([math.log(3.0), math.log(4.0), math.log(4.0)])
    want_tgt = torch.tensor([0.0, 0.0, ln2])
    outs = [kernels.kl_head_reference(hidden, dense, weight, targets, chunk=c) for c in (1, 2, 3)]
    outs.append(kl_head_triton(hidden, dense, weight, targets))
    for kl, lse, tgt, is_max in outs:
        torch.testing.assert_close(kl.cpu(), want_kl, atol=1e-6, rtol=0)
        torch.testing.assert_close(lse.cpu(), want_lse, atol=1e-6, rtol=0)
        torch.testing.assert_close(tgt.cpu(), want_tgt, atol=1e-6, rtol=0)
        assert is_max.tolist() == [True, False, True]


@TRITON
def test_zero_positions():
    weight = torch.randn(97, 24, device=DEVICE)
    empty = torch.zeros(0, 24, device=DEVICE)
    for op in (kl_head_triton, kernels.kl_head_reference):
        out = op(empty, empty, weight, torch.zeros(0, dtype=torch.long, device=DEVICE))
        assert all(t.shape == (0,) for t in out)
        assert [t.dtype for t in out] == [torch.float32, torch.float32, torch.float32, torch.bool]


@TRITON
def test_bad_arguments():
    hidden, dense, weight, targets, _ = make_inputs(5, 24, 97, torch.float32)
    bad = [
        (hidden, dense[:4], weight, targets, None),
        (hidden, dense[:, :16], weight, targets, None),
        (hidden, dense, weight[:, :16], targets, None),
        (hidden, dense, weight, targets[:4], None),
        (hidden, dense, weight, targets, torch.zeros(96, device=DEVICE)),
        (hidden, dense, weight[:0], targets, None),
    ]
    for op in (kl_head_triton, kernels.kl_head_reference):
        for h, d, w, t, b in bad:
            with pytest.raises(ValueError):
                op(h, d, w, t, bias=b)


INDEXED = [(17, 5, 40, 130), (70, 3, 24, 97)]  # P candidate positions over Q dense rows, D, V


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_pos,num_dense,dim,vocab", INDEXED)
def test_reference_dense_index(dtype, num_pos, num_dense, dim, vocab):
    hidden, dense, weight, targets, bias, index = make_indexed_inputs(
        num_pos, num_dense, dim, vocab, dtype, with_bias=True, seed=2)
    for kwargs in ({}, {"bias": bias, "softcap": 20.0}):
        for chunk in (13, 4096):
            # indexed == gathered: dense logits once per dense row, the same numbers up to the
            # matmul's shape-dependent fp32 rounding ([Q, D] @ W vs [P, D] @ W: an ulp of the
            # logits, ~2e-6 at |logit| ~ 16; exactly equal below with exactly representable logits)
            got = kernels.kl_head_reference(hidden, dense, weight, targets, dense_index=index, chunk=chunk,
                                            **kwargs)
            want = kernels.kl_head_reference(hidden, dense[index], weight, targets, chunk=chunk, **kwargs)
            ulps = 4 * torch.finfo(torch.float32).eps * (1 + want[1].abs().max().item())
            torch.testing.assert_close(got[0], want[0], atol=ulps, rtol=1e-6)
            for a, b in zip(got[1:], want[1:]):  # the candidate's outputs do not involve the dense side
                assert torch.equal(a, b)
            # and the float64 full-logits KL
            check_reference(hidden, dense, weight, targets, dense_index=index, chunk=chunk, **kwargs)


@pytest.mark.parametrize("num_pos,num_dense,dim,vocab", INDEXED)
def test_reference_dense_index_exact(num_pos, num_dense, dim, vocab):
    # Multiples of 1/8 in [-1, 1]: every fp32 logit is exact whatever the matmul's blocking, so on
    # CPU the indexed reference equals the gathered one to the bit (on CUDA within a few ulps: the
    # softmax reductions of differently shaped tensors may be blocked differently).
    g = torch.Generator().manual_seed(9)
    q = lambda *shape: (torch.randint(-8, 9, shape, generator=g) / 8.0).to(DEVICE)  # noqa: E731
    hidden, dense, weight, bias = q(num_pos, dim), q(num_dense, dim), q(vocab, dim), q(vocab)
    targets = torch.randint(0, vocab, (num_pos,), generator=g).to(DEVICE)
    index = (torch.arange(num_pos) % num_dense).to(DEVICE)
    for kwargs in ({}, {"bias": bias}, {"bias": bias, "softcap": 5.0}):
        for chunk in (13, 4096):
            got = kernels.kl_head_reference(hidden, dense, weight, targets, dense_index=index, chunk=chunk,
                                            **kwargs)
            want = kernels.kl_head_reference(hidden, dense[index], weight, targets, chunk=chunk, **kwargs)
            for a, b in zip(got, want):
                if DEVICE == "cpu":
                    assert torch.equal(a, b)
                else:  # cuBLAS and CUDA reductions may block differently for different shapes
                    torch.testing.assert_close(a, b, atol=8 * torch.finfo(torch.float32).eps, rtol=1e-6)


@TRITON
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_pos,num_dense,dim,vocab", INDEXED)
def test_dense_index_matches_reference(dtype, num_pos, num_dense, dim, vocab):
    hidden, dense, weight, targets, bias, index = make_indexed_inputs(
        num_pos, num_dense, dim, vocab, dtype, with_bias=True, seed=3)
    got = check(hidden, dense, weight, targets, dense_index=index)
    # the same as pairing the gathered dense rows
    gathered = kl_head_triton(hidden, dense[index], weight, targets)
    for a, b in zip(got, gathered):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if dtype == torch.float32 and num_pos == 17:
        check(hidden, dense, weight, targets, bias=bias, softcap=20.0, dense_index=index)


@TRITON
def test_dense_index_unordered_strided_int32():
    # a shuffled index (some dense rows unused), int32, non-contiguous; dense_hidden non-contiguous too
    g = torch.Generator().manual_seed(8)
    index = torch.randint(0, 6, (70,), generator=g)
    index[:3] = torch.tensor([5, 0, 5])
    hidden, dense, weight, targets, bias, index = make_indexed_inputs(70, 6, 24, 97, torch.float32,
                                                                      index=index, with_bias=True, seed=8)
    strided = torch.stack([index.int(), torch.zeros_like(index.int())], 1).reshape(-1)[::2]
    wide = torch.zeros(6, 48, device=DEVICE)
    wide[:, ::2] = dense
    assert not strided.is_contiguous() and not wide[:, ::2].is_contiguous()
    got = check(hidden, wide[:, ::2], weight, targets, bias=bias, softcap=20.0, dense_index=strided)
    ref = check(hidden, dense, weight, targets, bias=bias, softcap=20.0, dense_index=index)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    check_reference(hidden, wide[:, ::2], weight, targets, bias=bias, softcap=20.0, dense_index=strided)


@TRITON
def test_dense_index_hand_checked():
    # test_hand_checked's three positions, the dense rows given once each and reused out of order
    ln2 = math.log(2.0)
    weight = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]], device=DEVICE)
    hidden = torch.tensor([[0.0, 0.0], [ln2, 0.0], [ln2, 0.0]], device=DEVICE)
    dense = torch.tensor([[0.0, 0.0], [ln2, 0.0]], device=DEVICE)
    index = torch.tensor([1, 0, 1], device=DEVICE)
    targets = torch.tensor([0, 1, 2], device=DEVICE)
    want_kl = torch.tensor([0.5 * math.log(9 / 8), math.log(32 / 27) / 3, 0.0])
    outs = [kernels.kl_head_reference(hidden, dense, weight, targets, dense_index=index, chunk=c)
            for c in (1, 3)]
    outs.append(kl_head_triton(hidden, dense, weight, targets, dense_index=index))
    for kl, _, _, is_max in outs:
        torch.testing.assert_close(kl.cpu(), want_kl, atol=1e-6, rtol=0)
        assert is_max.tolist() == [True, False, True]


@TRITON
def test_bad_dense_index():
    hidden, dense, weight, targets, _, index = make_indexed_inputs(5, 3, 24, 97, torch.float32)
    bad = [
        (dense, index[:4]),  # too short
        (dense, index[:, None]),  # [P, 1]
        (dense, torch.cat([index, index])),  # too long
        (dense[:, :16], index),  # dense width differs from hidden
        (dense[0], index),  # not 2-D
    ]
    for op in (kl_head_triton, kernels.kl_head_reference):
        for d, i in bad:
            with pytest.raises(ValueError):
                op(hidden, d, weight, targets, dense_index=i)
        with pytest.raises(ValueError):  # [Q, D] dense states need an index
            op(hidden, dense, weight, targets)


@TRITON
def test_dispatch(monkeypatch):
    hidden, dense, weight, targets, _ = make_inputs(5, 24, 97, torch.float32, seed=5)
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return kl_head_triton(*args, **kwargs)

    monkeypatch.setattr(kernels.dispatch, "_triton_kl_head", lambda: spy)
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "triton")
    kernels.kl_head(hidden, dense, weight, targets)
    assert calls == [1]
    # dense_index passes through the dispatch, to the kernel and to the reference
    index = torch.tensor([0, 0, 2, 1, 2], device=DEVICE)
    want = kernels.kl_head_reference(hidden, dense, weight, targets, dense_index=index)
    got = kernels.kl_head(hidden, dense, weight, targets, dense_index=index)
    assert calls == [1, 1]
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")
    got = kernels.kl_head(hidden, dense, weight, targets, dense_index=index)
    assert calls == [1, 1]
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "triton")
    calls.clear()
    kernels.kl_head(hidden, dense, weight, targets)
    assert calls == [1]
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "auto")  # CPU tensors: the reference; CUDA: Triton
    kernels.kl_head(hidden, dense, weight, targets)
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")
    kernels.kl_head(hidden, dense, weight, targets)
    assert calls == [1] * (2 if hidden.is_cuda else 1)
    monkeypatch.setattr(kernels.dispatch, "_triton_kl_head", lambda: None)
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="triton"):
        kernels.kl_head(hidden, dense, weight, targets)


@TRITON
@pytest.mark.parametrize("vocab", [97, 200, 333])
def test_vocabulary_splits_match_reference(vocab):
    hidden, dense, weight, targets, bias = make_inputs(17, 40, vocab, torch.float32, with_bias=True, seed=6)
    for softcap in (None, 5.0):
        got = kl_head_triton(hidden, dense, weight, targets, bias=bias, softcap=softcap, programs=10**6)
        ref = kernels.kl_head_reference(hidden, dense, weight, targets, bias=bias, softcap=softcap, chunk=32)
        for a, b in zip(got[:3], ref[:3]):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        assert torch.equal(got[3], ref[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_pos,dim,vocab", SHAPES)
def test_dense_expectation_matches_float64(dtype, num_pos, dim, vocab):
    # without a softcap, KL = mean . (h_dense - h) - lse_dense + lse with mean = softmax(a) W,
    # checked against the float64 full-logits KL (bias included: it cancels in a - b)
    hidden, dense, weight, targets, bias = make_inputs(num_pos, dim, vocab, dtype, with_bias=True, seed=7)
    for chunk in (13, 4096):
        dense_lse, mean = kernels.dense_expectation(dense, weight, bias, chunk=chunk)
        lse = kernels.scoring_head_reference(hidden, weight, targets, bias=bias, chunk=chunk)[0]
        kl = kernels.kl_from_expectation(hidden, dense, lse, dense_lse, mean)
        want_kl, _, _, _ = expected(hidden, dense, weight, targets, bias)
        want_lse = torch.logsumexp(full_logits(dense, weight, bias, None), dim=-1)
        p = torch.softmax(full_logits(dense, weight, bias, None), dim=-1)
        torch.testing.assert_close(dense_lse.double(), want_lse, atol=2e-5, rtol=1e-6)
        torch.testing.assert_close(mean.double(), p @ weight.double(), atol=2e-5, rtol=1e-5)
        assert want_kl.min() > 4 * 5e-5  # far from the clamp at 0 for the tolerance: the comparison is the check
        torch.testing.assert_close(kl.double(), want_kl, atol=5e-5, rtol=1e-4)


def test_dense_expectation_hand_checked():
    # test_hand_checked's position 0: dense (ln 2, 0) gives [1/4, 1/4, 1/2] over rows
    # [0, 0], [0, 1], [1, 0]: mean = 1/4 [0, 1] + 1/2 [1, 0] = [1/2, 1/4]; candidate (0, 0):
    # KL = mean . (ln 2, 0) - ln 4 + ln 3 = 1/2 ln 2 - ln 4 + ln 3 = 1/2 ln(9/8)
    ln2 = math.log(2.0)
    weight = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    dense = torch.tensor([[ln2, 0.0]])
    lse_a, mean = kernels.dense_expectation(dense, weight, chunk=2)
    torch.testing.assert_close(mean, torch.tensor([[0.5, 0.25]]), atol=1e-6, rtol=0)
    assert abs(lse_a.item() - math.log(4.0)) < 1e-6
    kl = kernels.kl_from_expectation(torch.zeros(1, 2), dense, torch.tensor([math.log(3.0)]), lse_a, mean)
    assert abs(kl.item() - 0.5 * math.log(9 / 8)) < 1e-6
