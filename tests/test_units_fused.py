"""The fused runner and packing on halves (#32). A model by halves scored with the fused runner (one
gather+norm and one residual-add around each half's sublayer: the torch references, and the Triton
kernels in the interpreter) and with packed rows (choices sharing one row) scores what a copy of the
model with the removed halves' modules outputting zeros scores, one plain forward per sequence; on
(fake) CUDA auto mode takes the fused runner for halves."""

import numpy as np
import pytest
import torch

from blockprune import kernels, models
from blockprune.engine import Engine
from blockprune.models import fused, units as units_mod
from blockprune.tasks.request import Request
from conftest import TRITON, CharTokenizer, distinct_norms, tiny_model
from fakecuda import fake_cuda
from reference import half_removed_scores
from test_engine import masks_for, shared_context_requests, spy_rows

SETS = [(), (0,), (1,), (4, 5), (2, 7), (0, 3, 6), (1, 2, 5, 6)]  # 2b: block b's attention, 2b+1: its MLP


def requests():
    """Choices sharing a context (packed rows, where packing is on) and plain sequences."""
    reqs = shared_context_requests(np.random.default_rng(3), samples=3)
    short = [Request((9, 8, 40), 2), Request((9, 8, 41, 42), 2), Request((9, 8, 43), 2)]  # packed within a window of 5
    return reqs + short + [Request(tuple(range(3, 24)), 4)]


def spy_plain_halves(monkeypatch) -> list[bool]:
    """Halves run whole by the plain path (Half.forward: its own norm and residual)."""
    ran = []
    original = units_mod.Half.forward

    def spy(self, *args, **kwargs):
        ran.append(self.attention)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(units_mod.Half, "forward", spy)
    return ran


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the [compiled] Triton variant runs on a GPU (bench/gpu.sh)


def scores_match_half_removed(monkeypatch, arch: str, runner: str) -> None:
    bm = distinct_norms(tiny_model(arch, layers=4))
    reqs = requests()
    want = [half_removed_scores(bm, reqs, s) for s in SETS]  # on the CPU, before the model moves
    bm.model.to(DEVICE)
    um = models.unit_model(bm, "sublayers")
    engine = Engine(um, fused=runner == "fused")
    assert engine.fused == (runner == "fused")
    assert engine.packing_limit() is not None, engine.packing_note  # packing on: packed rows are checked below
    rows, plain = spy_rows(monkeypatch), spy_plain_halves(monkeypatch)
    adds = []
    real_add = kernels.residual_add
    monkeypatch.setattr(kernels, "residual_add", lambda *a: adds.append(1) or real_add(*a))
    got = engine.score(reqs, masks_for(SETS, um.num_blocks))
    assert any(row.packed for call in rows for row in call)  # the engine really ran packed rows
    if runner == "fused":  # every half ran fused: one residual add per half and micro-batch, no plain half
        assert adds and not plain
    else:
        assert plain and not adds
    for c, (s, (lp, gr)) in enumerate(zip(SETS, want)):
        np.testing.assert_allclose(got.logprob[c], lp, rtol=1e-4, atol=1e-4, err_msg=f"{arch} {runner} removed {s}")
        assert (got.greedy[c] == gr).all(), (arch, runner, s)


@pytest.mark.parametrize("runner", ["plain", "fused"])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])  # qwen3: sliding window 5, packed rows capped at it
def test_halves_fused_and_packed_score_as_a_half_removed_copy_does(monkeypatch, arch, runner):
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")
    scores_match_half_removed(monkeypatch, arch, runner)


@TRITON
def test_halves_fused_with_the_triton_kernels(monkeypatch):
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "triton")
    calls = []
    real = kernels.dispatch._triton_gather_norm
    monkeypatch.setattr(kernels.dispatch, "_triton_gather_norm", lambda: calls.append(1) or real())
    scores_match_half_removed(monkeypatch, "llama", "fused")
    assert calls  # the Triton gather+norm kernel ran (interpreted on CPU, compiled on a GPU)


def test_halves_the_fused_runner_cannot_run_take_the_plain_path(monkeypatch):
    monkeypatch.setenv("BLOCKPRUNE_FUSED", "1")
    um = models.unit_model(tiny_model("gemma3", layers=2), "sublayers")  # sandwich norms: not Llama's forward
    assert fused.runner_for(um, None) is None and "not the Llama pre-norm block forward" in um.meta["fused_reason"]
    with pytest.raises(fused.FusedError, match="no fused block runner"):
        fused.runner_for(um, True)


def test_halves_take_the_fused_runner_on_cuda(monkeypatch):
    """Auto mode on a model by halves whose parameters are on (fake) CUDA: the fused runner, its
    check passed, and scoring runs on the device (shapes and devices only: no values here)."""
    from test_fake_cuda import config

    monkeypatch.delenv("BLOCKPRUNE_FUSED", raising=False)
    monkeypatch.setenv("BLOCKPRUNE_KERNELS", "torch")  # the kernels' references: Triton needs real memory
    with fake_cuda() as fc:
        bm = models.wrap(fc.model(config("llama", 3)), CharTokenizer(), "fake-llama")
        with fc.syncs():  # the split's and the runner's one-off checks read values: emulated
            um = models.unit_model(bm, "sublayers")
            engine = Engine(um)
        assert um.device == torch.device("cuda", 0) and engine.fused and um.meta.get("fused_reason") is None
        keep = masks_for([(), (0,), (1, 4)], um.num_blocks)
        with fc.syncs():
            out = engine.score([Request(tuple(range(3, 15)), 4), Request(tuple(range(20, 29)), 2)], keep)
        assert out.logprob.shape == (3, 2)
