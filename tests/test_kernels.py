"""The Triton scoring head against the pure-torch reference. Tests marked TRITON run the kernel and
carry the backend in their id: [interpreter] (TRITON_INTERPRET=1, set in conftest before any kernel
module is imported; CPU) or [compiled] (a CUDA machine); the backend this process lacks is skipped
with its reason (see conftest)."""

import math
import os

import numpy as np
import pytest
import torch

import triton  # noqa: E402,F401 - `make test` installs it; a missing Triton must fail, not skip

from blockprune import kernels  # noqa: E402
from blockprune.engine import Engine, Request  # noqa: E402
from blockprune.kernels.scoring_head_triton import scoring_head_triton  # noqa: E402
from conftest import TRITON, tiny_model  # noqa: E402

TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@TRITON
def test_the_backend_in_the_test_id_is_what_runs(triton_backend):
    """[compiled] only where the kernels really compile (a CUDA device, no TRITON_INTERPRET) and
    run on CUDA tensors; [interpreter] only where they are the interpreter's Python."""
    from blockprune.kernels.scoring_head_triton import _scoring_head_kernel

    interpreted = not isinstance(_scoring_head_kernel, triton.runtime.jit.JITFunction)
    assert interpreted == (os.environ.get("TRITON_INTERPRET") == "1")
    if triton_backend == "compiled":
        assert not interpreted and torch.cuda.is_available() and DEVICE == "cuda"
    else:
        assert triton_backend == "interpreter" and interpreted


