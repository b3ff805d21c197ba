"""Gather+pre-norm and residual-add kernels against their references, and the fused block runner
against the plain path through the engine. Tests marked TRITON run the kernels, with the backend in
their id: [interpreter] (TRITON_INTERPRET=1, set in conftest before any kernel module is imported;
CPU) or [compiled] (a CUDA machine); the backend this process lacks is skipped with its reason."""

import numpy as np
import pytest
import torch

import triton  # noqa: F401 - `make test` installs it; a missing Triton must fail, not skip

from blockprune.models import fused
from blockprune import kernels, models
from blockprune.engine import Engine, Request
from blockprune.kernels.gather_norm_triton import gather_norm_triton
from blockprune.kernels.residual_add_triton import residual_add_triton
from conftest import TRITON, CharTokenizer, distinct_norms, tiny_model
from fakecuda import fake_cuda

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter rounds to bf16 by truncation (compiled kernels round to nearest): 2 ulps.
TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
VARIANTS = {
    "llama": {"kind": "rms", "offset": 0.0, "cast_early": True},
    "gemma": {"kind": "rms", "offset": 1.0, "cast_early": False},
    "offset-early": {"kind": "rms", "offset": 1.0, "cast_early": True},
    "layer": {"kind": "layer"},
}
IDX = {"none": [], "one": [3], "some": [5, 0, 3], "all": [2, 0, 4, 1, 5, 3]}


def rows(n=6, seq=5, dim=24, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, seq, dim, generator=g) * 2 + 0.5).to(DEVICE, dtype)


def close(got, want, dtype):
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = TOL[dtype]
    scale = max(1.0, want.float().abs().amax().item()) if want.numel() else 1.0
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * scale)


