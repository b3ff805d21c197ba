"""Triton residual add + scatter: ``hidden[idx] += out`` in place for the rows named by `idx`.

Same signature and result as `residual_add_reference` (the ground truth). Each program owns BLOCK_M
(row, token) positions of `out` and the whole hidden dimension; it reads the residual row and the
block output, adds in fp32, rounds once to `hidden`'s dtype and writes the row back. Rows outside
`idx` are never touched; `idx` holds distinct rows, so no atomics are needed. Runs on CUDA, or on
CPU under TRITON_INTERPRET=1 (set before this module is imported).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import triton
import triton.language as tl

from .gather_norm_triton import row_settings
from .residual_add import check_residual_args


@triton.jit(do_not_specialize=["P", "T"])  # batch shapes vary: never recompile for them
def _residual_add_kernel(
    hidden_ptr, idx_ptr, out_ptr,
    P, T, D,
    stride_i, stride_hn, stride_ht, stride_hd, stride_on, stride_ot, stride_od,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < P
    r = offs_m // T
    t = offs_m % T
    dst = tl.load(idx_ptr + r * stride_i, mask=mask_m, other=0).to(tl.int64)  # idx may be a strided view
    offs_d = tl.arange(0, BLOCK_D)
    mask = mask_m[:, None] & (offs_d < D)[None, :]
    h_ptrs = hidden_ptr + (dst * stride_hn + t * stride_ht)[:, None] + offs_d[None, :] * stride_hd
    h = tl.load(h_ptrs, mask=mask, other=0.0).to(tl.float32)
    o = tl.load(
        out_ptr + (r * stride_on + t * stride_ot)[:, None] + offs_d[None, :] * stride_od, mask=mask, other=0.0,
    ).to(tl.float32)
    tl.store(h_ptrs, (h + o).to(hidden_ptr.dtype.element_ty), mask=mask)


def residual_add_triton(hidden: torch.Tensor, idx: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """hidden [N, T, D], idx [n] distinct row ids, out [n, T, D]: hidden[idx] += out in place;
    returns hidden. See `residual_add_reference`."""
    check_residual_args(hidden, idx, out)
    n = idx.shape[0]
    _, seq, dim = hidden.shape
    positions = n * seq
    if positions == 0 or dim == 0:
        return hidden
    idx = idx.to(hidden.device)
    block_m, block_d, num_warps = row_settings(positions, dim, hidden.is_cuda)
    grid = (triton.cdiv(positions, block_m),)
    with torch.cuda.device(hidden.device) if hidden.is_cuda else nullcontext():
        _residual_add_kernel[grid](
            hidden, idx, out,
            positions, seq, dim,
            idx.stride(0),  # any 1-D view (a column, idx[::2]): read through its stride
            hidden.stride(0), hidden.stride(1), hidden.stride(2), out.stride(0), out.stride(1), out.stride(2),
            BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps,
        )
    return hidden
