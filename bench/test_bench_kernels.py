"""Kernel micro-benchmarks (pytest-benchmark): the three ops against torch eager, and against
`torch.compile` of the same reference on CUDA.

    .venv/bin/python -m pytest bench/test_bench_kernels.py --benchmark-disable   # CPU smoke, seconds
    python -m pytest bench/test_bench_kernels.py --benchmark-json out.json      # on a GPU

On CPU the shapes are tiny and Triton runs under TRITON_INTERPRET=1 (set here before any kernel
module is imported), so the numbers say nothing about speed: it only checks that every variant
runs and agrees: `test_scoring_head` compares every variant (the Triton kernel interpreted here)
with an independent float64 log-softmax computed in the test, within a tolerance stated per dtype
(HEAD_TOL). With CUDA the shapes are realistic (bf16, hidden 2048, 512 tokens; vocabulary
128256) and `extra_info` carries GB/s (ops 1-2) and peak memory (op 3).
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from blockprune import kernels  # noqa: E402

if CUDA:
    ROWS, SEQ, DIM, ACTIVE, DTYPE = 128, 512, 2048, 96, torch.bfloat16
    POSITIONS, VOCAB = 4096, 128256
else:
    ROWS, SEQ, DIM, ACTIVE, DTYPE = 6, 8, 40, 4, torch.float32
    POSITIONS, VOCAB = 16, 97
DEVICE = "cuda" if CUDA else "cpu"
IMPLS = ["triton", "eager"] + (["compile"] if CUDA else [])


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _timed(benchmark, fn, **info):
    def run():
        out = fn()
        _sync()
        return out

    result = benchmark(run)
    benchmark.extra_info.update(info)
    return result


def _bandwidth(benchmark, moved: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.median > 0:
        benchmark.extra_info["GB/s"] = round(moved / stats.stats.median / 1e9, 1)


def _impl(name, triton_fn, reference):
    if name == "triton":
        return triton_fn
    if name == "compile":
        return torch.compile(reference, dynamic=False)
    return reference


@pytest.fixture(scope="module")
def rows():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(ROWS, SEQ, DIM, generator=g).to(DEVICE, DTYPE)
    idx = torch.randperm(ROWS, generator=g)[:ACTIVE].sort().values.to(DEVICE)
    weight = torch.randn(DIM, generator=g).to(DEVICE, DTYPE)
    out = torch.randn(ACTIVE, SEQ, DIM, generator=g).to(DEVICE, DTYPE)
    return hidden, idx, weight, out


@pytest.mark.parametrize("impl", IMPLS)
def test_gather_norm(benchmark, rows, impl):
    from blockprune.kernels.gather_norm_triton import gather_norm_triton

    hidden, idx, weight, _ = rows
    fn = _impl(impl, gather_norm_triton, kernels.gather_norm_reference)
    got = _timed(benchmark, lambda: fn(hidden, idx, weight, None, 1e-5), impl=impl, shape=[ROWS, SEQ, DIM, ACTIVE])
    # independent: Llama's RMSNorm of the gathered rows in float64 (the variants round twice: 2 ulps)
    x = hidden[idx].double()
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * weight.double()
    atol, rtol = (1e-5, 1e-5) if DTYPE == torch.float32 else (1e-3, 2**-7)
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)
    elem = hidden.element_size()
    _bandwidth(benchmark, 2 * ACTIVE * SEQ * DIM * elem)  # read the rows, write the compact batch


@pytest.mark.parametrize("impl", IMPLS)
def test_residual_add(benchmark, rows, impl):
    from blockprune.kernels.residual_add_triton import residual_add_triton

    hidden, idx, _, out = rows
    fn = _impl(impl, residual_add_triton, kernels.residual_add_reference)
    state = hidden.clone()
    # in place: each call adds once more; the figure is the time per call
    _timed(benchmark, lambda: fn(state, idx, out), impl=impl, shape=[ROWS, SEQ, DIM, ACTIVE])
    check = hidden.clone()
    fn(check, idx, out)
    want = hidden.clone()  # independent: the exact sum, rounded once; the other rows untouched
    want[idx] = (hidden[idx].double() + out.double()).to(DTYPE)
    torch.testing.assert_close(check, want, rtol=0, atol=0)
    elem = hidden.element_size()
    _bandwidth(benchmark, 3 * ACTIVE * SEQ * DIM * elem)  # read residual + output, write residual


# |got - want| <= atol + rtol |want| against float64 of the same (rounded) inputs: fp32 accumulation
# for the kernel and the references; the materialised bf16 logits round each logit to bf16 first.
HEAD_TOL = {torch.float32: (1e-4, 1e-5), torch.bfloat16: (2e-3, 2e-4)}
MATERIALISED_BF16_TOL = (6e-2, 1e-2)


def _materialised(hidden, weight, targets):
    """What one writes without the fused head: full logits, then cross-entropy and argmax."""
    logits = (hidden @ weight.T).float()
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return nll, logits.argmax(-1) == targets


def _float64_head(hidden, weight, targets):
    """Independent ground truth: log_softmax(hidden @ W^T) in float64, 512 positions at a time ->
    (log-sum-exp, target log-prob, target logit margin over the best other logit)."""
    lse, logprob, margin = [], [], []
    w = weight.double()
    for s in range(0, hidden.shape[0], 512):
        logits = hidden[s : s + 512].double() @ w.T
        t = targets[s : s + 512, None]
        lse.append(torch.logsumexp(logits, -1))
        logprob.append(torch.log_softmax(logits, -1).gather(1, t)[:, 0])
        margin.append(logits.gather(1, t)[:, 0] - logits.scatter(1, t, float("-inf")).max(-1).values)
    return torch.cat(lse), torch.cat(logprob), torch.cat(margin)


def _check_head(impl, got, want, dtype):
    """The variant's outputs against float64: log-probs (and lse) within the tolerance, the argmax
    flags wherever the float64 margin is beyond it."""
    lse64, logprob64, margin64 = want
    atol, rtol = MATERIALISED_BF16_TOL if impl == "materialised" and dtype == torch.bfloat16 else HEAD_TOL[dtype]
    if impl == "materialised":
        logprob, is_max = -got[0], got[1]
    else:
        lse, tgt, is_max = got
        logprob = tgt - lse
        torch.testing.assert_close(lse.double(), lse64, atol=atol, rtol=rtol)
    torch.testing.assert_close(logprob.double(), logprob64, atol=atol, rtol=rtol)
    decided = margin64.abs() > 2 * (atol + rtol * lse64.abs())
    assert torch.equal(is_max[decided].cpu(), (margin64 >= 0)[decided].cpu())


@pytest.mark.parametrize("impl", IMPLS + ["materialised"])
def test_scoring_head(benchmark, impl):
    from blockprune.kernels.scoring_head_triton import scoring_head_triton

    g = torch.Generator().manual_seed(1)
    dim = DIM if CUDA else 24
    hidden = torch.randn(POSITIONS, dim, generator=g).to(DEVICE, DTYPE)
    weight = (torch.randn(VOCAB, dim, generator=g) / dim**0.5).to(DEVICE, DTYPE)
    targets = torch.randint(0, VOCAB, (POSITIONS,), generator=g).to(DEVICE)
    targets[:4] = (hidden[:4].double() @ weight.double().T).argmax(-1)  # some targets are the argmax
    if impl == "materialised":
        fn = _materialised
    else:
        fn = _impl(impl, scoring_head_triton, kernels.scoring_head_reference)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    got = _timed(benchmark, lambda: fn(hidden, weight, targets), impl=impl, shape=[POSITIONS, dim, VOCAB])
    if CUDA:
        benchmark.extra_info["peak_MB"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
        benchmark.extra_info["logits_MB"] = round(POSITIONS * VOCAB * 4 / 2**20, 1)
    _check_head(impl, got, _float64_head(hidden, weight, targets), DTYPE)
