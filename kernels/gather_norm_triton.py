"""Fused Triton gather + pre-norm: one pass reads the rows named by `idx` from the full row set,
normalises each token (RMSNorm or LayerNorm, fp32 statistics) and writes the compact batch.

Same signature and outputs as `gather_norm_reference` (the ground truth). Each program owns
BLOCK_M (row, token) positions of the compact batch -- one on a GPU once D fills a block, a few for
small D -- and the whole hidden dimension (BLOCK_D = next power of two of D, masked). Runs on CUDA,
or on CPU under TRITON_INTERPRET=1 (set before this module is imported).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import triton
import triton.language as tl

from .gather_norm import check_gather_args, gather_norm_dtype


@triton.jit(do_not_specialize=["P", "T"])  # batch shapes vary: never recompile for them
def _gather_norm_kernel(
    hidden_ptr, idx_ptr, weight_ptr, bias_ptr, out_ptr,
    P, T, D,
    stride_i, stride_hn, stride_ht, stride_hd, stride_on, stride_ot, stride_od, stride_w, stride_b,
    eps, offset,
    IS_RMS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_OFFSET: tl.constexpr, CAST_EARLY: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # flattened (row of out, token)
    mask_m = offs_m < P
    r = offs_m // T
    t = offs_m % T
    src = tl.load(idx_ptr + r * stride_i, mask=mask_m, other=0).to(tl.int64)  # idx may be a strided view
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    mask = mask_m[:, None] & mask_d[None, :]

    x = tl.load(
        hidden_ptr + (src * stride_hn + t * stride_ht)[:, None] + offs_d[None, :] * stride_hd,
        mask=mask, other=0.0,
    ).to(tl.float32)
    if IS_RMS:
        var = tl.sum(x * x, axis=1) / D
        y = x * tl.rsqrt(var + eps)[:, None]
    else:
        mean = tl.sum(x, axis=1) / D
        xc = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / D
        y = xc * tl.rsqrt(var + eps)[:, None]

    w = tl.load(weight_ptr + offs_d * stride_w, mask=mask_d, other=0.0)
    if CAST_EARLY:
        # Llama: normalised x back in the input dtype, times (w + offset) in the weight's dtype.
        y = y.to(hidden_ptr.dtype.element_ty).to(tl.float32)
        if HAS_OFFSET:
            w = (w.to(tl.float32) + offset).to(weight_ptr.dtype.element_ty)
        y = y * w.to(tl.float32)[None, :]
    else:
        wf = w.to(tl.float32)
        if HAS_OFFSET:
            wf = wf + offset
        y = y * wf[None, :]
    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_d * stride_b, mask=mask_d, other=0.0).to(tl.float32)
        y = y + b[None, :]
    tl.store(
        out_ptr + (r * stride_on + t * stride_ot)[:, None] + offs_d[None, :] * stride_od,
        y.to(out_ptr.dtype.element_ty), mask=mask,
    )


def row_settings(positions: int, dim: int, on_gpu: bool) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, num_warps) for a row-wise kernel over `positions` rows of `dim`.

    On a GPU: about 2k elements per program (one row once D >= 2048), 4/8/16 warps as the tile
    grows. In the interpreter every program costs Python overhead, so programs take many rows.
    """
    block_d = triton.next_power_of_2(max(dim, 1))
    want = 2048 if on_gpu else 16384
    block_m = max(1, min(triton.next_power_of_2(max(positions, 1)), want // block_d, 64 if on_gpu else 256))
    elems = block_m * block_d
    num_warps = 4 if elems < 2048 else 8 if elems < 8192 else 16
    return block_m, block_d, num_warps


def gather_norm_triton(
    hidden: torch.Tensor,
    idx: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    kind: str = "rms",
    offset: float = 0.0,
    cast_early: bool = True,
) -> torch.Tensor:
    """hidden [N, T, D], idx [n] -> norm(hidden[idx]) [n, T, D]. See `gather_norm_reference`."""
    check_gather_args(hidden, idx, weight, bias, kind)
    n = idx.shape[0]
    _, seq, dim = hidden.shape
    out = torch.empty((n, seq, dim), dtype=gather_norm_dtype(hidden, weight, kind, cast_early), device=hidden.device)
    positions = n * seq
    if positions == 0 or dim == 0:
        return out
    idx = idx.to(hidden.device)
    block_m, block_d, num_warps = row_settings(positions, dim, hidden.is_cuda)
    grid = (triton.cdiv(positions, block_m),)
    bias_arg = bias if bias is not None else weight  # never read when HAS_BIAS is False
    with torch.cuda.device(hidden.device) if hidden.is_cuda else nullcontext():
        _gather_norm_kernel[grid](
            hidden, idx, weight, bias_arg, out,
            positions, seq, dim,
            idx.stride(0),  # any 1-D view (a column, idx[::2]): read through its stride
            hidden.stride(0), hidden.stride(1), hidden.stride(2), out.stride(0), out.stride(1), out.stride(2),
            weight.stride(0), bias.stride(0) if bias is not None else 0,
            float(eps), float(offset),
            IS_RMS=kind == "rms", HAS_BIAS=bias is not None, HAS_OFFSET=bool(offset),
            CAST_EARLY=kind == "rms" and cast_early,
            BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps,
        )
    return out
