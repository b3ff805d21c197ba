"""Fused Triton KL scoring head: per position, KL(p_dense || p_candidate) plus the candidate's
log-sum-exp, target logit and target-is-argmax, with each LM-head tile read once for both models.

Same signature (less `chunk`) and outputs as `kl_head_reference` (the ground truth). Program (i, s)
owns BLOCK_P positions (and their dense rows, read through `dense_index` when given) and the s-th
vocabulary slice, walked BLOCK_V rows at a time; every [BLOCK_D, BLOCK_V] weight tile feeds two fp32
dots, the dense and the candidate hidden states, so only one tile of logits per model ever exists.
Online log-sum-exps for both, the KL cross term rescaled with the dense running max; the slices'
partials are merged by a small combine (as in the scoring head, whose settings it shares: 64-bit
offsets, counts not specialised on). The engine uses this kernel only with a logit softcap: without
one the dense side is computed once per chunk (`kl_head.dense_expectation`). Runs on CUDA, or on CPU
under TRITON_INTERPRET=1 (set before this module is imported).
"""

from __future__ import annotations

from contextlib import nullcontext

import os

import torch
import triton
import triton.language as tl

from .kl_head import check_kl_args
from .scoring_head_triton import tanh, combine_splits, head_settings, programs_wanted


@triton.jit(do_not_specialize=["P", "V", "V_SPLIT"])
def _kl_head_kernel(
    hidden_ptr, dense_ptr, weight_ptr, targets_ptr, bias_ptr, index_ptr,
    part_ptr,
    P, V, D, V_SPLIT,
    stride_hp, stride_hd, stride_dp, stride_dd, stride_wv, stride_wd, stride_t, stride_b,
    stride_i, softcap,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_INDEX: tl.constexpr, NATIVE_DOT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    offs_p = pid.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    targets = tl.load(targets_ptr + offs_p * stride_t, mask=mask_p, other=-1).to(tl.int64)
    if HAS_INDEX:
        # each position's dense row; masked positions read row 0, never stored
        rows = tl.load(index_ptr + offs_p * stride_i, mask=mask_p, other=0).to(tl.int64)
    else:
        rows = offs_p
    v_start = split.to(tl.int64) * V_SPLIT
    v_stop = tl.minimum(v_start + V_SPLIT, V)

    # candidate (b): online log-sum-exp, target logit
    run_max = tl.full((BLOCK_P,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_P,), tl.float32)
    tgt_logit = tl.zeros((BLOCK_P,), tl.float32)
    # dense (a): online log-sum-exp and sum_v e^(a - max_a) * (a - b), rescaled together
    max_a = tl.full((BLOCK_P,), float("-inf"), tl.float32)
    sum_a = tl.zeros((BLOCK_P,), tl.float32)
    cross = tl.zeros((BLOCK_P,), tl.float32)

    cols = tl.arange(0, BLOCK_V)  # a tile's columns, int32: compile-time per thread
    for v0 in range(v_start, v_stop, BLOCK_V):
        offs_v = v0 + cols.to(tl.int64)
        mask_v = cols < (v_stop - v0).to(tl.int32)
        acc = tl.zeros((BLOCK_P, BLOCK_V), tl.float32)
        acc_a = tl.zeros((BLOCK_P, BLOCK_V), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < D
            mask_pd = mask_p[:, None] & mask_d[None, :]
            h = tl.load(hidden_ptr + offs_p[:, None] * stride_hp + offs_d[None, :] * stride_hd,
                        mask=mask_pd, other=0.0)
            hd = tl.load(dense_ptr + rows[:, None] * stride_dp + offs_d[None, :] * stride_dd,
                         mask=mask_pd, other=0.0)
            w = tl.load(
                weight_ptr + offs_v[None, :] * stride_wv + offs_d[:, None] * stride_wd,
                mask=mask_v[None, :] & mask_d[:, None], other=0.0,
            )
            if NATIVE_DOT:
                # fp16/bf16 on a GPU: tensor cores; the products are exact in the fp32 accumulator
                acc = tl.dot(h, w, acc)
                acc_a = tl.dot(hd, w, acc_a)
            else:
                # fp32 inputs, or the interpreter (whose tl.dot is wrong on bf16): exact fp32
                w32 = w.to(tl.float32)
                acc = tl.dot(h.to(tl.float32), w32, acc, input_precision="ieee")
                acc_a = tl.dot(hd.to(tl.float32), w32, acc_a, input_precision="ieee")
        if HAS_BIAS:
            b = tl.load(bias_ptr + offs_v * stride_b, mask=mask_v, other=0.0).to(tl.float32)
            acc = acc + b[None, :]
            acc_a = acc_a + b[None, :]
        if HAS_SOFTCAP:
            acc = tanh(acc / softcap) * softcap
            acc_a = tanh(acc_a / softcap) * softcap
        logits = tl.where(mask_v[None, :], acc, float("-inf"))
        dense = tl.where(mask_v[None, :], acc_a, float("-inf"))

        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        run_max = new_max
        # the target's column in this tile, int32 (-1 when outside): no int64 tile
        local = tl.where((targets >= v0) & (targets < v0 + BLOCK_V), targets - v0, -1).to(tl.int32)
        tgt_logit += tl.sum(tl.where(cols[None, :] == local[:, None], logits, 0.0), axis=1)

        new_max_a = tl.maximum(max_a, tl.max(dense, axis=1))
        scale = tl.exp(max_a - new_max_a)  # 0 on the first tile (max_a = -inf)
        e = tl.exp(dense - new_max_a[:, None])  # 0 on masked columns
        sum_a = sum_a * scale + tl.sum(e, axis=1)
        # masked columns would give 0 * (-inf - -inf) = nan: use the finite accumulators there
        cross = cross * scale + tl.sum(tl.where(mask_v[None, :], e * (acc_a - acc), 0.0), axis=1)
        max_a = new_max_a

    # partials [6, SPLITS, P]: candidate max, sum, target logit; dense max, sum, cross
    out = split.to(tl.int64) * P + offs_p
    plane = num_splits.to(tl.int64) * P
    tl.store(part_ptr + out, run_max, mask=mask_p)
    tl.store(part_ptr + plane + out, run_sum, mask=mask_p)
    tl.store(part_ptr + 2 * plane + out, tgt_logit, mask=mask_p)
    tl.store(part_ptr + 3 * plane + out, max_a, mask=mask_p)
    tl.store(part_ptr + 4 * plane + out, sum_a, mask=mask_p)
    tl.store(part_ptr + 5 * plane + out, cross, mask=mask_p)


def combine_kl_splits(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """[6, S, P] partials of the vocabulary slices -> (kl, lse, target logit, target is argmax)."""
    lse, tgt, is_max = combine_splits(part[0], part[1], part[2])
    top_a = part[3].max(dim=0).values
    scale = torch.exp(part[3] - top_a[None, :])
    sum_a = (part[4] * scale).sum(dim=0)
    cross = (part[5] * scale).sum(dim=0)
    kl = (cross / sum_a - (top_a + torch.log(sum_a)) + lse).clamp_min(0.0)
    return kl, lse, tgt, is_max


def kl_head_triton(
    hidden: torch.Tensor,
    dense_hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    dense_index: torch.Tensor | None = None,
    programs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [P, D] (candidate), dense_hidden [P, D] (or [Q, D] with dense_index [P] naming each
    position's dense row), weight [V, D], targets [P] -> (kl [P] fp32, lse [P] fp32,
    target_logit [P] fp32, is_argmax [P] bool). See `kl_head_reference`.

    dense_index values are not range-checked (that would synchronise the GPU): each must lie in
    [0, Q), as for indexing dense_hidden."""
    check_kl_args(hidden, dense_hidden, weight, targets, bias, dense_index)
    num_pos, dim = hidden.shape
    vocab = weight.shape[0]
    device = hidden.device
    if num_pos == 0:
        empty = torch.empty(0, dtype=torch.float32, device=device)
        return empty, empty.clone(), empty.clone(), torch.empty(0, dtype=torch.bool, device=device)
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    same = hidden.dtype == dense_hidden.dtype
    cfg = head_settings(num_pos, dim, vocab, hidden.dtype if same else torch.float32, weight.dtype, interpreted,
                        programs or programs_wanted(device), two_tiles=True)
    part = torch.empty((6, cfg["splits"], num_pos), dtype=torch.float32, device=device)
    grid = (triton.cdiv(num_pos, cfg["BLOCK_P"]), cfg["splits"])
    bias_arg = bias if bias is not None else weight  # never read when HAS_BIAS is False
    if dense_index is not None:
        dense_index = dense_index.to(device)
    index_arg = dense_index if dense_index is not None else targets  # never read without HAS_INDEX
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        _kl_head_kernel[grid](
            hidden, dense_hidden, weight, targets, bias_arg, index_arg,
            part,
            num_pos, vocab, dim, cfg["v_split"],
            hidden.stride(0), hidden.stride(1), dense_hidden.stride(0), dense_hidden.stride(1),
            weight.stride(0), weight.stride(1),
            targets.stride(0), bias.stride(0) if bias is not None else 0,
            dense_index.stride(0) if dense_index is not None else 0,
            float(softcap) if softcap is not None else 1.0,
            HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None,
            HAS_INDEX=dense_index is not None, NATIVE_DOT=cfg["NATIVE_DOT"],
            BLOCK_P=cfg["BLOCK_P"], BLOCK_V=cfg["BLOCK_V"], BLOCK_D=cfg["BLOCK_D"], **cfg["launch"],
        )
    return combine_kl_splits(part)
