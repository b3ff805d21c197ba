"""Every Triton kernel, in every variant its dispatcher picks for real model sizes, compiled for a
Hopper GPU (sm_90) on this CPU-only machine (#20): it compiles, spills no registers, fits the
shared memory of one H100/H200 block, runs bf16/fp16 heads on tensor cores, and widens the row
strides to 64 bits (see blockprune/kernels/hopper.py). One child process compiles them all
(TRITON_INTERPRET, which the other kernel tests need, must be off there); Triton caches what it
compiled, so a second run takes seconds."""

import pytest

import triton  # noqa: F401 - `make test` installs it; a missing Triton must fail, not skip

from blockprune.kernels import hopper

CONFIGS = hopper.configurations()


def spilling_probe() -> hopper.Config:
    """Exact fp32 on the bf16 path's tiles (64 x 128 x 64, three stages): spills on sm_90."""
    cfg = next(c for c in CONFIGS if c.kernel == "scoring_head" and c.label.startswith("fp32")
               and c.constexprs["BLOCK_P"] == 64)
    return hopper.Config(cfg.kernel, "probe " + cfg.label, cfg.signature,
                         {**cfg.constexprs, "BLOCK_V": 128, "BLOCK_D": 64}, {"num_warps": 8, "num_stages": 3},
                         cfg.wide_strides + ("stride_t",), True)


@pytest.fixture(scope="module")
def compiled():
    rows = hopper.compile_all(CONFIGS + [spilling_probe()])
    assert len(rows) == len(CONFIGS) + 1
    return rows


def test_the_sizes_of_real_models_are_covered():
    assert {c.kernel for c in CONFIGS} == {"scoring_head", "kl_head", "gather_norm", "residual_add"}
    labels = " ".join(c.label for c in CONFIGS)
    for needle in ("fp32", "bf16", "fp16", "hidden 576", "hidden 8192", "positions 4096"):
        assert needle in labels
    # the row kernels' whole-row tiles grow with the hidden size, up to 8192
    assert {c.constexprs["BLOCK_D"] for c in CONFIGS if c.kernel == "gather_norm"} == {1024, 2048, 4096, 8192}


@pytest.mark.parametrize("i", range(len(CONFIGS)), ids=[f"{c.kernel}-{c.label}" for c in CONFIGS])
def test_compiles_for_hopper_without_spills(compiled, i):
    row = compiled[i]
    assert row["config"] == CONFIGS[i].label
    assert row["registers"] and row["registers"] <= 255
    assert hopper.problems(row) == [], row


def test_the_check_sees_spills_and_narrow_offsets(compiled):
    found = hopper.problems(compiled[-1])
    assert any(p.startswith("spills") for p in found), found
    assert any("no tensor-core" in p for p in found), found  # fp32 runs on FMA units
    assert not any("32-bit" in p for p in found), found  # stride_t multiplies int64 positions too
    row = {"local": 0, "stack": 0, "shared": hopper.SHARED_LIMIT + 1, "needs_tensor_core": False,
           "tensor_core": [], "needs_wide": ["stride_hp"], "wide_strides": []}
    assert hopper.problems(row) == [f"shared memory {hopper.SHARED_LIMIT + 1} B > {hopper.SHARED_LIMIT} B",
                                    "32-bit offsets: stride_hp multiplied in int32"]
