"""Kernel micro-benchmarks (pytest-benchmark): the three ops against torch eager, and against
`torch.compile` of the same reference on CUDA.

    .venv/bin/python -m pytest bench/test_bench_kernels.py --benchmark-disable   # CPU smoke, seconds
    python -m pytest bench/test_bench_kernels.py --benchmark-json out.json      # on a GPU

On CPU the shapes are tiny and Triton runs under TRITON_INTERPRET=1 (set here before any kernel
module is imported), so the numbers say nothing about speed: it only checks that every variant
runs and agrees. With CUDA the shapes are realistic (bf16, hidden 2048, 512 tokens; vocabulary
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
    want = kernels.gather_norm_reference(hidden, idx, weight, None, 1e-5)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
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
    torch.testing.assert_close(check.float(), (kernels.residual_add_reference(hidden.clone(), idx, out)).float())
    elem = hidden.element_size()
    _bandwidth(benchmark, 3 * ACTIVE * SEQ * DIM * elem)  # read residual + output, write residual


def _materialised(hidden, weight, targets):
    """What one writes without the fused head: full logits, then cross-entropy and argmax."""
    logits = (hidden @ weight.T).float()
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return nll, logits.argmax(-1) == targets


@pytest.mark.parametrize("impl", IMPLS + ["materialised"])
def test_scoring_head(benchmark, impl):
    from blockprune.kernels.scoring_head_triton import scoring_head_triton

    g = torch.Generator().manual_seed(1)
    dim = DIM if CUDA else 24
    hidden = torch.randn(POSITIONS, dim, generator=g).to(DEVICE, DTYPE)
    weight = (torch.randn(VOCAB, dim, generator=g) / dim**0.5).to(DEVICE, DTYPE)
    targets = torch.randint(0, VOCAB, (POSITIONS,), generator=g).to(DEVICE)
    if impl == "materialised":
        fn = _materialised
    else:
        fn = _impl(impl, scoring_head_triton, kernels.scoring_head_reference)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    _timed(benchmark, lambda: fn(hidden, weight, targets), impl=impl, shape=[POSITIONS, dim, VOCAB])
    if CUDA:
        benchmark.extra_info["peak_MB"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
        benchmark.extra_info["logits_MB"] = round(POSITIONS * VOCAB * 4 / 2**20, 1)