@TRITON
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("dim", [24, 40])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("which", list(IDX))
def test_gather_norm_matches_reference(dtype, dim, variant, which):
    hidden = rows(dim=dim, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(dim, generator=g).to(DEVICE, dtype)
    bias = torch.randn(dim, generator=g).to(DEVICE, dtype) if variant == "layer" else None
    idx = torch.tensor(IDX[which], dtype=torch.long, device=DEVICE)
    before = hidden.clone()
    got = gather_norm_triton(hidden, idx, weight, bias, 1e-5, **VARIANTS[variant])
    want = kernels.gather_norm_reference(hidden, idx, weight, bias, 1e-5, **VARIANTS[variant])
    assert got.shape == (len(IDX[which]), 5, dim)
    close(got, want, dtype)
    assert torch.equal(hidden, before)


@TRITON
def test_gather_norm_bfloat16_and_promotion():
    hidden = rows(dim=40, dtype=torch.bfloat16)
    idx = torch.tensor([4, 1], device=DEVICE)
    for weight in (torch.randn(40).to(DEVICE, torch.bfloat16), torch.randn(40).to(DEVICE)):  # fp32 weight promotes
        for variant in VARIANTS.values():
            if variant["kind"] == "layer" and weight.dtype != hidden.dtype:
                continue
            close(gather_norm_triton(hidden, idx, weight, None, 1e-6, **variant),
                  kernels.gather_norm_reference(hidden, idx, weight, None, 1e-6, **variant), torch.bfloat16)


@TRITON
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gather_norm_is_the_hf_norm(dtype):
    """The reference (and the kernel) reproduce HF's own norm modules on gathered rows."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    hidden = rows(dim=40, dtype=dtype)
    idx = torch.tensor([5, 2, 3], device=DEVICE)
    llama, gemma, layer = LlamaRMSNorm(40, eps=1e-5), Gemma3RMSNorm(40, eps=1e-6), torch.nn.LayerNorm(40, eps=1e-5)
    with torch.no_grad():
        for m in (llama, gemma, layer):
            m.weight.normal_()
        layer.bias.normal_()
    for module in (llama, gemma, layer):
        module.to(DEVICE, dtype)
        spec = fused.norm_spec(module, dtype)
        assert spec is not None, type(module).__name__
        want = module(hidden[idx])
        ref = kernels.gather_norm_reference(hidden, idx, **spec)
        assert ref.dtype == want.dtype
        if module is llama:
            assert torch.equal(ref, want)  # same ops, same order
        close(ref, want, dtype)
        close(gather_norm_triton(hidden, idx, **spec), want, dtype)
    assert fused.norm_spec(gemma, dtype)["offset"] == 1.0 and fused.norm_spec(llama, dtype)["cast_early"]


@TRITON
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("dim", [24, 40])
@pytest.mark.parametrize("which", list(IDX))
def test_residual_add_matches_reference(dtype, dim, which):
    hidden = rows(dim=dim, dtype=dtype)
    idx = torch.tensor(IDX[which], dtype=torch.long, device=DEVICE)
    out = rows(n=len(IDX[which]), dim=dim, dtype=dtype, seed=2)
    got, want = hidden.clone(), hidden.clone()
    assert residual_add_triton(got, idx, out) is got
    kernels.residual_add_reference(want, idx, out)
    assert torch.equal(got, want)  # one fp32 add rounded once, both ways
    rest = torch.tensor([r for r in range(6) if r not in IDX[which]], dtype=torch.long, device=DEVICE)
    assert torch.equal(got[rest], hidden[rest])
    if len(idx):
        assert torch.equal(got[idx], hidden[idx] + out)  # what an HF block computes


@TRITON
def test_residual_add_mixed_dtypes_and_strides():
    hidden = rows(dim=40, dtype=torch.float16)
    idx = torch.tensor([1, 4, 0], device=DEVICE)
    out32 = rows(n=3, dim=40, seed=3)
    got, want = hidden.clone(), hidden.clone()
    residual_add_triton(got, idx, out32)
    kernels.residual_add_reference(want, idx, out32)
    assert torch.equal(got, want) and got.dtype == torch.float16
    # non-contiguous hidden and out: a [T, N, D] buffer seen as [N, T, D]
    base = rows(n=5, seq=6, dim=24).transpose(0, 1)
    out = rows(n=5, seq=3, dim=24, seed=4).transpose(0, 1)
    got, want = base.clone(), base.contiguous()
    assert not got.is_contiguous() and not out.is_contiguous()
    residual_add_triton(got, idx, out)
    kernels.residual_add_reference(want, idx, out)
    assert torch.equal(got, want)
    close(gather_norm_triton(got, idx, torch.ones(24, device=DEVICE)),
          kernels.gather_norm_reference(want, idx, torch.ones(24, device=DEVICE)), torch.float32)


def strided(rows: list[int], layout: str, decoys: list[int]) -> torch.Tensor:
    """`rows` as a non-contiguous index: every other entry of a longer tensor, or a column of a
    2-D one (int32), the gaps holding other valid rows (a kernel that ignores the stride reads them)."""
    pairs = torch.tensor([[d, r] for r, d in zip(rows, decoys)], dtype=torch.long, device=DEVICE)
    idx = pairs.reshape(-1)[1::2] if layout == "every-other" else pairs.int()[:, 1]
    assert not idx.is_contiguous() and idx.stride(0) == 2 and idx.tolist() == rows
    return idx


# odd shapes: a 1-wide and a 7-wide hidden dimension, 33 and 130 (past a power of two), one token
STRIDED_SHAPES = [(7, 3, 33), (5, 1, 1), (9, 2, 130), (6, 5, 7)]


@TRITON
@pytest.mark.parametrize("layout", ["every-other", "column"])
@pytest.mark.parametrize("n,seq,dim", STRIDED_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_row_kernels_read_a_strided_index(layout, n, seq, dim, dtype):
    rows_ = [n - 1, 0, n // 2]
    idx = strided(rows_, layout, decoys=[1, n - 2, 2])
    plain = torch.tensor(rows_, device=DEVICE)
    hidden = rows(n=n, seq=seq, dim=dim, dtype=dtype, seed=5)
    g = torch.Generator().manual_seed(6)
    weight = torch.randn(dim, generator=g).to(DEVICE, dtype)
    bias = torch.randn(dim, generator=g).to(DEVICE, dtype)
    for variant, b in (("llama", None), ("layer", bias)):
        got = gather_norm_triton(hidden, idx, weight, b, 1e-5, **VARIANTS[variant])
        close(got, kernels.gather_norm_reference(hidden, plain, weight, b, 1e-5, **VARIANTS[variant]), dtype)
    out = rows(n=len(rows_), seq=seq, dim=dim, dtype=dtype, seed=7)
    got = hidden.clone()
    residual_add_triton(got, idx, out)
    want = hidden.clone()
    want[plain] = (hidden[plain].float() + out.float()).to(dtype)  # written here: index, add, round once
    assert torch.equal(got, want)


@TRITON
def test_bad_shapes_are_refused():
    hidden = rows()
    with pytest.raises(ValueError, match="weight"):
        gather_norm_triton(hidden, torch.tensor([0], device=DEVICE), torch.ones(23, device=DEVICE))
    with pytest.raises(ValueError, match="kind"):
        kernels.gather_norm(hidden, torch.tensor([0], device=DEVICE), torch.ones(24, device=DEVICE), kind="batch")
    with pytest.raises(ValueError, match="out"):
        residual_add_triton(hidden, torch.tensor([0, 1], device=DEVICE), rows(n=1))


@TRITON
def test_dispatch(monkeypatch):
    hidden = rows()
    idx = torch.tensor([1, 2], device=DEVICE)
    weight = torch.ones(24, device=DEVICE)
    calls = []

    def spy(kernel):
        def run(*args, **kwargs):
            calls.append(kernel.__name__)
            return kernel(*args, **kwargs)
        return run

    monkeypatch.setattr(kernels.dispatch, "_triton_gather_norm", lambda: spy(gather_norm_triton))
    monkeypatch.setattr(kernels.dispatch, "_triton_residual_add", lambda: spy(residual_add_triton))
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "triton")
    kernels.residual_add(hidden, idx, kernels.gather_norm(hidden, idx, weight))
    assert calls == ["gather_norm_triton", "residual_add_triton"]
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")
    kernels.residual_add(hidden, idx, kernels.gather_norm(hidden, idx, weight))
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "auto")  # Triton for CUDA tensors only
    kernels.residual_add(hidden, idx, kernels.gather_norm(hidden, idx, weight))
    assert len(calls) == (4 if hidden.is_cuda else 2)
    monkeypatch.setattr(kernels.dispatch, "_triton_residual_add", lambda: None)
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="triton"):
        kernels.residual_add(hidden, idx, hidden[idx])


# ---- the fused block runner through the engine -----------------------------------------------
REQUESTS = [Request((5, 17, 40, 99, 7, 3), 2), Request((11, 200, 31, 64), 1), Request((11, 200, 31, 64, 9, 12), 4),
            Request((8, 9, 10, 11, 12, 13, 14, 15), 1)]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_engine_fused_matches_plain(monkeypatch, arch):
    fused_matches_plain(monkeypatch, arch, "torch")


@TRITON
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_engine_fused_matches_plain_with_triton(monkeypatch, arch):
    fused_matches_plain(monkeypatch, arch, "triton")


def fused_matches_plain(monkeypatch, arch, kern):
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", kern)
    bm = distinct_norms(tiny_model(arch, layers=4))
    bm.model.to(DEVICE)
    keep = np.random.default_rng(0).random((10, bm.num_blocks)) > 0.4
    keep[0] = True  # the dense model
    plain_engine, fused_engine = Engine(bm, fused=False), Engine(bm, fused=True)
    assert fused_engine.fused and not plain_engine.fused
    calls = []
    real = kernels.residual_add
    monkeypatch.setattr(kernels, "residual_add", lambda *a: calls.append(1) or real(*a))
    out = fused_engine.score(REQUESTS, keep)
    assert calls  # the fused path ran
    ref = plain_engine.score(REQUESTS, keep)
    np.testing.assert_allclose(out.logprob, ref.logprob, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(out.greedy, ref.greedy)
    assert list(np.argsort(-out.logprob.sum(1), kind="stable")) == list(np.argsort(-ref.logprob.sum(1), kind="stable"))


def test_half_precision_model_verifies(monkeypatch):
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")
    bm = tiny_model("llama", layers=2)
    bm.model.to(torch.bfloat16)
    assert isinstance(fused.runner_for(bm, True), fused.FusedRunner)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_unsupported_models_take_the_plain_path(monkeypatch, arch):
    bm = tiny_model(arch, layers=2)
    monkeypatch.setenv("BLOCKPRUNE_FUSED", "1")
    assert fused.runner_for(bm, None) is None
    assert fused.runner_for(bm, False) is None
    with pytest.raises(fused.FusedError, match="no fused block runner"):
        fused.runner_for(bm, True)
    assert not Engine(bm).fused


def test_auto_mode_is_fused_on_cuda_and_plain_on_cpu(monkeypatch):
    """Auto mode (BLOCKPRUNE_FUSED unset) on a model whose parameters are on CUDA (fake CUDA
    tensors on this CPU build: shapes and devices, no values) takes the fused runner, the same
    model on the CPU the plain path; BLOCKPRUNE_FUSED overrides either way."""
    from test_fake_cuda import config

    monkeypatch.delenv("BLOCKPRUNE_FUSED", raising=False)
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")  # the kernels' references: Triton needs real memory
    cpu = tiny_model("llama", layers=2)
    assert cpu.device.type == "cpu" and fused.runner_for(cpu, None) is None and not Engine(cpu).fused
    monkeypatch.setenv("BLOCKPRUNE_FUSED", "1")
    assert isinstance(fused.runner_for(cpu, None), fused.FusedRunner)
    with fake_cuda() as fc:
        monkeypatch.delenv("BLOCKPRUNE_FUSED")
        bm = models.wrap(fc.model(config("llama", 2)), CharTokenizer(), "fake-llama")
        assert bm.device == torch.device("cuda", 0)
        with fc.syncs():  # the one-off check reads values: emulated (the CPU tests check them)
            runner = fused.runner_for(bm, None)
            engine = Engine(bm)
        assert isinstance(runner, fused.FusedRunner) and engine.fused
        assert bm.meta.get("fused_reason") is None
        monkeypatch.setenv("BLOCKPRUNE_FUSED", "0")
        assert fused.runner_for(bm, None) is None


def test_a_wrong_kernel_is_caught_by_the_check(monkeypatch):
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")
    monkeypatch.setenv("BLOCKPRUNE_FUSED", "1")
    bm = tiny_model("llama", layers=2)

    def off_by_a_bit(hidden, idx, out):
        return kernels.residual_add_reference(hidden, idx, out * 1.01)

    monkeypatch.setattr(kernels, "residual_add", off_by_a_bit)
    assert fused.runner_for(bm, None) is None
    bm.meta.clear()
    with pytest.raises(fused.FusedError, match="differ"):
        fused.runner_for(bm, True)
