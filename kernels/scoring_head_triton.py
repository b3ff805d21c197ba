"""Fused Triton scoring head: per position, log-sum-exp over the vocabulary, the target's logit,
and whether the target is the argmax, computed with an online log-sum-exp over vocabulary chunks.

Same signature and outputs as `scoring_head_reference` (the ground truth). Program (i, s) owns
BLOCK_P positions and the s-th of SPLITS equal slices of the vocabulary, which it walks BLOCK_V rows
at a time, accumulating logits over D in BLOCK_D steps in fp32; only one [BLOCK_P, BLOCK_V] tile of
logits ever exists. Each slice leaves a partial (max, sum of exp, target logit) that a small combine
merges. The split fills the chip: 4096 positions are 32 programs of 128 positions (bf16/fp16), and
an H100/H200 has 132 SMs. Every program reads its vocabulary slice of the weight once for its
BLOCK_P positions, so one call reads the weight cdiv(P, BLOCK_P) times (32 for 4096 positions on
tensor cores; it was 64 with 64-position tiles); the hidden rows, re-read once per BLOCK_V
vocabulary rows, stay in L2.
Offsets are 64-bit (positions x hidden and vocabulary x hidden pass 2^31 at real sizes); the
position and vocabulary counts are not specialised on, so a new batch size never recompiles.
Runs on CUDA, or on CPU under TRITON_INTERPRET=1 (set before this module is imported).
"""

from __future__ import annotations

from contextlib import nullcontext

import os

import torch
import triton
import triton.language as tl