def make_inputs(num_pos, dim, vocab, dtype, with_bias=False, seed=0):
    """Random inputs; even rows target their own argmax, odd rows a random token."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_pos, dim, generator=g).to(dtype)
    weight = torch.randn(vocab, dim, generator=g).to(dtype)
    bias = torch.randn(vocab, generator=g).to(dtype) if with_bias else None
    targets = torch.randint(0, vocab, (num_pos,), generator=g)
    logits = hidden.double() @ weight.double().T + (bias.double() if with_bias else 0)
    targets[::2] = logits.argmax(-1)[::2]
    to = lambda t: t.to(DEVICE) if t is not None else None  # noqa: E731
    return to(hidden), to(weight), to(targets), to(bias)


def full_logits(hidden, weight, bias, softcap):
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def check(hidden, weight, targets, bias=None, softcap=None):
    tol = TOL[hidden.dtype]
    got = scoring_head_triton(hidden, weight, targets, bias=bias, softcap=softcap)
    ref = kernels.scoring_head_reference(hidden, weight, targets, bias=bias, softcap=softcap, chunk=32)
    assert [t.dtype for t in got] == [torch.float32, torch.float32, torch.bool]
    assert all(t.shape == (hidden.shape[0],) for t in got)
    torch.testing.assert_close(got[0], ref[0], atol=tol, rtol=0)
    torch.testing.assert_close(got[1], ref[1], atol=tol, rtol=0)
    # is_argmax must agree wherever the target is clearly the max or clearly not.
    logits = full_logits(hidden, weight, bias, softcap)
    tgt = logits.gather(1, targets[:, None])[:, 0]
    others = logits.scatter(1, targets[:, None], float("-inf")).max(-1).values
    clear = (tgt - others).abs() > 10 * tol
    assert clear.float().mean() > 0.5
    assert torch.equal(got[2][clear], ref[2][clear])
    assert got[2][clear].any() or hidden.shape[0] == 1 or not clear[::2].any()
    return got


@TRITON
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_pos,dim,vocab", [(1, 24, 97), (5, 40, 130), (17, 24, 130), (17, 40, 97)])
def test_matches_reference(dtype, num_pos, dim, vocab):
    check(*make_inputs(num_pos, dim, vocab, dtype)[:3])


@TRITON
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bias_and_softcap(dtype):
    hidden, weight, targets, bias = make_inputs(17, 40, 130, dtype, with_bias=True, seed=1)
    check(hidden, weight, targets, bias=bias)
    check(hidden, weight, targets, softcap=20.0)
    check(hidden, weight, targets, bias=bias, softcap=30.0)


@TRITON
def test_bfloat16():
    check(*make_inputs(5, 24, 97, torch.bfloat16, seed=2)[:3])


@TRITON
def test_argmax_flags():
    hidden, weight, targets, _ = make_inputs(6, 24, 97, torch.float32, seed=3)
    _, _, is_max = scoring_head_triton(hidden, weight, targets)
    assert is_max[::2].all()  # even rows target their argmax by construction


@TRITON
def test_non_contiguous():
    hidden, weight, targets, _ = make_inputs(5, 40, 97, torch.float32, seed=4)
    check(hidden.T.contiguous().T, weight.T.contiguous().T, targets)


@TRITON
def test_zero_positions():
    weight = torch.randn(97, 24, device=DEVICE)
    lse, tgt, is_max = scoring_head_triton(torch.zeros(0, 24, device=DEVICE), weight,
                                           torch.zeros(0, dtype=torch.long, device=DEVICE))
    assert lse.shape == tgt.shape == is_max.shape == (0,)
    assert (lse.dtype, tgt.dtype, is_max.dtype) == (torch.float32, torch.float32, torch.bool)


@TRITON
def test_dispatch(monkeypatch):
    hidden, weight, targets, _ = make_inputs(5, 24, 97, torch.float32, seed=5)
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return scoring_head_triton(*args, **kwargs)

    monkeypatch.setattr(kernels.dispatch, "_triton_scoring_head", lambda: spy)
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "triton")
    kernels.scoring_head(hidden, weight, targets)
    assert calls == [1]
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "auto")  # CPU tensors: the reference; CUDA: Triton
    kernels.scoring_head(hidden, weight, targets)
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")
    kernels.scoring_head(hidden, weight, targets)
    assert calls == [1] * (2 if hidden.is_cuda else 1)
    monkeypatch.setattr(kernels.dispatch, "_triton_scoring_head", lambda: None)
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="triton"):
        kernels.scoring_head(hidden, weight, targets)


@TRITON
@pytest.mark.parametrize("arch", ["llama", "gemma3"])  # gemma3: final-logit softcap
def test_engine_triton_matches_torch(monkeypatch, arch):
    bm = tiny_model(arch, layers=2)
    bm.model.to(DEVICE)
    reqs = [Request((5, 17, 40, 99, 7, 3), 2), Request((11, 200, 31, 64), 1)]
    keep = np.ones((2, bm.num_blocks), dtype=bool)
    keep[1, 0] = False
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")
    ref = Engine(bm).score(reqs, keep)
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "triton")
    out = Engine(bm).score(reqs, keep)
    np.testing.assert_allclose(out.logprob, ref.logprob, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(out.greedy, ref.greedy)


@TRITON
@pytest.mark.parametrize("vocab", [97, 130, 200, 333])
@pytest.mark.parametrize("programs", [3, 10**6])
def test_vocabulary_splits_match_reference(vocab, programs):
    # the interpreter's own choice is one slice: force several (10**6: one per vocabulary tile)
    from blockprune.kernels.scoring_head_triton import head_settings

    cfg = head_settings(5, 40, vocab, torch.float32, torch.float32, True, programs)
    assert cfg["splits"] > 1 and (cfg["splits"] - 1) * cfg["v_split"] < vocab <= cfg["splits"] * cfg["v_split"]
    hidden, weight, targets, bias = make_inputs(5, 40, vocab, torch.float32, with_bias=True, seed=5)
    got = scoring_head_triton(hidden, weight, targets, bias=bias, programs=programs)
    ref = kernels.scoring_head_reference(hidden, weight, targets, bias=bias, chunk=32)
    torch.testing.assert_close(got[0], ref[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(got[1], ref[1], atol=1e-4, rtol=0)
    assert torch.equal(got[2], ref[2])


def test_combine_splits_hand_checked():
    # two slices of one position: slice 0 holds logits [0, ln 2] (max ln 2, sum e^(l - max) = 1.5),
    # slice 1 holds [ln 4] (max ln 4, sum 1) and the target; lse = ln(1 + 2 + 4) = ln 7
    from blockprune.kernels.scoring_head_triton import combine_splits

    ln = math.log
    lse, tgt, is_max = combine_splits(torch.tensor([[ln(2)], [ln(4)]]), torch.tensor([[1.5], [1.0]]),
                                      torch.tensor([[0.0], [ln(4)]]))
    assert abs(lse.item() - ln(7)) < 1e-6 and abs(tgt.item() - ln(4)) < 1e-6 and is_max.item()


def test_programs_fill_the_device():
    from blockprune.kernels.scoring_head_triton import head_settings

    # 4096 positions at BLOCK_P 128 are 32 programs; 528 wanted (4 per SM on 132 SMs): 17 slices
    cfg = head_settings(4096, 4096, 128256, torch.bfloat16, torch.bfloat16, False, 528)
    assert cfg["NATIVE_DOT"] and cfg["BLOCK_P"] == 128 and cfg["splits"] == 17
    assert 32 * cfg["splits"] >= 528 and cfg["v_split"] % cfg["BLOCK_V"] == 0
    assert head_settings(4096, 4096, 128256, torch.float32, torch.float32, False, 528)["NATIVE_DOT"] is False