@triton.jit
def tanh(x):  # shared with the KL head
    # libdevice is unavailable in the interpreter: tanh from exp, stable for large |x|.
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit(do_not_specialize=["P", "V", "V_SPLIT"])
def _scoring_head_kernel(
    hidden_ptr, weight_ptr, targets_ptr, bias_ptr,
    max_ptr, sum_ptr, tgt_ptr,
    P, V, D, V_SPLIT,
    stride_hp, stride_hd, stride_wv, stride_wd, stride_t, stride_b,
    softcap,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, NATIVE_DOT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    offs_p = pid.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    targets = tl.load(targets_ptr + offs_p * stride_t, mask=mask_p, other=-1).to(tl.int64)
    v_start = split.to(tl.int64) * V_SPLIT
    v_stop = tl.minimum(v_start + V_SPLIT, V)

    run_max = tl.full((BLOCK_P,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_P,), tl.float32)
    tgt_logit = tl.zeros((BLOCK_P,), tl.float32)

    cols = tl.arange(0, BLOCK_V)  # a tile's columns, int32: compile-time per thread
    for v0 in range(v_start, v_stop, BLOCK_V):
        offs_v = v0 + cols.to(tl.int64)
        mask_v = cols < (v_stop - v0).to(tl.int32)
        acc = tl.zeros((BLOCK_P, BLOCK_V), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < D
            h = tl.load(
                hidden_ptr + offs_p[:, None] * stride_hp + offs_d[None, :] * stride_hd,
                mask=mask_p[:, None] & mask_d[None, :], other=0.0,
            )
            w = tl.load(
                weight_ptr + offs_v[None, :] * stride_wv + offs_d[:, None] * stride_wd,
                mask=mask_v[None, :] & mask_d[:, None], other=0.0,
            )
            if NATIVE_DOT:
                # fp16/bf16 on a GPU: tensor cores; the products are exact in the fp32 accumulator
                acc = tl.dot(h, w, acc)
            else:
                # fp32 inputs, or the interpreter (whose tl.dot is wrong on bf16): exact fp32
                acc = tl.dot(h.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        if HAS_BIAS:
            b = tl.load(bias_ptr + offs_v * stride_b, mask=mask_v, other=0.0).to(tl.float32)
            acc = acc + b[None, :]
        if HAS_SOFTCAP:
            acc = tanh(acc / softcap) * softcap
        logits = tl.where(mask_v[None, :], acc, float("-inf"))

        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        run_max = new_max
        # the target's column in this tile, int32 (-1 when outside): no int64 tile
        local = tl.where((targets >= v0) & (targets < v0 + BLOCK_V), targets - v0, -1).to(tl.int32)
        tgt_logit += tl.sum(tl.where(cols[None, :] == local[:, None], logits, 0.0), axis=1)

    out = split.to(tl.int64) * P + offs_p  # partials are [SPLITS, P]
    tl.store(max_ptr + out, run_max, mask=mask_p)
    tl.store(sum_ptr + out, run_sum, mask=mask_p)
    tl.store(tgt_ptr + out, tgt_logit, mask=mask_p)


def _block(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def vocab_splits(position_programs: int, vocab: int, block_v: int, programs_wanted: int) -> int:
    """How many vocabulary slices so that programs (positions x slices) reach `programs_wanted`,
    never more slices than vocabulary tiles, at least 1."""
    tiles = triton.cdiv(max(vocab, 1), block_v)
    return max(1, min(tiles, triton.cdiv(programs_wanted, max(position_programs, 1))))


def programs_wanted(device: torch.device) -> int:
    """Programs that fill the device: four per SM on a GPU (1 in the interpreter)."""
    if device.type != "cuda":
        return 1
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


POSITION_TILE = 128  # positions per program on tensor cores: the weight is read once per 128 positions


def head_settings(num_pos: int, dim: int, vocab: int, dtype: torch.dtype, weight_dtype: torch.dtype,
                  interpreted: bool, programs: int, two_tiles: bool = False) -> dict:
    """Tile, warp and split settings of the head kernels (`two_tiles`: the KL kernel, which holds a
    dense and a candidate logit tile). tl.dot needs every tile dimension >= 16. Compiled, the tiles
    are the largest that compile for sm_90 without spilling registers, with the loads software-
    pipelined over num_stages shared-memory buffers (kernels/hopper.py compiles every one as the
    JIT specialises a launch: unit inner strides, 16-byte aligned pointers and hidden sizes):
    bf16/fp16 on tensor cores 128 x 128 x 64 (KL 128 x 64 x 32) on 16 warps, three stages (under
    128 positions, 16-64 x 128 x 64 on 8 warps); exact fp32 (FMA, no tensor cores, compute-bound,
    so its weight reads matter less) 64 x 64 x 16, two stages. Interpreted: small tiles keep tests fast."""
    native = not interpreted and dtype in (torch.float16, torch.bfloat16) and dtype == weight_dtype
    block_p = _block(num_pos, 16, POSITION_TILE if native else 64)
    if interpreted:
        block_v, block_d, launch = 64, _block(dim, 16, 64), {}
    elif native:
        block_v, block_d = (64, 32) if two_tiles else (128, 64)
        # a 128-position tile on 16 warps: 4 warpgroups of wgmma, <= 128 registers per thread
        launch = {"num_warps": 16 if block_p >= POSITION_TILE else 8, "num_stages": 3}
    else:
        block_v, block_d, launch = 64, 16, {"num_warps": 8, "num_stages": 2}
    splits = vocab_splits(triton.cdiv(num_pos, block_p), vocab, block_v, programs)
    v_split = triton.cdiv(triton.cdiv(vocab, splits), block_v) * block_v  # slices start on a tile
    splits = triton.cdiv(vocab, v_split)
    return {"NATIVE_DOT": native, "BLOCK_P": block_p, "BLOCK_V": block_v, "BLOCK_D": block_d,
            "splits": splits, "v_split": v_split, "launch": launch}


def combine_splits(run_max: torch.Tensor, run_sum: torch.Tensor, tgt: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[S, P] partials of the vocabulary slices -> (lse, target logit, target is argmax) [P]."""
    top = run_max.max(dim=0).values
    total = (run_sum * torch.exp(run_max - top[None, :])).sum(dim=0)
    target = tgt.sum(dim=0)  # the target lies in exactly one slice; the others add 0
    return top + torch.log(total), target, target >= top


def scoring_head_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    programs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [P, D], weight [V, D], targets [P] -> (lse [P] fp32, target_logit [P] fp32,
    is_argmax [P] bool). See `scoring_head_reference`. `programs`: how many programs to aim for
    (default: fill the device; tests set it to force vocabulary splits in the interpreter)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} do not match")
    num_pos, dim = hidden.shape
    vocab = weight.shape[0]
    if targets.shape != (num_pos,):
        raise ValueError(f"targets {tuple(targets.shape)} should be ({num_pos},)")
    if bias is not None and bias.shape != (vocab,):
        raise ValueError(f"bias {tuple(bias.shape)} should be ({vocab},)")
    device = hidden.device
    if num_pos == 0:
        empty = torch.empty(0, dtype=torch.float32, device=device)
        return empty, empty.clone(), torch.empty(0, dtype=torch.bool, device=device)
    if vocab == 0:
        raise ValueError("empty vocabulary")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    cfg = head_settings(num_pos, dim, vocab, hidden.dtype, weight.dtype, interpreted, programs or programs_wanted(device))
    partial = torch.empty((3, cfg["splits"], num_pos), dtype=torch.float32, device=device)
    grid = (triton.cdiv(num_pos, cfg["BLOCK_P"]), cfg["splits"])
    bias_arg = bias if bias is not None else weight  # never read when HAS_BIAS is False
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        _scoring_head_kernel[grid](
            hidden, weight, targets, bias_arg,
            partial[0], partial[1], partial[2],
            num_pos, vocab, dim, cfg["v_split"],
            hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
            targets.stride(0), bias.stride(0) if bias is not None else 0,
            float(softcap) if softcap is not None else 1.0,
            HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None, NATIVE_DOT=cfg["NATIVE_DOT"],
            BLOCK_P=cfg["BLOCK_P"], BLOCK_V=cfg["BLOCK_V"], BLOCK_D=cfg["BLOCK_D"], **cfg["launch"],
        )
    return combine_splits(partial[0], partial[1], partial[2])
